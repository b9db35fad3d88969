"""The trio⇄grpc bridge: grpc.aio on one asyncio thread, trio everywhere else.

grpcio has no trio support, and the alternatives measured worse or leaked
cancellations (spec/grpc-bridge-and-go-plugin.md). So every grpc object of a process
lives on one dedicated asyncio loop thread (`GrpcLoop`), and trio code talks to it
through this module:

* **Wake-ups are coalesced, across calls too.** A wake-up of the other thread costs a
  syscall and a GIL hand-over, far more than the work it carries, so each direction
  has one queue per process: the loop thread queues callbacks for trio and schedules
  one `TrioToken.run_sync_soon` per burst, whatever the number of calls involved;
  trio queues commands for the loop (start a call, credits, wake a writer, cancel)
  and schedules one `loop.call_soon_threadsafe` per burst. Per call, messages from
  gRPC go to a deque and only the first after a drain asks for a wake-up.
* **Credits both ways.** The reader task holds an asyncio semaphore of `window`
  credits, so a slow trio reader stops it pulling messages from gRPC, and HTTP/2 flow
  control then pushes back on the plugin. Sends take one of `window` credits, which the
  writer returns once the message is on the wire; it returns them lazily (a queue the
  trio side reads when it runs short) and wakes trio only when a sender is parked, so a
  paced stream (a realtime frame every 20 ms) costs no wake-up into trio per message.
* **`call.cancel()` on every scope exit.** Garbage collection does not cancel a grpc
  call in time and cancelling an awaiting coroutine is not enough either, so leaving
  the `async with` always schedules an explicit cancel (a no-op on a finished call).
* **Callbacks into trio never raise**: a raising `run_sync_soon` callback would crash
  the trio run.

Why one module: the rules above hold only together (one grpc thread, one wake-up per
burst, cancellation in both directions), and each call shape is a small class over them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar

import grpc
import trio
from google.protobuf.message import Message

log = logging.getLogger(__name__)

Req = TypeVar("Req")
# responses are protobuf messages: the bridge decodes them with their `FromString`
Resp = TypeVar("Resp", bound=Message)

# Packs a run of request messages that are already waiting into fewer messages (see
# `Channel.stream`'s `packer_for`); it never reorders them.
type Packer = Callable[[list[Any]], list[Any]]
# Given the server's initial metadata, the packer the call may use (or None).
type PackerFor = Callable[[Sequence[tuple[str, str | bytes]]], Packer | None]


class _End(enum.Enum):
    """The end-of-stream marker in a stream's queues (an enum member, so that an `is`
    test tells the type checker the rest of the queue holds messages)."""

    EOF = enum.auto()


_EOF: Final = _End.EOF
DEFAULT_WINDOW = 64
# After a call's last message (`is_last`), how long the loop thread waits for the
# call's end before cancelling it: a well-behaved server ends at once.
LINGER_S = 1.0


class RpcFailure(Exception):
    """A gRPC-level failure (the plugin is gone, the call was refused, a deadline hit).

    Business errors of AOG plugins never arrive this way: they travel in the
    response's `code`/`message` fields.
    """

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_grpc(cls, exc: BaseException) -> RpcFailure:
        if isinstance(exc, grpc.aio.AioRpcError):
            return cls(exc.code().name, exc.details() or "")
        return cls("UNKNOWN", repr(exc))


class GrpcLoop:
    """The asyncio loop thread that owns every grpc.aio object of this process.

    Start it with `async with GrpcLoop.open() as loop:`; it stops (closing its
    channels) when the block exits.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        # trio → loop commands, drained by one loop callback per burst
        self._to_loop: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._to_loop_pending = False
        # loop → trio callbacks, drained by one trio callback per burst
        self._token: trio.lowlevel.TrioToken | None = None
        self._to_trio: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque())
        self._to_trio_pending = False

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[GrpcLoop]:
        self = cls()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, name="grpc-aio", daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(self._started.wait)
        try:
            yield self
        finally:
            with trio.CancelScope(shield=True):
                await self.run(_cancel_all_but_current)
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._loop.stop)
                await trio.to_thread.run_sync(self._thread.join, 5.0)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "GrpcLoop used before open()"
        return self._loop

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule `fn(*args)` on the loop thread (FIFO; from the trio thread).

        Commands queue up and one loop wake-up runs every command queued by then, so
        a burst (many calls starting, credits of many streams) costs one syscall.
        """
        self._to_loop.append((fn, args))
        if not self._to_loop_pending:
            self._to_loop_pending = True
            self.loop.call_soon_threadsafe(self._run_to_loop)

    def _run_to_loop(self) -> None:
        # clear the flag first: a command queued from now on schedules a new run
        self._to_loop_pending = False
        q = self._to_loop
        while q:
            fn, args = q.popleft()
            try:
                fn(*args)
            except Exception:  # one bad command must not stop the others
                log.exception("bridge command %r failed", fn)

    def to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        """Schedule `fn(*args)` on the trio thread (FIFO; from the loop thread).

        Never raises: a trio run that has finished just drops the callback.
        """
        self._to_trio.append((fn, args))
        if not self._to_trio_pending:
            self._to_trio_pending = True
            assert self._token is not None
            try:
                self._token.run_sync_soon(self._run_to_trio)
            except trio.RunFinishedError:
                pass

    def _run_to_trio(self) -> None:
        # runs in trio: it must never raise (that would crash the whole trio run)
        self._to_trio_pending = False
        q = self._to_trio
        while q:
            fn, args = q.popleft()
            try:
                fn(*args)
            except Exception:  # never into trio: it would crash the run
                log.exception("bridge callback %r failed", fn)

    async def run[T](self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine `fn()` on the loop and wait for its result in trio.

        A trio cancellation cancels the asyncio task (and so the grpc call awaited
        inside it). Both hops go through the coalesced queues: a unary call costs one
        wake-up each way, shared with whatever else crosses at the same moment.
        """
        done = trio.Event()
        box: list[asyncio.Task[T]] = []

        def _finished(task: asyncio.Task[T]) -> None:  # loop thread
            self.to_trio(_deliver, task)

        def _deliver(task: asyncio.Task[T]) -> None:  # trio thread
            box.append(task)
            done.set()

        started: list[asyncio.Task[T]] = []

        def _start() -> None:  # loop thread; runs before any _cancel (FIFO)
            task = self.loop.create_task(fn())
            started.append(task)
            task.add_done_callback(_finished)

        def _cancel() -> None:  # loop thread
            for task in started:
                task.cancel()

        self.call_soon(_start)
        try:
            await done.wait()
        except BaseException:
            self.call_soon(_cancel)
            raise
        try:
            return box[0].result()
        except asyncio.CancelledError:  # e.g. its channel closed under it
            raise RpcFailure("CANCELLED", "the call was cancelled") from None

    async def open_channel(self, target: str) -> Channel:
        """Dial `target` (`unix:/path` or `host:port`) with go-plugin's options."""

        async def _make() -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.max_send_message_length", 2**31 - 1),
                    ("grpc.max_receive_message_length", 2**31 - 1),
                    ("grpc.enable_retries", 0),
                ],
            )

        raw = await self.run(_make)
        return Channel(self, raw, target)


async def _cancel_all_but_current() -> None:
    """Cancel leftover tasks on the loop so that it can stop cleanly."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2)


class Channel:
    """One gRPC connection to a plugin, usable from trio."""

    def __init__(self, gl: GrpcLoop, raw: grpc.aio.Channel, target: str) -> None:
        self._gl = gl
        self._raw = raw
        self.target = target
        # (kind, method, deserializer) → multicallable; loop thread only
        self._methods: dict[tuple[str, str, Any], Any] = {}

    def _method(self, kind: str, method: str, deser: Any) -> Any:
        """This channel's multicallable for `method` (loop thread), made once:
        building one per call costs more than the lookup."""
        key = (kind, method, deser)
        mc = self._methods.get(key)
        if mc is None:
            factory = self._raw.unary_stream if kind == "us" else self._raw.stream_stream
            mc = factory(method, request_serializer=_serialize, response_deserializer=deser)
            self._methods[key] = mc
        return mc

    async def close(self) -> None:
        raw = self._raw

        async def _close() -> None:
            await raw.close(grace=None)

        with trio.CancelScope(shield=True):
            await self._gl.run(_close)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel has connected (raises RpcFailure on timeout)."""
        raw = self._raw

        async def _ready() -> None:
            await asyncio.wait_for(raw.channel_ready(), timeout)

        try:
            await self._gl.run(_ready)
        except TimeoutError as exc:
            raise RpcFailure("UNAVAILABLE", f"could not connect to {self.target}") from exc

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Resp:
        """One unary call. Raises RpcFailure on gRPC-level errors."""
        raw = self._raw

        async def _call() -> Resp:
            mc = raw.unary_unary(
                method,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            call = mc(request, timeout=timeout, metadata=metadata)
            try:
                return await call
            except asyncio.CancelledError:
                call.cancel()
                raise

        try:
            return await self._gl.run(_call)
        except grpc.aio.AioRpcError as exc:
            raise RpcFailure.from_grpc(exc) from None
        except grpc.aio.UsageError as exc:  # the channel was closed
            raise RpcFailure("UNAVAILABLE", str(exc)) from None

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        response_type: type[Resp],
        *,
        request: Message | None = None,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
        window: int = DEFAULT_WINDOW,
        is_last: Callable[[Resp], bool] | None = None,
        packer_for: PackerFor | None = None,
    ) -> AsyncIterator[Stream[Any, Resp]]:
        """Open a server-streaming call (when `request` is given) or a bidi call.

        The call is cancelled when the block exits, whatever the reason, except after
        a message for which `is_last` is true (AOG's `is_final`): the call is then
        over for the caller, and the loop thread itself reads the end of the call, or
        cancels it if the end does not follow within LINGER_S. That saves the trio
        side a loop wake-up per call.

        `packer_for` (bidi calls): once the server's initial metadata has arrived, it
        says whether and how the writer may pack requests that are already queued
        when it gets to them (several waiting frames in one message); a message
        queued alone is always written as it is.
        """
        s: Stream[Any, Resp] = Stream(self._gl, window, is_last, bidi=request is None,
                                      packer_for=packer_for)
        self._gl.call_soon(s._start, self, method, response_type, request, timeout, metadata)
        try:
            yield s
        finally:
            s._teardown()


def _serialize(msg: Message) -> bytes:
    return msg.SerializeToString()


class Stream(Generic[Req, Resp]):
    """A streaming call seen from trio: `send`, `done_writing`, `receive`, `async for`."""

    def __init__(
        self,
        gl: GrpcLoop,
        window: int,
        is_last: Callable[[Resp], bool] | None = None,
        *,
        bidi: bool = False,
        packer_for: PackerFor | None = None,
    ) -> None:
        self._gl = gl
        self._packer_for = packer_for
        self._packer: Packer | None = None  # loop thread: set from initial metadata
        self._window = window
        self._is_last = is_last
        self._bidi = bidi
        # asyncio → trio
        self._inbox: collections.deque[Resp | RpcFailure | _End] = collections.deque()
        self._wake_pending = False
        self._waiter: trio.lowlevel.Task | None = None  # parked in receive()
        self._consumed = 0
        self._credit_batch = max(1, window // 4)
        self._finished = False
        # EOF or the last message read: nothing left for the trio side to cancel
        self._clean_end = False
        # trio → asyncio: `_in_flight` sent messages not yet acknowledged by the writer,
        # whose `_acks` (counts written) the trio side harvests when it runs short
        self._in_flight = 0
        self._acks: collections.deque[int] = collections.deque()
        self._send_waiters: collections.deque[trio.lowlevel.Task] = collections.deque()
        self._sender_parked = False  # set by trio, read by the loop thread
        self._outbox: collections.deque[Req | _End] = collections.deque()
        self._writer_wake_pending = False
        # owned by the loop thread
        self._call: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._read_credits: asyncio.Semaphore | None = None
        self._writer_event: asyncio.Event | None = None
        self._closed = False

    # ---- loop thread -------------------------------------------------------------

    def _start(
        self,
        channel: Channel,
        method: str,
        response_type: type[Resp],
        request: Message | None,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        if self._closed:
            return
        deser = response_type.FromString
        try:
            if request is not None:
                mc = channel._method("us", method, deser)
                self._call = mc(request, timeout=timeout, metadata=metadata)
            else:
                mc2 = channel._method("ss", method, deser)
                self._call = mc2(timeout=timeout, metadata=metadata)
                self._writer_event = asyncio.Event()
                self._tasks.append(asyncio.ensure_future(self._writer()))
        except Exception as exc:  # noqa: BLE001 - reported to the trio side
            self._push(RpcFailure("INTERNAL", f"could not start {method}: {exc!r}"))
            self._push(_EOF)
            return
        self._read_credits = asyncio.Semaphore(self._window)
        self._tasks.append(asyncio.ensure_future(self._reader()))

    async def _reader(self) -> None:
        assert self._read_credits is not None
        call = self._call
        try:
            if self._packer_for is not None:
                # headers come before any message, so waiting for them first delays
                # nothing; a call that fails without them reads its error below
                with contextlib.suppress(grpc.aio.AioRpcError):
                    self._packer = self._packer_for(await call.initial_metadata() or ())
            while True:
                await self._read_credits.acquire()
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                self._push(msg)
                if self._is_last is not None and self._is_last(msg):
                    # the trio side stops here and will not cancel (see `stream`)
                    try:
                        await asyncio.wait_for(call.read(), LINGER_S)
                    except (TimeoutError, grpc.aio.AioRpcError):
                        pass
                    finally:
                        call.cancel()
                    return
        except asyncio.CancelledError:
            # our own teardown, or the channel closed under the call: either way the
            # trio side must not wait forever
            self._push(RpcFailure("CANCELLED", "the call was cancelled"))
            return
        except grpc.aio.AioRpcError as exc:
            self._push(RpcFailure.from_grpc(exc))
        except Exception as exc:  # noqa: BLE001
            self._push(RpcFailure("INTERNAL", repr(exc)))
        self._push(_EOF)

    async def _writer(self) -> None:
        assert self._writer_event is not None
        call = self._call
        try:
            while True:
                await self._writer_event.wait()
                self._writer_event.clear()
                self._writer_wake_pending = False
                sent = 0
                while self._outbox:
                    if self._packer is not None and len(self._outbox) > 1:
                        # several already waiting: one write for what packs together
                        run: list[Any] = []
                        outbox = self._outbox
                        while outbox and outbox[0] is not _EOF:
                            run.append(outbox.popleft())
                        if run:
                            for packed in self._packer(run):
                                await call.write(packed)
                            sent += len(run)
                            continue
                    msg = self._outbox.popleft()
                    if msg is _EOF:
                        await call.done_writing()
                        self._return_send_credits(sent)
                        return
                    await call.write(msg)
                    sent += 1
                self._return_send_credits(sent)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - the reader reports the call's status
            log.debug("bridge writer stopped: %r", exc)

    def _return_send_credits(self, n: int) -> None:
        if n:
            self._acks.append(n)  # deque appends are atomic across threads
            # after the append: a sender that parked before it sees the credits in
            # its own harvest or is woken here (it sets the flag, then harvests)
            if self._sender_parked:
                self._to_trio(self._wake_senders)

    def _wake_writer(self) -> None:
        if self._writer_event is not None:
            self._writer_event.set()

    def _release_read_credits(self, n: int) -> None:
        if self._read_credits is not None:
            for _ in range(n):
                self._read_credits.release()

    def _cancel_on_loop(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        for t in self._tasks:
            t.cancel()

    def _push(self, item: Resp | RpcFailure | _End) -> None:
        self._inbox.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            self._to_trio(self._wake_receiver)

    def _to_trio(self, fn: Callable[..., None], *args: Any) -> None:
        self._gl.to_trio(fn, *args)

    # ---- trio thread -------------------------------------------------------------

    def _wake_receiver(self) -> None:
        self._wake_pending = False
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    def _abort_wait(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _harvest_acks(self) -> None:
        acks = self._acks
        while acks:
            self._in_flight -= acks.popleft()
        if self._in_flight < 0:  # never more credits than the window
            self._in_flight = 0

    def _wake_senders(self) -> None:
        self._sender_parked = False
        self._harvest_acks()
        while self._send_waiters:
            trio.lowlevel.reschedule(self._send_waiters.popleft())


    async def receive(self) -> Resp:
        """Next message; raises trio.EndOfChannel at the end, RpcFailure on errors."""
        while not self._inbox:
            if self._finished or self._clean_end:  # EOF, or past the `is_last` message
                raise trio.EndOfChannel
            # park the task itself (an Event per message costs more than the wake)
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        item = self._inbox.popleft()
        if item is _EOF:
            self._finished = self._clean_end = True
            raise trio.EndOfChannel
        if isinstance(item, RpcFailure):
            # the EOF marker that follows is consumed with the error
            self._finished = True
            self._inbox.clear()
            raise item
        self._consumed += 1
        if self._is_last is not None and self._is_last(item):
            self._clean_end = True
        elif self._consumed >= self._credit_batch:
            n, self._consumed = self._consumed, 0
            self._gl.call_soon(self._release_read_credits, n)
        return item

    def receive_nowait(self) -> Resp:
        """The next message if one is already here, else raise trio.WouldBlock.

        The SSE writer uses it to coalesce what is already waiting into one send.
        """
        if not self._inbox:
            raise trio.WouldBlock
        item = self._inbox[0]
        if item is _EOF or isinstance(item, RpcFailure):
            raise trio.WouldBlock
        self._inbox.popleft()
        self._consumed += 1
        if self._is_last is not None and self._is_last(item):
            self._clean_end = True
        elif self._consumed >= self._credit_batch:
            n, self._consumed = self._consumed, 0
            self._gl.call_soon(self._release_read_credits, n)
        return item

    def __aiter__(self) -> Stream[Req, Resp]:
        return self

    async def __anext__(self) -> Resp:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def send(self, msg: Req) -> None:
        """Queue one request message; waits while `window` messages are in flight."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._in_flight >= self._window:
            self._harvest_acks()
        while self._in_flight >= self._window:
            self._sender_parked = True
            self._harvest_acks()  # after the flag: see `_return_send_credits`
            if self._in_flight < self._window:
                if not self._send_waiters:
                    self._sender_parked = False
                break
            task = trio.lowlevel.current_task()
            self._send_waiters.append(task)

            def abort(_: Any, task: trio.lowlevel.Task = task) -> trio.lowlevel.Abort:
                with contextlib.suppress(ValueError):
                    self._send_waiters.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        self._in_flight += 1
        self._outbox.append(msg)
        self._kick_writer()

    def send_nowait(self, msg: Req, *, kick: bool = True) -> None:
        """Queue one request message now; trio.WouldBlock when `window` messages are
        already in flight. With `kick=False` the writer is not woken: the caller
        queues more and calls `kick_writer` once, so that the writer finds them all
        waiting (and may pack them) instead of waking for the first alone."""
        if self._in_flight >= self._window:
            self._harvest_acks()
            if self._in_flight >= self._window:
                raise trio.WouldBlock
        self._in_flight += 1
        self._outbox.append(msg)
        if kick:
            self._kick_writer()

    def kick_writer(self) -> None:
        """Wake the writer for what `send_nowait(kick=False)` queued."""
        self._kick_writer()

    async def done_writing(self) -> None:
        """Half-close the request side (the plugin reads EOF)."""
        self.done_writing_nowait()
        await trio.lowlevel.checkpoint()

    def done_writing_nowait(self) -> None:
        """`done_writing` without the schedule point."""
        self._outbox.append(_EOF)
        self._kick_writer()

    def end_reading(self) -> None:
        """The call is being left: a task parked in `receive` (or the next to call it)
        gets RpcFailure CANCELLED at once, not whenever the loop thread reports the
        cancel (never, for a call that had not started). For a reader outside the
        `stream` block, such as a bidi session's frames read in the client's task."""
        if self._finished or self._clean_end:
            return
        self._inbox.append(RpcFailure("CANCELLED", "the call was cancelled"))
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)

    def _kick_writer(self) -> None:
        if not self._writer_wake_pending:
            self._writer_wake_pending = True
            self._gl.call_soon(self._wake_writer)

    def _teardown(self) -> None:
        if self._clean_end and not self._bidi:
            # a server stream that ended normally: the call is done (EOF), or its
            # reader finishes it (after `is_last`), so a cancel would only cost a
            # loop wake-up
            return
        try:
            self._gl.call_soon(self._cancel_on_loop)
        except RuntimeError:  # loop already closed at shutdown
            pass


# A memory channel that never blocks its sender: used where the credits above already
# bound how much can be queued.
def unbounded_channel[T]() -> tuple[trio.MemorySendChannel[T], trio.MemoryReceiveChannel[T]]:
    return trio.open_memory_channel[T](math.inf)
