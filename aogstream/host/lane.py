"""The host's end of the lane (`aogstream.rpc.lane`): the three Invoke rpcs on a plain
framed unix socket, called from trio with the bridge's own surface.

`LaneChannel.unary` and `LaneChannel.stream` take the same arguments and keep the same
promises as `rpc.bridge.Channel`'s (what `host.client` and `host.connection` rely on:
`RpcFailure` with gRPC's code names, `receive_nowait` for coalescing, `send_nowait`/
`kick_writer`, `end_reading`, `is_last`), so a `PluginClient` uses either without
knowing which. Why it is built the way it is:

* **No thread, no task of its own.** The bridge's cost per message is its hops to
  grpc.aio's thread and back; here the caller's trio task does the I/O itself on a
  non-blocking stdlib socket, with `trio.lowlevel.wait_readable`/`wait_writable` only
  when the socket is not ready. So `send_nowait` and `kick_writer` write at once
  (`sock.send`), keeping in an outbox only what the kernel did not take, for the next
  `send`, `done_writing` or `receive` to finish. A unary call is one write (OPEN, MSG
  and HALF_CLOSE joined) and usually one read; a stream's `receive` reads a large chunk
  into the `FrameDecoder`, so whatever the plugin wrote meanwhile is decoded together
  and `receive_nowait` hands it out without a syscall.
* **Cancel = close the connection** (the contract): a connection goes back to the
  channel's pool only once the call's `END` was read and nothing of it is left half
  written or unread; a cancel, a deadline, an error or a caller that left early closes
  it, which is how the plugin learns of it. Several concurrent calls are several
  connections; idle ones are kept (LIFO, up to `POOL_SIZE`) and checked with a
  non-blocking peek before reuse (a plugin that closed one gave it EOF).
* **After an `is_last` message** the call is over for the caller, as on the bridge,
  but the plugin's `END` often comes a moment later (its handler returns after the
  write). Rather than wait for it, or close the connection and cancel a handler that is
  finishing anyway (measured: a third of 20-chunk streams), the connection lingers: the
  next call's connect reads the `END`s that arrived meanwhile (no task, no timer) and
  pools those connections; one still without its `END` after the bridge's `LINGER_S`
  is closed then, which cancels the call in the plugin. So a plugin that goes on after
  its last message is cancelled by the next call after `LINGER_S` (or when the
  channel closes), where the bridge's loop thread does it at `LINGER_S` itself.
* **Failures are gRPC's**: connection refused, EOF or a reset mid-call are
  "UNAVAILABLE" (`host.connection` then asks the keeper whether the process died), the
  call's deadline is "DEADLINE_EXCEEDED" (enforced here and sent in OPEN, so the plugin
  stops too), a non-OK `END` is its own code and details; bytes that are no lane frame
  are "INTERNAL". Sends never raise them, as the bridge's never do: a send on a call
  that ended is dropped and the reader reports how it ended.
* **Bidi: one reader and one writer at once**, as trio allows on one socket. A reader
  parked in `wait_readable` is woken on purpose with `trio.lowlevel.notify_closing`
  (which wakes the socket's waiters with ClosedResourceError and nothing else: the
  socket stays open, and the next wait registers it again): `end_reading` wakes it
  with the call's end, and a `send_nowait` that left bytes in the outbox with no task
  flushing wakes it so that it flushes them first (otherwise the plugin could wait for
  bytes that no task would write). A cancel scope around each wait would do the same,
  but costs more than the rest of a realtime frame's read (one wait per frame); only
  a call with a deadline has one, for the deadline. Backpressure is the kernel's
  socket buffer: `send` returns once its message is in it; `send_nowait` says
  `trio.WouldBlock` past `OUTBOX_LIMIT` bytes.
* **Schedule points**: like the bridge's, `receive` returns messages already decoded
  without one, and a read that finds data at once adds none either (only a cancelled
  caller is stopped there); a wait for the socket is one.

`packer_for` works as on the bridge: once the plugin's `HEADERS` (its initial metadata)
are read, requests queued with `send_nowait(kick=False)` are packed at `kick_writer`.

Why one module: a connection (`_Conn`) passes between the channel's pool and a call's
stream and back, and whether it may go back depends on the stream's state at the end
(END read, nothing half written, nothing unread, no parked reader); the pool's rules
and the stream's are one set of promises about one socket, as the bridge's are.
"""

from __future__ import annotations

import collections
import errno
import math
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar

import trio
from google.protobuf.message import DecodeError, Message

from aogstream.rpc import bridge, lane
from aogstream.rpc.bridge import Packer, PackerFor, RpcFailure

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# idle connections one channel keeps for the next calls
POOL_SIZE: Final = 64
# bytes a read takes at once: one chunk holds a burst of stream messages
READ_CHUNK: Final = 64 * 1024
# bytes `send_nowait` leaves queued before it says trio.WouldBlock
OUTBOX_LIMIT: Final = 256 * 1024
# how long a connect may retry while the plugin's listen backlog is full
CONNECT_RETRY_S: Final = 5.0

_HALF_CLOSE: Final = lane.frame(lane.HALF_CLOSE)
_pack_header = lane.HEADER.pack
_MSG: Final = lane.MSG
_HEADERS: Final = lane.HEADERS
_END: Final = lane.END
_INF: Final = math.inf


def _msg_frame(msg: Message) -> bytes:
    body = msg.SerializeToString()
    return _pack_header(len(body), _MSG) + body


def _method_name(method: str) -> str:
    """The rpc's name as OPEN carries it: "/protocol.ProviderService/InvokeService"
    → "InvokeService"."""
    return method.rpartition("/")[2]


def _deadline(timeout: float | None) -> float:
    return _INF if timeout is None else trio.current_time() + timeout


def _unavailable(exc: OSError | None = None) -> RpcFailure:
    if exc is None:
        return RpcFailure("UNAVAILABLE", "the plugin closed the lane connection")
    # never the socket's path in an answer: only what went wrong
    return RpcFailure("UNAVAILABLE",
                      f"lane connection to the plugin failed: {exc.strerror or exc!r}")


def _deadline_exceeded() -> RpcFailure:
    return RpcFailure("DEADLINE_EXCEEDED", "Deadline Exceeded")


def open_lane(network: str, address: str) -> LaneChannel | None:
    """The lane of a plugin that listens on (`network`, `address`), if it took the
    offer: then its socket exists beside the gRPC one (`rpc.lane.lane_path`). Only
    called once the handshake was read, by when our SDK's plugins listen on it."""
    path = lane.lane_path(network, address)
    if path is None:
        return None
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    return LaneChannel(path)


class _Conn:
    """One connected lane socket and the decoder of what it has read."""

    __slots__ = ("decoder", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = lane.FrameDecoder()

    def alive(self) -> bool:
        """An idle connection is reusable: nothing to read (EOF or stray bytes are not)."""
        if self.decoder.pending:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF (the plugin closed it), or bytes no call asked for

    def close(self) -> None:
        """Close now; a task waiting on the socket wakes with ClosedResourceError."""
        sock = self.sock
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
            sock.close()


class LaneChannel:
    """The lane of one plugin (`rpc.lane.lane_path`), with a pool of connections.

    Offers `unary` and `stream` as `rpc.bridge.Channel` does, for the three Invoke rpcs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[_Conn] = []
        # connections of calls left after their `is_last` message, whose END had not
        # arrived yet, with when to give up on it (oldest first)
        self._lingering: collections.deque[tuple[_Conn, float]] = collections.deque()
        self._closed = False
        # one read buffer for every call of the channel: a read copies out of it into
        # the connection's decoder before anything else runs (trio is one thread)
        self._buf = bytearray(READ_CHUNK)
        self._view = memoryview(self._buf)

    # ---- connections -----------------------------------------------------------------

    async def _connect(self, deadline: float) -> _Conn:
        """An idle connection that is still alive, or a new one."""
        if self._closed:
            raise RpcFailure("UNAVAILABLE", "the plugin's lane is closed")
        if self._lingering:
            self._settle_lingering()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.alive():
                return conn
            conn.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        give_up = min(deadline, trio.current_time() + CONNECT_RETRY_S)
        pause = 0.001
        while True:
            try:
                sock.connect(self.path)
                return _Conn(sock)
            except BlockingIOError:
                # a unix socket says EAGAIN while the listener's backlog is full
                if trio.current_time() + pause > give_up:
                    sock.close()
                    if deadline <= give_up:
                        raise _deadline_exceeded() from None
                    raise RpcFailure("UNAVAILABLE",
                                     "the plugin's lane accepts no connection") from None
            except OSError as exc:
                sock.close()
                raise _unavailable(exc) from None
            try:
                await trio.sleep(pause)
            except BaseException:
                sock.close()
                raise
            pause = min(pause * 2, 0.05)

    def _release(self, conn: _Conn) -> None:
        """A connection whose call ended cleanly: keep it for the next call."""
        if self._closed or len(self._idle) >= POOL_SIZE:
            conn.close()
        else:
            self._idle.append(conn)

    def _settle(self, conn: _Conn) -> bool | None:
        """A call whose last message was read: read its END if it has arrived, without
        waiting (anything before it is dropped). True: END read and the connection is
        free; None: not yet; False: it broke (EOF, an error, bytes that are no frame)."""
        decoder = conn.decoder
        while True:
            try:
                item = decoder.next()
            except lane.LaneProtocolError:
                return False
            if item is not None:
                if item[0] == _END:
                    return not decoder.pending
                continue
            try:
                n = conn.sock.recv_into(self._buf)
            except BlockingIOError:
                return None
            except OSError:
                return False
            if not n:
                return False
            decoder.feed(self._view[:n])

    def _linger(self, conn: _Conn) -> None:
        """Keep a connection whose END is still on its way (see the module's notes)."""
        if self._closed:
            conn.close()
            return
        lingering = self._lingering
        lingering.append((conn, trio.current_time() + bridge.LINGER_S))
        if len(lingering) > POOL_SIZE:
            lingering.popleft()[0].close()

    def _settle_lingering(self) -> None:
        now = trio.current_time()
        waiting: collections.deque[tuple[_Conn, float]] = collections.deque()
        for conn, give_up in self._lingering:
            settled = self._settle(conn)
            if settled:
                self._release(conn)
            elif settled is None and now < give_up:
                waiting.append((conn, give_up))
            else:
                conn.close()  # past LINGER_S: cancelled in the plugin, as the bridge does
        self._lingering = waiting

    @property
    def lingering_connections(self) -> int:
        """Connections waiting for the END of a call left after its last message."""
        return len(self._lingering)

    @property
    def idle_connections(self) -> int:
        """Connections kept for the next calls (for tests and diagnostics)."""
        return len(self._idle)

    def close(self) -> None:
        """Close the idle connections; new calls fail "UNAVAILABLE". Calls in flight
        go on until the plugin closes their connections (it goes away)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        lingering, self._lingering = self._lingering, collections.deque()
        for conn, _ in lingering:
            conn.close()

    # ---- calls -------------------------------------------------------------------------

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Resp:
        """One unary call, as `Channel.unary`. Raises RpcFailure on lane-level errors."""
        deadline = _deadline(timeout)
        conn = await self._connect(deadline)
        sock = conn.sock
        decoder = conn.decoder
        clean = False
        code, details = "INTERNAL", ""
        try:
            data = (lane.open_frame(_method_name(method), metadata or (), timeout)
                    + _msg_frame(request) + _HALF_CLOSE)
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _unavailable(exc) from None
            if sent < len(data):
                await _write_rest(sock, memoryview(data)[sent:], deadline)
            response: bytes | None = None
            while True:
                try:
                    item = decoder.next()
                except lane.LaneProtocolError as exc:
                    raise RpcFailure("INTERNAL", str(exc)) from None
                if item is None:
                    await self._read_waiting(conn, deadline)
                    continue
                kind, payload = item
                if kind == _MSG:
                    response = payload
                elif kind == _END:
                    try:
                        code, details = lane.parse_end(payload)
                    except lane.LaneProtocolError as exc:
                        raise RpcFailure("INTERNAL", str(exc)) from None
                    break
                elif kind != _HEADERS:
                    raise RpcFailure("INTERNAL", f"unexpected lane frame {kind!r} in an answer")
            clean = not decoder.pending
        finally:
            if clean:
                self._release(conn)
            else:
                conn.close()
        if code != "OK":
            raise RpcFailure(code, details)
        if response is None:
            raise RpcFailure("INTERNAL", "the plugin ended a unary call without a response")
        try:
            return response_type.FromString(response)
        except DecodeError as exc:
            raise RpcFailure("INTERNAL", f"could not parse the response: {exc}") from None

    async def _read_waiting(self, conn: _Conn, deadline: float) -> None:
        """Wait until the socket is readable, then read what is there (unary calls: the
        answer never precedes the request, so waiting first saves a syscall)."""
        sock = conn.sock
        if deadline == _INF:
            await trio.lowlevel.wait_readable(sock)
        else:
            with trio.CancelScope(deadline=deadline) as scope:
                await trio.lowlevel.wait_readable(sock)
            if scope.cancelled_caught:
                raise _deadline_exceeded()
        try:
            n = sock.recv_into(self._buf)
        except BlockingIOError:
            return
        except OSError as exc:
            raise _unavailable(exc) from None
        if not n:
            raise _unavailable()
        conn.decoder.feed(self._view[:n])

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        response_type: type[Resp],
        *,
        request: Message | None = None,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
        window: int = 0,
        is_last: Callable[[Resp], bool] | None = None,
        packer_for: PackerFor | None = None,
    ) -> AsyncIterator[LaneStream[Any, Resp]]:
        """A server-streaming call (when `request` is given) or a bidi call, as
        `Channel.stream`. `window` is accepted for the same signature and unused: the
        kernel's socket buffer is the window.

        Leaving the block ends the call: its connection goes back to the pool when
        the plugin's `END` was read (after an `is_last` message, an `END` already
        received with it counts), and is closed otherwise, which cancels the call in
        the plugin.
        """
        deadline = _deadline(timeout)
        conn = await self._connect(deadline)
        opening = lane.open_frame(_method_name(method), metadata or (), timeout)
        s: LaneStream[Any, Resp] = LaneStream(self, conn, response_type, deadline, is_last,
                                              packer_for)
        if request is not None:  # a server stream: the whole request in one write
            s._queue(opening + _msg_frame(request) + _HALF_CLOSE)
            s._write_now()
        else:  # bidi: OPEN goes out with the first message
            s._queue(opening)
        try:
            yield s
        finally:
            s._teardown()


async def _write_rest(sock: socket.socket, data: memoryview, deadline: float) -> None:
    """Write all of `data`, waiting for room (unary calls)."""
    with trio.CancelScope(deadline=deadline) as scope:
        while data:
            await trio.lowlevel.wait_writable(sock)
            try:
                n = sock.send(data)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _unavailable(exc) from None
            data = data[n:]
    if scope.cancelled_caught:
        raise _deadline_exceeded()


class LaneStream(Generic[Req, Resp]):
    """A streaming call on the lane, with the surface of `rpc.bridge.Stream`."""

    def __init__(
        self,
        channel: LaneChannel,
        conn: _Conn,
        response_type: type[Resp],
        deadline: float,
        is_last: Callable[[Resp], bool] | None,
        packer_for: PackerFor | None,
    ) -> None:
        self._channel = channel
        self._conn = conn
        self._sock: socket.socket | None = conn.sock  # None once the call was left
        self._decoder = conn.decoder
        self._parse: Callable[[bytes], Resp] = response_type.FromString
        self._deadline = deadline
        self._is_last = is_last
        self._packer_for = packer_for
        self._packer: Packer | None = None
        self.initial_metadata: Sequence[tuple[str, str]] = ()
        # what the plugin's END said, once read
        self._end: tuple[str, str] | None = None
        # what ended the call here (EOF, deadline, bad bytes, left), for the reader
        self._failure: RpcFailure | None = None
        self._finished = False  # the reader was told the end
        self._clean_end = False  # the `is_last` message was read
        # bytes the kernel did not take yet, and requests held for packing
        self._out = bytearray()
        self._held: list[Any] = []
        self._flushing = False  # a task is waiting for room to write `_out`
        self._drained: trio.Event | None = None
        self._parked = False  # a reader waits for the socket (or flushes before it)
        # the last read took less than a chunk: the socket was emptied, so the next
        # read waits for it at once instead of first trying a read that says EAGAIN
        self._emptied = False

    # ---- writing ------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._out += data

    def _write_now(self) -> None:
        """Hand the kernel what it takes of the outbox now (never waits)."""
        out, sock = self._out, self._sock
        if not out or sock is None:
            return
        try:
            n = sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            # reset or closed by the plugin: the reader reports it (EOF), sends drop
            out.clear()
            return
        del out[:n]

    def _write_frame(self, data: bytes) -> None:
        """One frame, straight to the kernel when nothing waits before it."""
        if self._held:
            self._pack_held()
        if self._out:
            self._out += data
            self._write_now()
            return
        sock = self._sock
        if sock is None:
            return
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        if n < len(data):
            self._out += memoryview(data)[n:]

    def _pack_held(self) -> None:
        held, self._held = self._held, []
        packer = self._packer
        msgs = packer(held) if packer is not None and len(held) > 1 else held
        self._out += b"".join(_msg_frame(m) for m in msgs)

    def _ended(self) -> bool:
        """Nothing more is to be sent on this call: it ended or was left."""
        return self._sock is None or self._end is not None or self._failure is not None

    def _after_nowait_write(self) -> None:
        """Bytes left in the outbox with no task to finish them: wake the parked reader
        so that it writes them before it waits again."""
        if self._out and not self._flushing and self._parked:
            self._wake_reader()

    def _wake_reader(self) -> None:
        """Wake the parked reader (see the module's notes); it looks again."""
        sock = self._sock
        if sock is not None and sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)

    async def _flush(self) -> None:
        """Wait until the outbox is in the kernel (or the call is over)."""
        if self._flushing:  # another task is at it: wait for it
            drained = self._drained
            if drained is None:
                drained = self._drained = trio.Event()
            await drained.wait()
            return
        self._flushing = True
        try:
            with trio.CancelScope(deadline=self._deadline) as scope:
                try:
                    while True:
                        self._write_now()
                        sock = self._sock
                        if not self._out or sock is None:
                            break
                        await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    pass  # left or failed meanwhile: the reader reports it
        finally:
            self._flushing = False
            drained, self._drained = self._drained, None
            if drained is not None:
                drained.set()
        if scope.cancelled_caught:
            self._fail(_deadline_exceeded())

    async def send(self, msg: Req) -> None:
        """Send one request message; returns once it is in the kernel's buffer (a
        message to a call that ended is dropped: the reader says how it ended)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._ended():
            return
        self._write_frame(_msg_frame(msg))
        if self._out:
            await self._flush()

    def send_nowait(self, msg: Req, *, kick: bool = True) -> None:
        """Send one request message now; trio.WouldBlock when `OUTBOX_LIMIT` bytes wait
        already. With `kick=False` it is only queued, for `kick_writer` to write what
        was queued together (packed, when the plugin said it unpacks)."""
        if self._ended():
            return
        if len(self._out) >= OUTBOX_LIMIT or len(self._held) >= 64:
            raise trio.WouldBlock
        if not kick:
            if self._packer is not None:
                self._held.append(msg)
            else:
                if self._held:
                    self._pack_held()
                self._out += _msg_frame(msg)
            return
        self._write_frame(_msg_frame(msg))
        self._after_nowait_write()

    def kick_writer(self) -> None:
        """Write what `send_nowait(kick=False)` queued."""
        if self._held:
            self._pack_held()
        self._write_now()
        self._after_nowait_write()

    async def done_writing(self) -> None:
        """Half-close the request side (the plugin reads EOF)."""
        self.done_writing_nowait()
        if self._out:
            await self._flush()
        else:
            await trio.lowlevel.checkpoint()

    def done_writing_nowait(self) -> None:
        """`done_writing` without the schedule point."""
        if self._ended():
            return
        self._write_frame(_HALF_CLOSE)
        self._after_nowait_write()

    # ---- reading ------------------------------------------------------------------------

    def _fail(self, failure: RpcFailure) -> None:
        """The call ends here with `failure` (for the reader): close the connection,
        which cancels the call in the plugin and wakes a task waiting on it."""
        if self._failure is None:
            self._failure = failure
        self._conn.close()

    def _next_message(self) -> Resp | None:
        """The next decoded message, or None (none complete yet, or the END, which is
        then in `_end`)."""
        decoder = self._decoder
        while self._end is None:
            try:
                item = decoder.next()
            except lane.LaneProtocolError as exc:
                self._fail(RpcFailure("INTERNAL", str(exc)))
                return None
            if item is None:
                return None
            kind, payload = item
            if kind == _MSG:
                try:
                    msg = self._parse(payload)
                except DecodeError as exc:
                    self._fail(RpcFailure("INTERNAL", f"could not parse a message: {exc}"))
                    return None
                if self._is_last is not None and self._is_last(msg):
                    self._clean_end = True
                return msg
            if kind == _END:
                try:
                    self._end = lane.parse_end(payload)
                except lane.LaneProtocolError as exc:
                    self._fail(RpcFailure("INTERNAL", str(exc)))
                return None
            if kind == _HEADERS:
                try:
                    self.initial_metadata = lane.parse_headers(payload)
                except lane.LaneProtocolError as exc:
                    self._fail(RpcFailure("INTERNAL", str(exc)))
                    return None
                if self._packer_for is not None:
                    self._packer = self._packer_for(self.initial_metadata)
                continue
            self._fail(RpcFailure("INTERNAL", f"unexpected lane frame {kind!r} from the plugin"))
            return None
        return None

    async def receive(self) -> Resp:
        """Next message; raises trio.EndOfChannel at the end, RpcFailure on errors."""
        while True:
            if self._finished or self._clean_end:
                raise trio.EndOfChannel
            msg = self._next_message()
            if msg is not None:
                return msg
            if self._end is not None:
                self._finished = True
                code, details = self._end
                if code == "OK":
                    raise trio.EndOfChannel
                raise RpcFailure(code, details)
            if self._failure is not None:
                self._finished = True
                raise self._failure
            await self._read_more()

    def receive_nowait(self) -> Resp:
        """The next message if one was already read, else trio.WouldBlock (also at the
        end, which `receive` reports). The SSE writer coalesces with it."""
        if self._finished or self._clean_end:
            raise trio.WouldBlock
        msg = self._next_message()
        if msg is None:
            raise trio.WouldBlock
        return msg

    async def _read_more(self) -> None:
        """Read what the socket has, waiting for it if need be. Sets `_failure` rather
        than raising it (a deadline, EOF, the call left); only trio.Cancelled escapes."""
        await trio.lowlevel.checkpoint_if_cancelled()
        channel = self._channel
        while True:
            sock = self._sock
            if sock is None:
                if self._failure is None:
                    self._failure = RpcFailure("CANCELLED", "the call was cancelled")
                return
            if self._failure is not None:
                return
            if self._emptied:
                # a realtime session reads each answer as it comes, the socket empty
                # after it: trying a read first would be one more syscall per frame
                # (a wait on a socket that has data meanwhile returns at once)
                self._emptied = False
            else:
                try:
                    n = sock.recv_into(channel._buf)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBADF:  # closed under us (left)
                        self._failure = self._failure or RpcFailure(
                            "CANCELLED", "the call was cancelled")
                    else:
                        self._fail(_unavailable(exc))
                    return
                else:
                    if not n:
                        self._fail(_unavailable())
                    else:
                        self._emptied = n < READ_CHUNK
                        self._decoder.feed(channel._view[:n])
                    return
            # nothing there yet: first write what is ours to write, then wait
            deadline = self._deadline
            if deadline == _INF:  # a bidi session: no cancel scope (see the notes)
                await self._park(sock)
                continue
            with trio.CancelScope(deadline=deadline) as scope:
                await self._park(sock)
            if scope.cancelled_caught and trio.current_time() >= deadline:
                self._fail(_deadline_exceeded())
                return
            # else woken on purpose (end_reading, bytes to write): look again

    async def _park(self, sock: socket.socket) -> None:
        """Flush what is ours to write, then wait until `sock` is readable or the
        reader is woken on purpose (`_wake_reader`)."""
        self._parked = True
        try:
            if self._out and not self._flushing:
                await self._flush()
            if self._sock is not None and self._failure is None:
                await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            pass  # woken, left, or failed by the writer: seen at the loop's top
        finally:
            self._parked = False

    def __aiter__(self) -> LaneStream[Req, Resp]:
        return self

    async def __anext__(self) -> Resp:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def end_reading(self) -> None:
        """The call is being left: a task parked in `receive` (or the next to call it)
        gets RpcFailure CANCELLED at once, as with the bridge's `Stream.end_reading`."""
        if self._finished or self._clean_end or self._end is not None:
            return
        if self._failure is None:
            self._failure = RpcFailure("CANCELLED", "the call was cancelled")
        if self._parked:
            self._wake_reader()  # the connection is closed when the call is left

    # ---- the end -------------------------------------------------------------------------

    def _teardown(self) -> None:
        """The `stream` block is left: pool the connection, let it linger for the END
        after an `is_last` message, or close it (= cancel the call in the plugin)."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        channel, conn = self._channel, self._conn
        # requests still queued (the plugin ended the call first): whether one of them
        # was half written is not worth tracking, so such a connection goes
        sound = (self._failure is None and not self._flushing and not self._parked
                 and not self._held and not self._out)
        if sound and self._end is not None:
            if not self._decoder.pending:
                channel._release(conn)
                return
        elif sound and self._clean_end:
            settled = channel._settle(conn)
            if settled:
                channel._release(conn)
                return
            if settled is None:
                channel._linger(conn)
                return
        if not self._finished and self._failure is None:
            self._failure = RpcFailure("CANCELLED", "the call was cancelled")
        conn.close()
