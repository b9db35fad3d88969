"""One call through the gateway: a channel pair, a mode and a cancel scope.

Every path (JSON, SSE, NDJSON, WebSocket on the north side; plugin processes on the
south side) meets here, so timeouts, cancellation and errors behave the same
everywhere:

* the client's task owns the invocation (`async with open_invocation(...)`), and the
  invocation's nursery owns the provider call: leaving the block for any reason
  cancels the provider, which cancels its gRPC call, which the plugin sees;
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
from typing import Protocol

import attrs
import trio

from aogstream import errors

log = logging.getLogger(__name__)

RESPONSE_BUFFER = 16
REQUEST_BUFFER = 16


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


@attrs.define
class TimeoutPolicy:
    """AOG's timeout rules, with the defaults configurable (tests shrink them).

    A service's manifest `timeout`: unset/0 → the default for the mode; N > 0 → N
    seconds; N < 0 → no deadline. Bidirectional sessions never get a deadline.
    """

    unary: float | None = 60.0
    stream: float | None = 300.0

    def for_call(self, mode: Mode, manifest_timeout: int | None) -> float | None:
        if mode is Mode.BIDI:
            return None
        if manifest_timeout and manifest_timeout > 0:
            return float(manifest_timeout)
        if manifest_timeout and manifest_timeout < 0:
            return None
        return self.unary if mode is Mode.UNARY else self.stream


class Provider(Protocol):
    """The south side: something that can fulfil an invocation (a plugin process...)."""

    name: str

    async def serve(self, inv: Invocation) -> None:
        """Read `inv.request` (and `inv.incoming()` for bidi), `emit` responses."""
        ...


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
        self._out_send, self.responses = trio.open_memory_channel[bytes | Frame](
            RESPONSE_BUFFER
        )
        self._in_send, self._in_recv = trio.open_memory_channel[Frame](
            REQUEST_BUFFER if mode is Mode.BIDI else 0
        )

    # ---- used by the south side (providers) ----------------------------------------

    async def emit(self, item: bytes | Frame) -> None:
        """Hand one response (a JSON document, or a Frame in bidi) to the client.

        While the bounded channel has room this hands the item over without a
        schedule point: the writer is woken either way, and the provider reaches
        its next wait (for the next message) at once, which saves a task step per
        streamed batch. A full channel waits as usual (backpressure), and a
        cancelled call still stops here.
        """
        try:
            self._out_send.send_nowait(item)
        except trio.WouldBlock:
            await self._out_send.send(item)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()  # yields only if cancelled

    def incoming(self) -> trio.MemoryReceiveChannel[Frame]:
        """The client's frames of a bidi session, in order."""
        return self._in_recv

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
        await self._in_send.send(frame)

    def close_input(self) -> None:
        """The client finished sending (half-close)."""
        self._in_send.close()

    async def result(self) -> bytes:
        """The single response of a unary call, or the error that ended it."""
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
                self.error = errors.GatewayError(
                    errors.PLUGIN_TIMEOUT,
                    f"{self.service}: no complete answer within {self.timeout:g} s "
                    f"(the service's timeout; set `timeout` in the plugin manifest to "
                    f"change it, -1 for none)",
                )
        finally:
            self._out_send.close()


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
    """Start `provider` on a new invocation; the block's exit cancels whatever is left."""
    inv = Invocation(
        service, mode, request, timeout=timeout, auth_info=auth_info, metadata=metadata
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inv._drive, provider)
        try:
            yield inv
        finally:
            inv.cancel_scope.cancel()
            inv._in_send.close()
