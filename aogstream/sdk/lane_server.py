"""The plugin's end of the lane (`aogstream.rpc.lane`): the three Invoke rpcs on a plain
framed unix socket, served by the same `ProviderServicer` methods as over gRPC.

Why: a gRPC message costs the plugin grpc.aio's server (HTTP/2 framing, its own
thread hand-overs) for every request and every realtime frame, far more than the work
it carries. Here a connection is an `asyncio.Protocol` that cuts frames out of what
the socket gives it (`FrameDecoder`) and calls the servicer with a `LaneContext`, a
small stand-in for `grpc.aio.ServicerContext` with exactly what `servicer`,
`stream_relay` and `bidi_session` use (`read`, `write`, `invocation_metadata`,
`send_initial_metadata`, plus `time_remaining`, `cancelled`, `done`). So plugin code
cannot tell the two apart, except by asking (`current_transport`).

Per connection, one call at a time (the contract is in `rpc.lane`):
* `OPEN` starts a call; InvokeService and InvokeServiceStream run, in a task of their
  own, once their request (the first `MSG`) is in; InvokeServiceBidi runs at once and
  reads the host's messages as they come (`HALF_CLOSE` reads as `grpc.aio.EOF`).
* A unary answer goes out as one write (`MSG` and `END` together); stream and bidi
  messages are written as they come, and `write` waits while the socket's buffer is
  full (the transport's pause/resume), so nothing is buffered without bound. Incoming
  messages a bidi handler has not read yet pause reading past `_READ_HIGH`.
* The handler returns → `END` "OK"; it raises → `END` "UNKNOWN" with the error; an
  rpc this end does not serve → `END` "UNIMPLEMENTED". The connection takes the next
  call after any `END`. `MSG`/`HALF_CLOSE` frames that arrive when no call is open
  belong to a call already ended here (the host was still sending, or the rpc was
  refused at its `OPEN`) and are dropped.
* The host closing the connection (or it breaking) cancels the handler's task at once,
  so plugin code sees `asyncio.CancelledError` exactly as when a gRPC call is
  cancelled; `OPEN`'s timeout cancels it too and ends the call "DEADLINE_EXCEEDED".
* Bytes the codec rejects, or an `OPEN` while a call is open, close the connection.
* Once a call has ended, its context writes nothing more (a task plugin code left
  behind gets an error, never a frame in the next call) and its reads give EOF.
* A call frees itself by reference counting when it ends, cancelled or not: the
  plugin's garbage collector runs rarely on purpose (`server._tune_gc`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from aogstream.rpc import lane
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.sdk.servicer import ProviderServicer

log = logging.getLogger("aogstream.sdk")

TRANSPORT: ContextVar[str] = ContextVar("aogstream_sdk_transport", default="grpc")
"""Which transport serves the call the current code runs for: "lane" inside a call
served here, "grpc" otherwise (the default). Read it with `current_transport()`."""


def current_transport() -> str:
    """ "lane" while plugin code runs for a call that came over the lane, else "grpc".

    Plugin code rarely needs this (both transports deliver the same messages and the
    same cancellation); it is there for diagnostics and tests. Worker threads that the
    SDK runs plain `def` handlers on see the value of the call they run for.
    """
    return TRANSPORT.get()


_UNARY: Final = 0
_STREAM: Final = 1
_BIDI: Final = 2
_KIND_OF: Final = {"InvokeService": _UNARY, "InvokeServiceStream": _STREAM,
                   "InvokeServiceBidi": _BIDI}
assert frozenset(_KIND_OF) == lane.LANE_METHODS

_pack_header = lane.HEADER.pack
_MSG: Final = lane.MSG
_END_OK: Final = lane.END_OK
_EOF: Final = grpc.aio.EOF
_parse_request = pb.InvokeServiceRequest.FromString
_parse_bidi = pb.InvokeServiceBidiRequest.FromString

# Unread incoming messages of a bidi call at which the connection stops reading (and
# below which it reads again): the host's writes then wait, as gRPC's window would.
_READ_HIGH: Final = 256
_READ_LOW: Final = 64


class _Call:
    """One call in progress on a connection: what its handler reads and how it ends."""

    __slots__ = ("deadline", "expired", "half_closed", "inbox", "kind", "metadata",
                 "method", "started", "task", "timer", "waiter")

    def __init__(self, method: str, kind: int, metadata: lane.Metadata,
                 timeout: float | None) -> None:
        self.method = method
        self.kind = kind
        self.metadata = tuple(metadata)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.expired = False  # the timer cancelled the handler
        self.inbox: collections.deque[bytes] = collections.deque()
        self.half_closed = False
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None  # read() waiting for a frame


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class LaneContext:
    """What the servicer's Invoke methods use of `grpc.aio.ServicerContext`, over the
    lane. One per call; plugin code never sees it (it sees `incoming` and `send`)."""

    __slots__ = ("_call", "_conn")

    def __init__(self, conn: _LaneConnection, call: _Call) -> None:
        self._conn = conn
        self._call = call

    async def read(self) -> Any:
        """The host's next message (an InvokeServiceBidiRequest), or `grpc.aio.EOF`
        once it half-closed and everything before was read."""
        call = self._call
        inbox = call.inbox
        while not inbox:
            if call.half_closed:
                return _EOF
            conn = self._conn
            if conn.call is not call:  # ended: a reader plugin code left behind
                if conn.closed:
                    raise asyncio.CancelledError
                return _EOF
            waiter = call.waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                call.waiter = None
        payload = inbox.popleft()
        conn = self._conn
        if conn.reading_paused and len(inbox) <= _READ_LOW:
            conn.resume_reading()
        return _parse_bidi(payload)

    def _ended(self) -> BaseException:
        if self._conn.closed:
            return asyncio.CancelledError()  # the handler's task is being cancelled too
        # e.g. a task plugin code left behind: its bytes must not reach the next call
        return RuntimeError(f"the {self._call.method} call has ended; nothing more can be "
                            "sent on it")

    async def write(self, message: Any) -> None:
        """One message to the host, written now; waits while the socket is full."""
        conn = self._conn
        if conn.call is not self._call:
            raise self._ended()
        body = message.SerializeToString()
        conn.transport.write(_pack_header(len(body), _MSG) + body)
        if conn.write_paused:
            await conn.drain()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._call.metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        conn = self._conn
        if conn.call is not self._call:
            raise self._ended()
        conn.transport.write(lane.headers_frame(tuple(metadata)))

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self._conn.closed or self._call.expired

    def done(self) -> bool:
        return self._conn.call is not self._call  # ended (or its connection closed)


# what one read of a connection takes at most (a burst of frames fits)
_READ_BUFFER = 64 * 1024


class _LaneConnection(asyncio.BufferedProtocol):
    """One host connection: frames in, calls dispatched one at a time, frames out.

    A buffered protocol: the loop reads into one buffer the server's connections share
    (a read is consumed, copied into the connection's decoder, before the loop reads
    anything else), where a plain `Protocol` gets a fresh bytes object per read,
    allocated at the loop's read size (256 KiB) and shrunk: one per realtime frame.
    """

    def __init__(self, server: LaneServer) -> None:
        self.server = server
        self.servicer = server.servicer
        self.loop = server.loop
        self.decoder = lane.FrameDecoder()
        self._read_view = server.read_view
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.call: _Call | None = None
        self.closed = False
        self.write_paused = False
        self.reading_paused = False
        self._drain: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        decoder = self.decoder
        decoder.feed(data)
        try:
            while not self.closed:
                frame = decoder.next()
                if frame is None:
                    return
                kind, payload = frame
                call = self.call
                if call is None:
                    if kind == lane.OPEN:
                        self._open(payload)
                    elif kind != _MSG and kind != lane.HALF_CLOSE:
                        raise lane.LaneProtocolError(f"frame kind {kind!r} with no call open")
                    # else: a late frame of a call that already ended here: dropped
                elif kind == _MSG:
                    self._message(call, payload)
                elif kind == lane.HALF_CLOSE:
                    self._half_close(call)
                else:
                    raise lane.LaneProtocolError(f"frame kind {kind!r} during a call")
        except lane.LaneProtocolError as exc:
            log.warning("closing a lane connection: %s", exc)
            self.transport.close()
            self._lost()

    def eof_received(self) -> bool:
        return False  # the host closed its end: close ours (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- flow control --------------------------------------------------------------

    async def drain(self) -> None:
        """Wait until the transport takes writes again."""
        while self.write_paused and not self.closed:
            waiter = self._drain
            if waiter is None:
                waiter = self._drain = self.loop.create_future()
            await waiter
        if self.closed:
            raise asyncio.CancelledError

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if not self.closed:
            self.transport.resume_reading()

    # ---- calls ---------------------------------------------------------------------

    def _open(self, payload: bytes) -> None:
        method, metadata, timeout = lane.parse_open(payload)
        kind = _KIND_OF.get(method)
        if kind is None:
            self.transport.write(lane.end_frame(
                "UNIMPLEMENTED",
                f"method {method!r} is not served on the lane; it serves "
                f"{', '.join(sorted(lane.LANE_METHODS))} (every other rpc is on gRPC)"))
            return
        call = self.call = _Call(method, kind, metadata, timeout)
        if timeout is not None:
            call.timer = self.loop.call_later(max(timeout, 0.0), self._expire, call)
        if kind == _BIDI:
            self._start(call, self._run_bidi(call))

    def _message(self, call: _Call, payload: bytes) -> None:
        if call.kind == _BIDI:
            inbox = call.inbox
            inbox.append(payload)
            _wake(call.waiter)
            if len(inbox) >= _READ_HIGH and not self.reading_paused:
                self.pause_reading()
        elif not call.started:
            self._start(call, self._run_unary(call, payload) if call.kind == _UNARY
                        else self._run_stream(call, payload))
        # a second request message of a unary or server-stream call: dropped (gRPC
        # would refuse the call; our host never sends one)

    def _half_close(self, call: _Call) -> None:
        call.half_closed = True
        if call.kind == _BIDI:
            _wake(call.waiter)
        elif not call.started:
            self._finish(call, lane.end_frame(
                "INTERNAL", f"{call.method} needs one request message, none was sent"))

    def _start(self, call: _Call, coro: Coroutine[Any, Any, None]) -> None:
        # eager: the handler runs now, up to its first real wait, in a context of its
        # own; a unary answer that is ready at once is written before this returns,
        # without a turn of the loop (the frames still waiting in `data_received` then
        # find the call ended, as the contract allows)
        call.started = True
        task = asyncio.Task(coro, loop=self.loop, eager_start=True)
        if not task.done():
            call.task = task

    def _finish(self, call: _Call, data: bytes) -> None:
        """Write the call's last frames and free the connection for the next call."""
        if call.timer is not None:
            call.timer.cancel()
        _wake(call.waiter)  # a reader of this call still waiting reads EOF
        if self.call is call:
            self.call = None
            self.server.call_ended()
        if not self.closed:
            self.transport.write(data)
            if self.reading_paused:
                self.resume_reading()

    def _expire(self, call: _Call) -> None:
        if self.call is not call:
            return
        call.expired = True
        if call.task is not None and not call.task.done():
            call.task.cancel()
        else:  # still waiting for its request
            self._finish(call, lane.end_frame("DEADLINE_EXCEEDED", "deadline exceeded"))

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        call, self.call = self.call, None
        if call is not None:
            self.server.call_ended()
            if call.timer is not None:
                call.timer.cancel()
            if call.task is not None:
                call.task.cancel()
            _wake(call.waiter)  # a reader outside the handler's task: CancelledError
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _guard(self, call: _Call, body: Callable[[], Coroutine[Any, Any, bytes]]) -> None:
        """Run a call's handler in this task and end the call as it ended."""
        TRANSPORT.set("lane")  # this task's own context: plugin code reads "lane"
        try:
            try:
                end = await body()
            except asyncio.CancelledError:
                if call.expired and not self.closed:
                    self._finish(call, lane.end_frame("DEADLINE_EXCEEDED", "deadline exceeded"))
                    return  # our own timer's cancel, handled: the connection serves on
                raise
            except Exception as exc:  # reported to the host, as gRPC would
                log.warning("lane call %s failed: %r", call.method, exc, exc_info=True)
                end = lane.end_frame("UNKNOWN", f"{call.method} failed: "
                                                f"{type(exc).__name__}: {exc}")
            if call.expired:  # the handler swallowed our timer's cancel and returned
                end = lane.end_frame("DEADLINE_EXCEEDED", "deadline exceeded")
            self._finish(call, end)
        finally:
            # no cycle call → task → its exception's frames → call: a cancelled call is
            # freed by reference counting, not left to the (rare, see server.py) GC
            call.task = None

    def _run_unary(self, call: _Call, payload: bytes) -> Coroutine[Any, Any, None]:
        async def body() -> bytes:
            try:
                request = _parse_request(payload)
            except DecodeError:
                return lane.end_frame("INTERNAL", "could not parse the request message")
            response = await self.servicer.InvokeService(request, LaneContext(self, call))
            out = response.SerializeToString()
            return _pack_header(len(out), _MSG) + out + _END_OK  # one write

        return self._guard(call, body)

    def _run_stream(self, call: _Call, payload: bytes) -> Coroutine[Any, Any, None]:
        async def body() -> bytes:
            try:
                request = _parse_request(payload)
            except DecodeError:
                return lane.end_frame("INTERNAL", "could not parse the request message")
            context: Any = LaneContext(self, call)  # what the servicer uses of gRPC's
            await self.servicer.InvokeServiceStream(request, context)
            return _END_OK

        return self._guard(call, body)

    def _run_bidi(self, call: _Call) -> Coroutine[Any, Any, None]:
        async def body() -> bytes:
            try:
                context: Any = LaneContext(self, call)
                await self.servicer.InvokeServiceBidi(None, context)
            except DecodeError:
                return lane.end_frame("INTERNAL", "could not parse a request message")
            return _END_OK

        return self._guard(call, body)


class LaneServer:
    """The lane's listener in a plugin process: `start`, then `stop` at shutdown."""

    def __init__(self, servicer: ProviderServicer, path: str) -> None:
        self.servicer = servicer
        self.path = path
        self.loop = asyncio.get_running_loop()
        self.connections: set[_LaneConnection] = set()
        self.read_view = memoryview(bytearray(_READ_BUFFER))  # see _LaneConnection
        self._server: asyncio.Server | None = None
        self._idle: asyncio.Event | None = None  # set while stopping, once no call runs

    async def start(self) -> None:
        """Listen on `path` (the file exists when this returns)."""
        self._server = await self.loop.create_unix_server(
            lambda: _LaneConnection(self), self.path)

    def active_calls(self) -> int:
        return sum(1 for c in self.connections if c.call is not None)

    def call_ended(self) -> None:
        if self._idle is not None and not self.active_calls():
            self._idle.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop taking connections, let calls in progress end for up to `grace`
        seconds (as gRPC's stop does), then close every connection (cancelling what
        still runs) and remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self.active_calls() and grace > 0:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for conn in list(self.connections):
            conn.transport.close()
            conn._lost()
        self.connections.clear()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


async def start_lane(servicer: ProviderServicer, path: str) -> LaneServer:
    """A lane server listening on `path` beside the plugin's gRPC socket."""
    srv = LaneServer(servicer, path)
    await srv.start()
    return srv
