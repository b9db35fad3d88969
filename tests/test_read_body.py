"""`http.asgi.read_body` on a server queue like hypercorn's (a trio memory channel whose
`receive` is the ASGI `receive`), through the request log's wrapper
(`observe.middleware.Observed`) as in a serving process.

Real parts: trio's memory channel (what hypercorn hands the app), the request log's
ASGI wrapper and its record, `read_body` itself. The observer is a small in-test
object (this is a unit test of how the two modules meet); the end-to-end body
deadline and trickling clients are in tests/test_slow_clients.py.

Proven:
- a body already queued whole (one message, or several as hypercorn queues them) is
  read with no schedule point, and counted in the request's record as before;
- a body in several parts, part queued and part arriving later, is read whole;
- a client that hung up before its body was read is `ClientGone`; a queued body over
  the limit is a 413;
- a body that does not come in time is a 408 (the deadline still holds when the
  fast path finds nothing queued).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from aogstream import errors
from aogstream.http.asgi import ClientGone, read_body
from aogstream.observe.middleware import Observed

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
         "server": ("127.0.0.1", 1)}


class _Observer:
    metrics = None

    def __init__(self) -> None:
        self.records: list[Any] = []

    def next_id(self) -> str:
        return "1-1"

    def finish(self, rec: Any, gaps: Any) -> None:
        self.records.append(rec)


async def _read(messages: list[dict[str, Any]], later: list[dict[str, Any]] | None = None,
                *, max_body: int = 1000, timeout: float | None = 5.0,
                no_checkpoint: bool = False) -> tuple[bytes, Any]:
    """Queue `messages`, then read the body through the wrapper (`later` arrive once
    the reader waits); the body and the request's record."""
    send, receive = trio.open_memory_channel[dict[str, Any]](10)
    for m in messages:
        send.send_nowait(m)
    got: list[bytes] = []
    failed: list[BaseException] = []

    async def app(scope: Any, recv: Any, snd: Any) -> None:
        try:
            if no_checkpoint:
                with trio.testing.assert_no_checkpoints():
                    got.append(await read_body(scope, recv, max_body, timeout))
            else:
                got.append(await read_body(scope, recv, max_body, timeout))
        except (ClientGone, errors.GatewayError) as exc:
            failed.append(exc)  # raised below, not wrapped in the nursery's group

    async def ignore(msg: Any) -> None:
        pass

    observer = _Observer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Observed(app, observer), SCOPE, receive.receive, ignore)
        if later:
            await trio.testing.wait_all_tasks_blocked()
            for m in later:
                await send.send(m)
    if failed:
        raise failed[0]
    return got[0], observer.records[0]


def test_a_queued_body_is_read_without_a_schedule_point_and_counted() -> None:
    async def main() -> None:
        body, rec = await _read([{"type": "http.request", "body": b'{"a":1}'}],
                                no_checkpoint=True)
        assert body == b'{"a":1}' and rec.bytes_in == 7
        # as hypercorn queues it: the body, then an empty last message
        body, rec = await _read([{"type": "http.request", "body": b'{"a"', "more_body": True},
                                 {"type": "http.request", "body": b":2}", "more_body": True},
                                 {"type": "http.request", "body": b""}], no_checkpoint=True)
        assert body == b'{"a":2}' and rec.bytes_in == 7

    trio.run(main)


def test_a_body_in_parts_some_arriving_later_is_read_whole() -> None:
    async def main() -> None:
        body, rec = await _read(
            [{"type": "http.request", "body": b"ab", "more_body": True}],
            [{"type": "http.request", "body": b"cd", "more_body": True},
             {"type": "http.request", "body": b"e"}])
        assert body == b"abcde" and rec.bytes_in == 5
        body, _ = await _read([], [{"type": "http.request", "body": b"late"}])
        assert body == b"late"

    trio.run(main)


def test_a_gone_client_and_an_oversized_body_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(ClientGone):
            await _read([{"type": "http.disconnect"}])
        with pytest.raises(errors.GatewayError) as caught:
            await _read([{"type": "http.request", "body": b"x" * 20}], max_body=10)
        assert caught.value.bcode is errors.BODY_TOO_LARGE

    trio.run(main)


def test_a_body_that_does_not_come_in_time_is_a_timeout() -> None:
    async def main() -> None:
        with pytest.raises(errors.GatewayError) as caught:
            await _read([{"type": "http.request", "body": b"ab", "more_body": True}],
                        timeout=0.05)
        assert caught.value.bcode is errors.BODY_TIMEOUT

    trio.run(main)
