"""The one place every request passes: an ASGI wrapper around a serving process's app.

It sits outside the request guard, so refused requests are seen too, and sees every
HTTP request (hot routes, front doors, Quart routes) and WebSocket session by the
messages that cross it: the status and content type of the answer, each body send
(bytes, chunks, the gap since the previous chunk), the client's disconnect, WebSocket
frames both ways. Which service, model, provider and plugin served comes from the
gateway core through the record in a context variable (`observe.record`). At the end
it writes one log line, one record in the process's ring, and the metrics.

What it never reads: request or answer bodies (it counts their length), headers other
than the answer's content type, query strings, keys.

Requests on the primary's private unix socket are the workers' forwarded requests:
the worker that took the client's request records it, so they are passed through
unrecorded here (hypercorn gives no `server` address for a unix socket).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from aogstream.asgi_types import ASGIApp, Message, Receive, Scope, Send
from aogstream.observe.record import CURRENT, RequestRecord

STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
REQUEST_ID_HEADER = b"x-aogstream-request"
# how often a WebSocket session's frame counts are added to the metrics (s)
FRAMES_FLUSH_S = 1.0


class Observed:
    """ASGI wrapper that records each request for `observer` (an `observe.run.Observer`)."""

    def __init__(self, app: ASGIApp, observer: Any) -> None:
        self.app = app
        self.observer = observer
        self.metrics = observer.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope.get("server") is None:  # a worker's forwarded request
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        perf = time.perf_counter
        rec = RequestRecord(self.observer.next_id(), "http", scope.get("method", ""),
                            scope.get("path", ""), perf(), time.time())
        token = CURRENT.set(rec)
        metrics = self.metrics
        gaps = None
        last = 0.0

        def seen(msg: Message) -> Message:
            if msg["type"] == "http.request":
                rec.bytes_in += len(msg.get("body", b""))
            elif msg["type"] == "http.disconnect" and not rec.done:
                rec.cancelled = True
            return msg

        async def observed_receive() -> Message:
            return seen(await receive())

        # the server's `receive_nowait` stays reachable (counted the same), so a body
        # already queued is read without a schedule point (`http.asgi.read_body`)
        _pass_nowait(observed_receive, receive, seen)

        async def observed_send(msg: Message) -> None:
            nonlocal gaps, last
            if msg["type"] == "http.response.body":
                body = msg.get("body", b"")
                if body:
                    now = perf()
                    rec.bytes_out += len(body)
                    rec.chunks += 1
                    if gaps is not None and last:
                        gaps.add(now - last)
                    last = now
                if not msg.get("more_body", False):
                    rec.done = True
            elif msg["type"] == "http.response.start":
                rec.status = msg["status"]
                rec.ttfb = perf() - rec.started
                for k, v in msg.get("headers", ()):
                    if k == b"content-type":
                        if v.startswith(STREAM_TYPES):
                            rec.stream = True
                            if metrics is not None:
                                gaps = metrics.new_gaps()
                                metrics.stream_open(1)
                        break
                # the id to find this request by in the log and the recent requests
                msg = {**msg, "headers": [*msg.get("headers", ()),
                                          (REQUEST_ID_HEADER, rec.id.encode())]}
            await send(msg)

        try:
            await self.app(scope, observed_receive, observed_send)
        except BaseException:
            if not rec.done:
                rec.cancelled = True
                rec.status = rec.status or 500
            raise
        finally:
            CURRENT.reset(token)
            rec.duration = perf() - rec.started
            if not rec.done and rec.status:
                rec.cancelled = True  # the answer began and never ended
            if rec.stream and metrics is not None:
                metrics.stream_open(-1)
            self.observer.finish(rec, gaps)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        perf = time.perf_counter
        rec = RequestRecord(self.observer.next_id(), "websocket", "GET",
                            scope.get("path", ""), perf(), time.time())
        token = CURRENT.set(rec)
        metrics = self.metrics
        accepted = False
        waiting = 0.0  # when the first client frame not yet answered arrived
        # frames and reply times are counted here and added to the metrics about once
        # a second (`FRAMES_FLUSH_S`) and at the end (see `metrics.SessionFrames`)
        counts = metrics.new_session_frames() if metrics is not None else None
        replies = counts.replies if counts is not None else None
        flushed = rec.started

        def seen(msg: Message) -> Message:
            nonlocal waiting
            if msg["type"] == "websocket.receive":
                if not waiting:
                    waiting = perf()
                rec.frames_in += 1
                data = msg.get("bytes") or msg.get("text") or ""
                rec.bytes_in += len(data)
                if counts is not None:
                    counts.frames_in += 1
            elif msg["type"] == "websocket.disconnect":
                if rec.close_code is None:
                    rec.close_code = msg.get("code", 1005)
            return msg

        async def observed_receive() -> Message:
            return seen(await receive())

        # the server's `receive_nowait` stays reachable through this wrapper (counted
        # the same), so a socket can take client frames already waiting as a burst
        # (`bidi.socket.AsgiWebSocket.receive_nowait`)
        _pass_nowait(observed_receive, receive, seen)

        async def observed_send(msg: Message) -> None:
            nonlocal accepted, waiting, flushed
            t = msg["type"]
            if t == "websocket.send":
                rec.frames_out += 1
                data = msg.get("bytes") or msg.get("text") or ""
                rec.bytes_out += len(data)
                now = perf()
                if rec.ttfb is None:
                    rec.ttfb = now - rec.started
                if counts is not None and replies is not None:
                    counts.frames_out += 1
                    if waiting:
                        replies.add(now - waiting)
                    if now - flushed >= FRAMES_FLUSH_S and metrics is not None:
                        flushed = now
                        metrics.add_frames(rec.service, counts)
                waiting = 0.0
            elif t == "websocket.accept":
                rec.status = 101
                accepted = True
                if metrics is not None:
                    metrics.session_open(1)
            elif t == "websocket.close":
                rec.status = rec.status or 403  # closed before it was accepted
                if rec.close_code is None:
                    rec.close_code = msg.get("code", 1000)
            elif t == "websocket.http.response.start":
                rec.status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, observed_receive, observed_send)
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled) or not accepted:
                rec.cancelled = True
            rec.status = rec.status or 500
            raise
        finally:
            CURRENT.reset(token)
            rec.done = True
            rec.duration = perf() - rec.started
            if metrics is not None and counts is not None:
                metrics.add_frames(rec.service, counts)
            if accepted and metrics is not None:
                metrics.session_open(-1)
            self.observer.finish(rec, None)


def _nowait_of(receive: Receive) -> Any:
    """The server's non-blocking `receive` (hypercorn's is a memory channel's), if any."""
    queue = getattr(receive, "__self__", None)
    return (queue.receive_nowait if isinstance(queue, trio.MemoryReceiveChannel)
            else getattr(receive, "receive_nowait", None))


def _pass_nowait(observed: Any, receive: Receive, seen: Callable[[Message], Message]) -> None:
    """Give `observed` (a wrapper of `receive`) the server's non-blocking receive, if
    it has one, counting what it returns through `seen` as the wrapper does."""
    take = _nowait_of(receive)
    if take is not None:
        observed.receive_nowait = lambda: seen(take())
