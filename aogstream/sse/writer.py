"""The streaming response writer: Invocation → SSE or NDJSON over ASGI.

Server CPU is spent per send, not per byte, so after each batch arrives the writer
drains whatever else is already waiting and writes it all at once; it never waits
to batch. Headers go out with the first events, so an invocation that fails before
its first chunk still gets a proper HTTP error status instead of a broken stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import trio

from aogstream.asgi_types import Headers, Send
from aogstream.errors import GatewayError
from aogstream.invocation import Invocation
from aogstream.sse.framing import SseEvents, encode_ndjson, encode_sse

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
NDJSON_HEADERS = [
    (b"content-type", b"application/x-ndjson"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def _frame_all(items: list[bytes | list[bytes]], encode: Callable[[bytes], bytes]) -> bytes:
    """Frame every event of `items`. A batch that arrived as plain SSE goes out as the
    plugin's own bytes when the output is SSE too (framing it again gives the same)."""
    if len(items) == 1:
        only = items[0]
        if encode is encode_sse and isinstance(only, SseEvents) and only.sse is not None:
            return only.sse
    out = bytearray()
    for item in items:
        if isinstance(item, list):
            raw = item.sse if isinstance(item, SseEvents) else None
            if raw is not None and encode is encode_sse:
                out += raw
                continue
            for event in item:
                out += encode(event)
        else:
            out += encode(item)
    return bytes(out)


def error_event(err: GatewayError) -> bytes:
    """The last event of a stream that failed mid-way: the error, marked finished, so
    clients that wait for `finished: true` stop waiting."""
    body = err.to_dict()
    body.update({"finished": True, "finish_reason": "error"})
    return json.dumps(body, ensure_ascii=False).encode()


Convert = Callable[[bytes], bytes | None]


def _frame_converted(items: list[bytes | list[bytes]], encode: Callable[[bytes], bytes],
                     convert: Convert) -> bytes:
    """Like `_frame_all`, each event passed through `convert` first (None drops it)."""
    out = bytearray()
    for item in items:
        for event in item if isinstance(item, list) else (item,):
            converted = convert(event)
            if converted is not None:
                out += encode(converted)
    return bytes(out)


async def write_stream(
    inv: Invocation,
    send: Send,
    *,
    ndjson: bool,
    extra_headers: Headers | None = None,
    convert: Convert | None = None,
    prologue: Sequence[bytes] = (),
    epilogue: Sequence[bytes] = (),
    error_tail: Callable[[GatewayError], bytes] = error_event,
) -> GatewayError | None:
    """Relay `inv`'s responses as events. Returns the error to answer with instead
    (as a plain JSON response) when the invocation failed before its first event.

    Flavor front doors pass `convert` (one chunk into the app's flavor; it may raise
    GatewayError, which ends the stream with that error), the flavor's `prologue` and
    `epilogue` events (the epilogue only after a stream that did not fail) and the
    flavor's `error_tail`. Without them the events are relayed as they are."""
    encode = encode_ndjson if ndjson else encode_sse
    headers = list(NDJSON_HEADERS if ndjson else SSE_HEADERS)
    if extra_headers:
        headers.extend(extra_headers)

    def frame(items: list[Any]) -> bytes:
        return _frame_all(items, encode) if convert is None else \
            _frame_converted(items, encode, convert)

    def tail(failed: GatewayError | None) -> bytes:
        return encode(error_tail(failed)) if failed is not None else \
            b"".join(encode(e) for e in epilogue)

    return await relay_batches(inv, send, headers, frame,
                               b"".join(encode(p) for p in prologue), tail)


async def relay_batches(inv: Invocation, send: Send, headers: Headers,
                        frame: Callable[[list[Any]], bytes], head: bytes,
                        tail: Callable[[GatewayError | None], bytes]) -> GatewayError | None:
    """The loop under every streamed answer: wait for the first response (so a call
    that fails before it gets a real error status: returned, nothing sent), send the
    headers, then write each batch `frame`d as one body, `head` in front of the first;
    whatever is already waiting is coalesced into one write, never waited for. The end
    goes out with the last batch: `tail(None)`, or `tail(err)` after a failure (from
    `frame` raising GatewayError or the invocation's own error)."""
    responses = inv.responses
    try:
        first = await responses.receive()
    except trio.EndOfChannel:
        if inv.error is not None:
            return inv.error
        first = b""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    pending: list[Any] = [first] if first else []
    failed: GatewayError | None = None
    ended = False
    while True:
        while True:  # coalesce what is already waiting, never wait for more
            try:
                pending.append(responses.receive_nowait())
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                ended = True
                break
        if pending:
            try:
                body = frame(pending)
            except GatewayError as err:
                failed = err
                break
            pending = []
            if head:
                body, head = head + body, b""
            if ended:  # the end is already here: one write for the rest and the end
                head = body
                break
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        if ended:
            break
        try:
            pending.append(await responses.receive())
        except trio.EndOfChannel:
            break
    failed = failed or inv.error
    with trio.CancelScope(shield=True):  # or hypercorn never closes the connection
        await send({"type": "http.response.body", "body": head + tail(failed),
                    "more_body": False})
    return None
