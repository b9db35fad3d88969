"""One call through the gateway: a channel pair, a mode and a cancel scope.

Every path (JSON, SSE, NDJSON, WebSocket on the north side; providers, such as
plugin processes, on the south side) meets here, so timeouts, cancellation and
errors behave the same everywhere:

* the client's task owns the invocation (`async with open_invocation(...)`), and the
  invocation's nursery owns the provider call (a unary call runs in the client's task
  itself, before the block): leaving the block for any reason cancels the provider,
  which cancels its gRPC call, which the plugin sees;
* channels are bounded, so a slow client slows the provider instead of buffering;
* the deadline is a cancel scope (AOG's policy, `TimeoutPolicy`), and the same
  number is handed to the provider so it can pass it on as `grpc-timeout`.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from aogstream import errors, manifest

if TYPE_CHECKING:
    from aogstream import manifest as m

log = logging.getLogger(__name__)

RESPONSE_BUFFER = 16
REQUEST_BUFFER = 16


class PluginState(enum.StrEnum):
    """Where a provider is in its life (`Provider.state`): only RUNNING serves. A process
    plugin goes STARTING → RUNNING, RESTARTING after a crash, STOPPED when asked, FAILED
    when it gave up. UNLOADED is a listing's word for a plugin folder not yet loaded."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"
    UNLOADED = "unloaded"


class Mode(enum.StrEnum):
    UNARY = "unary"
    STREAM = "stream"
    BIDI = "bidi"


@attrs.frozen
class Frame:
    """One message of a bidirectional session (a WebSocket frame in effect)."""

    data: bytes
    kind: str = "text"  # text, binary, ping, pong, close
    metadata: dict[str, str] = attrs.field(factory=dict, eq=False)


type Response = bytes | list[bytes] | Frame
"""What a provider emits, by mode: UNARY one `bytes` document; STREAM event payloads,
each `bytes` or a batch (`list[bytes]`) of what arrived together; BIDI `Frame`s."""

# The mark `attach_pipe` puts in the response channel: the frames that follow come
# through the provider's pipe (a Frame only by type: it never reaches a client).
_PIPE_ATTACHED = Frame(b"", "pipe")


@runtime_checkable
class FramePipe(Protocol):
    """A provider's own path for a bidi session's frames (`Invocation.attach_pipe`).

    A realtime session carries a frame every 20 ms each way, and through the channel
    pair each frame costs a task hop on either side of the provider's relay task (the
    north side's task hands it to the channel, the provider's task takes it out and
    forwards it). A provider whose session can take and give frames from the north
    side's own task attaches a pipe once its session is open, and the frames skip
    those hops; nothing else changes for the north side (`send`, `frames()`).
    """

    async def send(self, frame: Frame) -> None:
        """Forward a client frame (in the north side's task); waits while the
        session's window is full, and drops the frame once the session is over."""
        ...

    def send_nowait(self, frame: Frame) -> None:
        """Forward a client frame that fits in the session's window at once (the
        frames queued before the pipe was attached)."""
        ...

    async def send_many(self, frames: list[Frame]) -> None:
        """Forward client frames that arrived together (in the north side's task), in
        order, so that the session may pack them into one message."""
        ...

    def close(self) -> None:
        """The client finished sending (half-close)."""
        ...

    async def receive(self) -> Frame:
        """The provider's next frame (in the north side's task). `trio.EndOfChannel`
        when the session is over, however it ended: the provider's own task then ends
        the invocation (with its error, if any), which ends `frames()`."""
        ...


class Frames:
    """The provider's frames of a bidi session, in order: `async for frame in
    inv.frames()` ends when the provider does.

    The response channel carries every mode's items; this reader is the bidi side's
    typed view of it, so a session's code handles `Frame`s only. A provider that emits
    anything else in a bidi session is broken, and the session ends with its error
    instead of a client seeing half a frame.
    """

    __slots__ = ("_inv",)

    def __init__(self, inv: Invocation) -> None:
        self._inv = inv

    def __aiter__(self) -> Frames:
        return self

    async def __anext__(self) -> Frame:
        inv = self._inv
        while True:
            pipe = inv._reading_pipe
            if pipe is not None:
                try:
                    return await pipe.receive()
                except trio.EndOfChannel:
                    # over: the provider's task ends the invocation (and closes
                    # the channel) with its outcome
                    inv._reading_pipe = None
            try:
                item = await inv.responses.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            if item is _PIPE_ATTACHED:
                inv._reading_pipe = inv._pipe
                continue
            break
        if not isinstance(item, Frame):
            raise errors.GatewayError(
                errors.PLUGIN_INTERNAL,
                f"{self._inv.service}: the provider sent {type(item).__name__} in a "
                "bidirectional session, where only frames belong",
            )
        return item


@attrs.define
class TimeoutPolicy:
    """AOG's timeout rules, with the defaults configurable (tests shrink them).

    A service's manifest `timeout`: unset/0 → the default for the mode; N > 0 → N
    seconds; N < 0 → no deadline. Bidirectional sessions never get a deadline. This is
    the one place the rule lives; the defaults are AOG's (`manifest.DEFAULT_*_TIMEOUT_S`).
    """

    unary: float | None = float(manifest.DEFAULT_UNARY_TIMEOUT_S)
    stream: float | None = float(manifest.DEFAULT_STREAM_TIMEOUT_S)

    def for_call(self, mode: Mode, manifest_timeout: int | None) -> float | None:
        if mode is Mode.BIDI:
            return None
        if manifest_timeout and manifest_timeout > 0:
            return float(manifest_timeout)
        if manifest_timeout and manifest_timeout < 0:
            return None
        return self.unary if mode is Mode.UNARY else self.stream


class Provider(Protocol):
    """The south side: what fulfils invocations (the transport, in httpx's sense).

    A `Route` holds one; the gateway and everything north of it (the doors, SSE,
    WebSockets) use this interface only and never learn which kind serves a call.
    Implementations: `host.connection.ProcessProvider` (a plugin process over gRPC),
    native plugins in process (later), `testing.FunctionProvider` (a function, for
    unit tests).

    Ownership: the provider object lives as long as the gateway knows the plugin (a
    process plugin keeps one across restarts and swaps its connection underneath);
    whoever created it (a supervisor, a worker's follower, a test) owns its lifecycle.
    The gateway only reads it and calls `serve`.

    Cancellation: `serve` runs inside the invocation's cancel scope, in a task of the
    invocation's nursery (`open_invocation`; a unary call in the caller's task); the
    client leaving, the deadline, or `inv.fail()` cancels it, and the provider must
    then stop its work at once (a process plugin cancels its gRPC call). It never
    outlives that scope: no task it starts may run past its return.
    """

    @property
    def name(self) -> str:
        """Unique among providers; routing names it (the store's `flavor` column)."""
        ...

    @property
    def kind(self) -> str:
        """The kind of provider ("process", later "native"), for listings and logs;
        never a reason to branch."""
        ...

    @property
    def manifest(self) -> m.PluginManifest:
        """What it offers: its services (with their definitions and timeouts), its
        type (local or remote) and the folder its own flavor templates may be in."""
        ...

    @property
    def state(self) -> str:
        """Whether it can serve now: "running"; else "starting", "restarting",
        "stopped" or "failed" (a `PluginState`; routing tries running providers first)."""
        ...

    async def serve(self, inv: Invocation) -> None:
        """Fulfil `inv` in its mode, ending when the call is complete.

        * UNARY: read `inv.request`, `emit` one response (bytes);
        * STREAM: read `inv.request`, `emit` event payloads as they come: bytes, or a
          batch (`list[bytes]`, an `sse.framing.SseEvents` when the events can be
          relayed as they arrived) of what arrived together, so the writer sends them
          in one write;
        * BIDI: read client frames from `inv.incoming()` (the first one opens the
          session, `inv.metadata` merged under its metadata), `emit` `Frame`s.

        Pass `inv.remaining()` on as the provider's own deadline. Failures are raised
        as `errors.GatewayError` (status 4xx: the request is wrong, so no fallback;
        5xx: provider trouble, the gateway may try the next provider).
        """
        ...

    async def health(self, timeout: float | None = 5.0) -> None:
        """Return when the provider answers as healthy; raise `GatewayError` otherwise."""
        ...

    async def models(self, timeout: float | None = 30.0) -> list[m.ModelInfo]:
        """The models it has now (a local plugin's downloaded ones), or `GatewayError`."""
        ...


@runtime_checkable
class FormatSpeaker(Protocol):
    """A provider that serves a request of another API format as is (a native executor
    declaring that format): `serve` then gets the client's body with
    `inv.metadata["format"]` naming the format, and answers in it (a unary body, or
    the format's stream events). Optional: other providers get the chat form."""

    def speaks(self, fmt: str) -> bool:
        """Whether a request of format `fmt` reaches it untranslated."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that counts a request's input tokens itself (a native executor's
    `executor.count_tokens`); `/v1/messages/count_tokens` asks it instead of
    estimating. Optional: providers without it are estimated for."""

    async def count_tokens(self, fmt: str, body: dict[str, Any],
                           chat: dict[str, Any]) -> int:
        """Input tokens of `body` (a request of format `fmt`, `chat` its chat form);
        `GatewayError` when the provider cannot say."""
        ...


_NO_ANSWER: Any = object()  # a unary call's answer slot before the provider emits


class Invocation:
    """The state of one call. Created by `open_invocation`, never by hand."""

    def __init__(
        self,
        service: str,
        mode: Mode,
        request: bytes,
        *,
        timeout: float | None,
        auth_info: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.mode = mode
        self.request = request
        self.timeout = timeout
        self.auth_info = auth_info
        self.metadata = metadata or {}
        self.error: errors.GatewayError | None = None
        self.deadline = math.inf if timeout is None else trio.current_time() + timeout
        self.cancel_scope = trio.CancelScope(deadline=self.deadline)
        # a unary call's one answer waits in a slot, not a channel: the channel costs
        # as much to make as the rest of the invocation, and reading a channel is a
        # schedule point even when the answer is there (`result`); it is made only if
        # something reads `responses`
        self._answer: Any = _NO_ANSWER
        self._ended = False
        # the provider's responses, in order (a unary call's: see above)
        self._out: tuple[trio.MemorySendChannel[Response],
                         trio.MemoryReceiveChannel[Response]] | None = \
            None if mode is Mode.UNARY else trio.open_memory_channel[Response](RESPONSE_BUFFER)
        # the client's frames: a bidi session's, made on first use for the other modes
        # (which never have any; a channel costs as much as the rest of the invocation)
        self._in: tuple[trio.MemorySendChannel[Frame], trio.MemoryReceiveChannel[Frame]] \
            | None = trio.open_memory_channel[Frame](REQUEST_BUFFER) \
            if mode is Mode.BIDI else None
        self._in_closed = False
        self._inline = False  # a unary call served in its caller's task (open_invocation)
        self._pipe: FramePipe | None = None  # bidi: see `attach_pipe`
        self._reading_pipe: FramePipe | None = None  # what `Frames` reads from now

    # ---- used by the south side (providers) ----------------------------------------

    async def emit(self, item: Response) -> None:
        """Hand one response (a JSON document, a batch of stream events, or a Frame in
        bidi) to the client.

        While the bounded channel has room this hands the item over without a
        schedule point: the writer is woken either way, and the provider reaches
        its next wait (for the next message) at once, which saves a task step per
        streamed batch. A full channel waits as usual (backpressure), and a
        cancelled call still stops here.
        """
        out = self._out
        if out is None:  # unary: the first answer is the answer
            if self._answer is _NO_ANSWER:
                self._answer = item
            if self._inline:
                self.cancel_scope.cancel()  # as below
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        try:
            out[0].send_nowait(item)
        except trio.WouldBlock:
            await out[0].send(item)
        else:
            if self._inline:
                # the answer is in: what the provider still does is cancelled at its
                # next wait, as when the caller takes the answer and leaves the block
                self.cancel_scope.cancel()
                return
            await trio.lowlevel.checkpoint_if_cancelled()  # yields only if cancelled

    def incoming(self) -> trio.MemoryReceiveChannel[Frame]:
        """The client's frames of a bidi session, in order."""
        return self._input()[1]

    def _input(self) -> tuple[trio.MemorySendChannel[Frame], trio.MemoryReceiveChannel[Frame]]:
        if self._in is None:
            self._in = trio.open_memory_channel[Frame](0)
            if self._in_closed:
                self._in[0].close()
        return self._in

    def _close_input(self) -> None:
        self._in_closed = True
        if self._in is not None:
            self._in[0].close()

    def attach_pipe(self, pipe: FramePipe) -> None:
        """From now on the client's frames go to `pipe` and the provider's frames come
        from it, both in the north side's task (see `FramePipe`); call it once the
        session is open and before emitting anything. The client frames still queued
        go first, so the order holds. The provider's task then waits for the session
        to end and ends the invocation as usual (returning, or raising its error);
        the invocation's cancel scope still cancels it."""
        if self._pipe is not None:
            raise RuntimeError("a pipe is already attached")
        while True:
            try:
                frame = self._input()[1].receive_nowait()
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                pipe.close()
                break
            pipe.send_nowait(frame)
        try:
            self._out_channel()[0].send_nowait(_PIPE_ATTACHED)
        except trio.WouldBlock:
            raise RuntimeError("attach_pipe after emitting frames") from None
        self._pipe = pipe

    def remaining(self) -> float | None:
        """Seconds left before the deadline (for the provider's own `timeout=`)."""
        if self.deadline == math.inf:
            return None
        return max(0.0, self.deadline - trio.current_time())

    def fail(self, error: errors.GatewayError) -> None:
        """End the call at once with `error` (e.g. its plugin process died)."""
        if self.error is None:
            self.error = error
        self.cancel_scope.cancel()

    # ---- used by the north side (clients) ------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Forward one client frame to the provider (bidi only)."""
        pipe = self._pipe
        if pipe is not None:
            await pipe.send(frame)
        else:
            await self._input()[0].send(frame)

    async def send_many(self, frames: list[Frame]) -> None:
        """Forward client frames that arrived together, in order (bidi only): through
        a pipe they are queued together, so the session may pack them."""
        pipe = self._pipe
        if pipe is not None:
            await pipe.send_many(frames)
        else:
            send = self._input()[0]
            for frame in frames:
                await send.send(frame)

    def close_input(self) -> None:
        """The client finished sending (half-close)."""
        if self._pipe is not None:
            self._pipe.close()
        self._close_input()

    def frames(self) -> Frames:
        """The provider's frames of a bidi session (see `Frames`)."""
        return Frames(self)

    def timeout_error(self) -> errors.GatewayError:
        """The error of a call that passed its deadline. One wording whoever notices
        first: this invocation's cancel scope, or a provider whose transport carries
        the same deadline (a process plugin's call fails DEADLINE_EXCEEDED at the same
        instant, and either may be seen first)."""
        return errors.GatewayError(
            errors.PLUGIN_TIMEOUT,
            f"{self.service}: no complete answer within {self.timeout:g} s "
            f"(the service's timeout; set `timeout` in the plugin manifest to "
            f"change it, -1 for none)",
        )

    @property
    def responses(self) -> trio.MemoryReceiveChannel[Response]:
        """The provider's responses, in order; a unary call's channel is made at the
        first read (its answer, if already emitted, waits in it)."""
        return self._out_channel()[1]

    def _out_channel(self) -> tuple[trio.MemorySendChannel[Response],
                                    trio.MemoryReceiveChannel[Response]]:
        out = self._out
        if out is None:
            out = self._out = trio.open_memory_channel[Response](RESPONSE_BUFFER)
            if self._answer is not _NO_ANSWER:
                out[0].send_nowait(self._answer)
                self._answer = _NO_ANSWER
            if self._ended:
                out[0].close()
        return out

    async def result(self) -> bytes:
        """The single response of a unary call, or the error that ended it."""
        if self._out is None and (self._ended or self._answer is not _NO_ANSWER):
            # unary, answered or ended: no channel, and no schedule point to take it
            item = self._answer
            if item is _NO_ANSWER:
                raise self.error or errors.GatewayError(
                    errors.PLUGIN_SERVICE_ERROR,
                    f"{self.service}: the provider ended without an answer",
                )
            assert isinstance(item, bytes)
            return item
        try:
            item = await self.responses.receive()
        except trio.EndOfChannel:
            raise self.error or errors.GatewayError(
                errors.PLUGIN_SERVICE_ERROR,
                f"{self.service}: the provider ended without an answer",
            ) from None
        assert isinstance(item, bytes)
        return item

    # ---- internal -------------------------------------------------------------------

    async def _drive(self, provider: Provider) -> None:
        try:
            with self.cancel_scope:
                try:
                    await provider.serve(self)
                except errors.GatewayError as exc:
                    if self.error is None:
                        self.error = exc
                except trio.BrokenResourceError:
                    pass  # the client stopped listening: nothing to report
                except Exception as exc:
                    log.exception("provider %s failed on %s", provider.name, self.service)
                    if self.error is None:
                        self.error = errors.GatewayError(
                            errors.PLUGIN_INTERNAL,
                            f"{provider.name}: unexpected failure while serving "
                            f"{self.service}: {exc}",
                        )
            if (
                self.cancel_scope.cancelled_caught
                and self.error is None
                and trio.current_time() >= self.deadline
            ):
                self.error = self.timeout_error()
        finally:
            self._ended = True
            if self._out is not None:
                self._out[0].close()


@asynccontextmanager
async def open_invocation(
    provider: Provider,
    service: str,
    mode: Mode,
    request: bytes,
    *,
    timeout: float | None,
    auth_info: str = "",
    metadata: dict[str, str] | None = None,
) -> AsyncIterator[Invocation]:
    """Start `provider` on a new invocation; the block's exit cancels whatever is left.

    A unary call is served in the caller's own task before the block runs (the block
    can only wait for its one answer anyway): no nursery and no task per call.
    Cancellation is the same: the caller's cancellation reaches the provider directly,
    the deadline is the invocation's scope, and what the provider still does after its
    answer is cancelled at its next wait (`emit`)."""
    inv = Invocation(
        service, mode, request, timeout=timeout, auth_info=auth_info, metadata=metadata
    )
    if mode is Mode.UNARY:
        inv._inline = True
        try:
            await inv._drive(provider)
            yield inv
        finally:
            inv.cancel_scope.cancel()
            inv._close_input()
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inv._drive, provider)
        try:
            yield inv
        finally:
            inv.cancel_scope.cancel()
            inv._close_input()
