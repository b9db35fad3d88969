"""A process plugin's connection, as a `Provider`: the calls it serves over gRPC.

Keeping a plugin process alive and serving calls on it are two jobs with two owners.
The process belongs to a keeper: `PluginSupervisor` in the primary (launch, handshake,
restart with backoff, kill) or `AttachedPlugin` in a worker (follows the primary's
view and dials the socket it reports). Each keeper owns one `ProcessProvider` for as
long as it knows the plugin, and hands it a fresh `PluginClient` each time the plugin
comes up (`attach`) and takes it away when it goes (`detach`). Routes hold the
provider, so a restart never changes what the gateway routes to.
"""

from __future__ import annotations

import collections
from typing import Protocol

import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.host.client import BidiSession, PluginClient, unpack_response
from aogstream.invocation import Frame, Invocation, Mode
from aogstream.rpc.bridge import RpcFailure


class PluginKeeper(Protocol):
    """What a `ProcessProvider` asks of whoever keeps its plugin's process."""

    @property
    def state(self) -> str:
        """Whether the plugin serves: "running" (see `invocation.Provider.state`)."""
        ...

    @property
    def last_error(self) -> str:
        """Why it is not running, when known (quoted in "not running" errors)."""
        ...

    async def exited(self) -> tuple[bool, int | None]:
        """A call on the plugin broke: did its process die under it (and with which
        exit status)? May wait briefly for the process to be reaped or reported."""
        ...


def crash_error(name: str, status: int | None) -> errors.GatewayError:
    """The error of a call whose plugin process died while serving it."""
    return errors.GatewayError(
        errors.PLUGIN_UNAVAILABLE,
        f"plugin {name} exited (status {status}) while serving this request; "
        f"it is being restarted, retry in a moment",
    )


class ProcessProvider:
    """The Provider of one process plugin: its invocations over its current connection."""

    kind = "process"

    def __init__(self, manifest: m.PluginManifest, keeper: PluginKeeper) -> None:
        self.manifest = manifest
        self.name = manifest.provider.name
        self.client: PluginClient | None = None
        self._keeper = keeper
        self._active: set[Invocation] = set()

    @property
    def state(self) -> str:
        return self._keeper.state

    # ---- used by the keeper -----------------------------------------------------------

    def attach(self, client: PluginClient) -> None:
        """The plugin is up (again): serve calls over `client` from now on."""
        self.client = client

    def detach(self) -> None:
        """The plugin went away: no new calls (those in flight end on their own)."""
        self.client = None

    def fail_active(self, error: errors.GatewayError) -> None:
        """End every call in flight at once with `error` (before the keeper closes the
        channel, which would cancel them without saying why)."""
        for inv in list(self._active):
            inv.fail(error)
        self._active.clear()

    # ---- the Provider interface ---------------------------------------------------------

    def _client_or_error(self) -> PluginClient:
        if self.client is None or self.state != "running":
            last = self._keeper.last_error
            hint = f" ({last})" if last else ""
            raise errors.GatewayError(
                errors.PLUGIN_NOT_RUNNING,
                f"plugin {self.name} is not running{hint}; it is restarted automatically, "
                f"retry in a moment or check the gateway log",
            )
        return self.client

    async def health(self, timeout: float | None = 5.0) -> None:
        """The plugin's HealthCheck rpc."""
        client = self._client_or_error()
        try:
            await client.health_check(timeout=timeout)
        except (m.PluginError, RpcFailure) as exc:
            raise self._rpc_error(exc, "health check") from None

    async def models(self, timeout: float | None = 30.0) -> list[m.ModelInfo]:
        """The plugin's ListModels rpc (a local plugin's downloaded models)."""
        client = self._client_or_error()
        try:
            return (await client.list_models(timeout=timeout)).models
        except (m.PluginError, RpcFailure) as exc:
            raise self._rpc_error(exc, "ListModels") from None

    def _rpc_error(self, exc: m.PluginError | RpcFailure, what: str) -> errors.GatewayError:
        if isinstance(exc, m.PluginError):
            return errors.from_plugin_code(exc.code, exc.message, self.name)
        return errors.GatewayError(errors.PLUGIN_UNAVAILABLE, f"plugin {self.name}: {what} "
                                   f"failed: {exc.details or exc.code}")

    async def serve(self, inv: Invocation) -> None:
        client = self._client_or_error()
        self._active.add(inv)
        try:
            if inv.mode is Mode.UNARY:
                data = await client.invoke_service(
                    inv.service, inv.auth_info, inv.request, timeout=inv.remaining()
                )
                await inv.emit(data)
            elif inv.mode is Mode.STREAM:
                async with client.invoke_service_stream(
                    inv.service, inv.auth_info, inv.request, timeout=inv.remaining()
                ) as batches:
                    async for batch in batches:
                        await inv.emit(batch)
            else:
                await self._serve_bidi(client, inv)
        except m.PluginError as exc:
            raise errors.from_plugin_code(exc.code, exc.message, self.name) from None
        except RpcFailure as exc:
            if inv.error is not None:  # already failed by the crash handler
                return
            if exc.code in ("UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"):
                exited, status = await self._keeper.exited()
                if exited:
                    raise crash_error(self.name, status) from None
            if exc.code == "DEADLINE_EXCEEDED":
                raise inv.timeout_error() from None
            raise errors.GatewayError(
                errors.PLUGIN_UNAVAILABLE,
                f"plugin {self.name} failed while serving {inv.service}: {exc.details or exc.code}",
            ) from None
        finally:
            self._active.discard(inv)

    async def _serve_bidi(self, client: PluginClient, inv: Invocation) -> None:
        incoming = inv.incoming()
        first = await _first_frame(incoming)
        if first is None:
            return
        meta = dict(inv.metadata)
        meta.update(first.metadata)
        async with client.invoke_service_bidi(
            inv.service, inv.auth_info, first_data=first.data, first_type=first.kind,
            metadata=meta, batch=True,
        ) as session:
            pipe = SessionPipe(session)
            try:
                inv.attach_pipe(pipe)
                await pipe.ended.wait()
            finally:
                # the call is left (ended, or this task cancelled): a client task
                # still reading or sending through the pipe must not wait on it
                pipe.leave()
            if pipe.failure is not None:
                raise pipe.failure


class SessionPipe:
    """A plugin's bidi session as the invocation's `FramePipe`: the client's task
    sends its frames into the gRPC call and reads the plugin's frames out of it
    directly, with no relay task in between (two task hops per frame saved).

    The first end the client's task reads (EOF, a failure code, a gRPC failure)
    ends the pipe: `ended` is set, and the provider's task, waiting on it, returns
    or raises `failure`, which ends the invocation the usual way. Once ended or
    left, the client's further frames are dropped: the session has nowhere to put
    them.

    A message in which the plugin packed several frames (`rpc.wire`) is handed out
    one frame at a time, in order, before the next message is read.
    """

    __slots__ = ("_over", "_session", "_unpacked", "ended", "failure")

    def __init__(self, session: BidiSession) -> None:
        self._session = session
        self.ended = trio.Event()
        self.failure: m.PluginError | RpcFailure | None = None
        self._over = False
        self._unpacked: collections.deque[Frame] = collections.deque()

    async def send(self, frame: Frame) -> None:
        if not self._over:
            await self._session.send(frame.data, frame.kind, frame.metadata)

    def send_nowait(self, frame: Frame) -> None:
        if not self._over:
            self._session.send_nowait(frame.data, frame.kind, frame.metadata)

    async def send_many(self, frames: list[Frame]) -> None:
        # all queued before the writer is woken once: it finds them waiting together
        session = self._session
        n = 0
        try:
            for frame in frames:
                if self._over:
                    return
                session.send_nowait(frame.data, frame.kind, frame.metadata, kick=False)
                n += 1
        except trio.WouldBlock:
            pass
        finally:
            if n:
                session.kick_writer()
        for frame in frames[n:]:  # past the window: one at a time, waiting for room
            await self.send(frame)
        await trio.lowlevel.checkpoint_if_cancelled()

    def close(self) -> None:
        if not self._over:
            self._session.done_writing_nowait()

    async def receive(self) -> Frame:
        if self._over:
            raise trio.EndOfChannel
        if self._unpacked:
            return self._unpacked.popleft()
        try:
            msg = await self._session.receive()
        except trio.EndOfChannel:
            self._end(None)
            raise
        except (m.PluginError, RpcFailure) as exc:
            self._end(exc)
            raise trio.EndOfChannel from None
        # `data` is already bytes; copying the (nearly always empty) metadata map
        # only when it has entries saves most of the per-frame cost here
        if not msg.metadata:
            return Frame(msg.data, msg.message_type or "binary", {})
        packed = unpack_response(msg)
        if packed is None:
            return Frame(msg.data, msg.message_type or "binary", dict(msg.metadata))
        kind = msg.message_type or "binary"
        self._unpacked.extend([Frame(data, kind, {}) for data in packed[1:]])
        return Frame(packed[0], kind, {})

    def _end(self, failure: m.PluginError | RpcFailure | None) -> None:
        self._over = True
        self.failure = failure
        self.ended.set()

    def leave(self) -> None:
        """The provider's task leaves the call: wake a reader parked on it."""
        if not self._over:
            self._over = True
            self._session.end_reading()


async def _first_frame(incoming: trio.MemoryReceiveChannel[Frame]) -> Frame | None:
    try:
        return await incoming.receive()
    except trio.EndOfChannel:
        return None
