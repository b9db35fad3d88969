"""A plugin's server stream as InvokeServiceStream messages: SSE framing and batching.

Plugin code yields dicts, JSON bytes or `StreamChunk`s; AOG hosts expect each event
framed as SSE (`data: <json>\\n\\n`) in a message of its own, and an aogstream host may
offer batching (see `aogstream.rpc.wire`). The relay packs only what is already
waiting, never waits to fill a batch, and delivers a cancellation to plugin code where
it is suspended. That needs the hand-stepped `__anext__()` below, which is the reason
this is a module of its own: it is the one subtle piece of the SDK's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.wire import MAX_BATCH_BYTES
from aogstream.sdk.error_codes import error_code
from aogstream.sdk.provider import StreamChunk

log = logging.getLogger("aogstream.sdk")

SSE_METADATA = {"content-type": "text/event-stream"}

# One encoder for every chunk: json.dumps with arguments builds a new encoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _sse(payload: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(payload, dict):
        body = _encode_json(payload).encode()
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    return b"data: " + body + b"\n\n"


_Item = dict[str, Any] | bytes | str | StreamChunk
_NOT_READY = object()


class _Pending:
    """An `__anext__()` of the plugin's iterator that was started and suspended.

    To pack the events that are already waiting into one message without waiting for
    more, the relay steps the iterator's next `__anext__()` by hand: if it finishes
    without suspending, its item was ready. If it suspends (plugin code awaits its
    engine), the relay keeps it here, sends what it has, and later awaits this object,
    which hands the suspended coroutine's pending future to the event loop and carries
    on driving it exactly as the loop's task would have (plain generator protocol:
    send, throw, close).
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Any, yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Any:
        coro, out = self._coro, self._yielded
        while True:
            try:
                value = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded, e.g. CancelledError
                try:
                    out = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                out = coro.send(value)
            except StopIteration as stop:
                return stop.value

    def throw(self, exc: BaseException) -> _Pending:
        """An awaitable that delivers `exc` to the suspended plugin code first."""
        return _Thrown(self._coro, exc)


class _Thrown(_Pending):
    __slots__ = ("_exc",)

    def __init__(self, coro: Any, exc: BaseException) -> None:
        super().__init__(coro, None)
        self._exc = exc

    def __await__(self) -> Any:
        try:
            out = self._coro.throw(self._exc)
        except StopIteration as stop:
            return stop.value
        self._yielded = out
        return (yield from super().__await__())


def _poll_next(it: AsyncIterator[_Item]) -> tuple[Any, _Pending | None]:
    """Start the iterator's next step: `(item, None)` if it was ready at once,
    `(_NOT_READY, pending)` if plugin code suspended. Raises StopAsyncIteration at
    the end and whatever plugin code raised."""
    coro = it.__anext__().__await__()  # a generator-like object for any awaitable
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    return _NOT_READY, _Pending(coro, yielded)


def _event_msg(data: bytes) -> pb.InvokeServiceStreamResponse:
    return pb.InvokeServiceStreamResponse(code=0, chunk_data=data, metadata=SSE_METADATA)


async def relay_stream(
    it: AsyncIterator[_Item],
    context: grpc.aio.ServicerContext[pb.InvokeServiceRequest, pb.InvokeServiceStreamResponse],
    service: str, limit: int,
) -> None:
    """Send the plugin's items as InvokeServiceStream messages.

    One event per message, as AOG hosts expect, unless the host offered batching
    (`limit` > 1, see `aogstream.rpc.wire`): then every event that is already waiting
    when one is ready goes into the same message, up to `limit` events or
    MAX_BATCH_BYTES. Nothing ever waits to fill a batch. StreamChunk items are
    always sent on their own, verbatim.
    """
    pending: _Pending | None = None
    buf: list[bytes] = []
    size = 0
    try:
        while True:
            if pending is not None:
                p, pending = pending, None
                try:
                    item = await p
                except StopAsyncIteration:
                    break
            else:
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    break
            while True:
                if isinstance(item, StreamChunk):
                    if buf:
                        await context.write(_event_msg(b"".join(buf)))
                        buf, size = [], 0
                    await context.write(pb.InvokeServiceStreamResponse(
                        code=0, chunk_data=item.data, is_final=item.is_final,
                        metadata=item.metadata,
                    ))
                    if item.is_final:
                        return
                    break
                event = _sse(item)
                if limit == 1:
                    await context.write(_event_msg(event))
                    break
                buf.append(event)
                size += len(event)
                if len(buf) >= limit or size >= MAX_BATCH_BYTES:
                    break
                try:
                    item, pending = _poll_next(it)
                except StopAsyncIteration:
                    await context.write(_event_msg(b"".join(buf)))
                    buf = []
                    await context.write(
                        pb.InvokeServiceStreamResponse(code=0, is_final=True,
                                                       metadata=SSE_METADATA)
                    )
                    return
                if pending is not None:
                    break
            if buf:
                await context.write(_event_msg(b"".join(buf)))
                buf, size = [], 0
    except asyncio.CancelledError:
        # The cancel may land in context.write() rather than in plugin code; deliver
        # it to plugin code (at its yield, or where it is suspended) so that it sees
        # CancelledError, not a GeneratorExit from a finalizer later.
        with contextlib.suppress(BaseException):
            if pending is not None:
                await pending.throw(asyncio.CancelledError())
            else:
                await it.athrow(asyncio.CancelledError())  # type: ignore[attr-defined]
        raise
    except Exception as exc:  # noqa: BLE001
        code, msg = error_code(exc)
        log.warning("stream of %s failed: %s", service, msg)
        if buf:  # what was produced before the failure still goes out first
            await context.write(_event_msg(b"".join(buf)))
        await context.write(
            pb.InvokeServiceStreamResponse(code=code, message=msg, is_final=True)
        )
        return
    await context.write(
        pb.InvokeServiceStreamResponse(code=0, is_final=True, metadata=SSE_METADATA)
    )
