"""The plugin side of a process plugin: go-plugin handshake + ProviderService.

`serve(provider)` makes a Python plugin indistinguishable, on the wire, from one
built with AOG's Go SDK: it checks the magic cookie, listens on a unix socket (or
TCP within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT), prints the one handshake line on
stdout, and serves `protocol.ProviderService` plus go-plugin's health (`plugin`),
GRPCController (Shutdown), GRPCStdio and GRPCBroker. Business errors go back in
`code`/`message` with AOG's codes, never as gRPC status errors.

Why one module of this size, for now: the servicer's three call shapes share the event
batching, framing and cancellation written here; splitting them apart (handshake already
lives in `rpc/handshake.py`) is the next step, not yet done.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aogstream import manifest as m
from aogstream.rpc.gen import (
    grpc_broker_pb2_grpc,
    grpc_controller_pb2,
    grpc_controller_pb2_grpc,
    grpc_stdio_pb2_grpc,
    provider_pb2_grpc,
)
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.handshake import (
    MULTIPLEX_ENV,
    HandshakeError,
    check_cookie,
    format_handshake,
)
from aogstream.rpc.wire import MAX_BATCH_BYTES, batch_limit
from aogstream.sdk.provider import (
    BidiMessage,
    BidirectionalPlugin,
    LocalPluginProvider,
    PluginProvider,
    RemotePluginProvider,
    StreamablePlugin,
    StreamChunk,
)

log = logging.getLogger("aogstream.sdk")

SSE_METADATA = {"content-type": "text/event-stream"}
# After the host's stream reads EOF, wait this long before telling plugin code the
# input ended: a cancelled call reads EOF first and is cancelled ~0.1 ms later, and
# plugin code must see the cancellation, not a clean end of input.
EOF_GRACE_S = 0.01


def error_code(exc: BaseException) -> tuple[int, str]:
    """Map an exception to AOG's (code, message)."""
    if isinstance(exc, m.PluginError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return m.ERR_CODE_UNIMPLEMENTED, str(exc) or "not implemented"
    if isinstance(exc, (ValueError, json.JSONDecodeError)):
        return m.ERR_CODE_INVALID_ARGUMENT, str(exc)
    return m.ERR_CODE_INTERNAL, f"{type(exc).__name__}: {exc}"


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


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """Translates ProviderService rpcs into calls on a PluginProvider."""

    def __init__(self, provider: PluginProvider) -> None:
        self.p = provider

    # ---- helpers -------------------------------------------------------------------

    def _local(self) -> LocalPluginProvider:
        if not isinstance(self.p, LocalPluginProvider):
            raise m.PluginError(m.ERR_CODE_INTERNAL, "not a local plugin", "")
        return self.p

    def _remote(self) -> RemotePluginProvider:
        if not isinstance(self.p, RemotePluginProvider):
            raise m.PluginError(m.ERR_CODE_INTERNAL, "not a remote plugin", "")
        return self.p

    async def _status(self, resp_type: type, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            await fn()
        except Exception as exc:
            code, msg = error_code(exc)
            log.debug("rpc failed: %s", msg, exc_info=True)
            return resp_type(code=code, message=msg)
        return resp_type(code=0, message="success")

    async def _json(
        self, resp_type: type, field: str, fn: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            value = await fn()
            data = json.dumps(value.to_dict() if hasattr(value, "to_dict") else value).encode()
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            return resp_type(code=code, message=msg)
        return resp_type(code=0, message="success", **{field: data})

    # ---- common --------------------------------------------------------------------

    async def GetManifest(self, request: Any, context: Any) -> pb.GetManifestResponse:  # noqa: N802
        if self.p.manifest is None:
            return pb.GetManifestResponse(code=m.ERR_CODE_INTERNAL, message="plugin not initialized")
        data = json.dumps(self.p.manifest.to_dict()).encode()
        return pb.GetManifestResponse(code=0, message="success", manifest_json=data)

    async def InvokeService(  # noqa: N802
        self, request: pb.InvokeServiceRequest, context: Any
    ) -> pb.InvokeServiceResponse:
        try:
            data = await self.p.invoke_service(
                request.service_name, request.auth_info, request.request_data
            )
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            return pb.InvokeServiceResponse(code=code, message=msg)
        return pb.InvokeServiceResponse(code=0, message="success", response_data=data)

    async def InvokeServiceStream(  # noqa: N802
        self, request: pb.InvokeServiceRequest, context: grpc.aio.ServicerContext
    ) -> None:
        if not isinstance(self.p, StreamablePlugin):
            await context.write(
                pb.InvokeServiceStreamResponse(
                    code=m.ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED,
                    message="plugin does not support streaming",
                    is_final=True,
                )
            )
            return
        it = self.p.invoke_service_stream(
            request.service_name, request.auth_info, request.request_data
        )
        await _relay_stream(
            it, context, request.service_name, batch_limit(context.invocation_metadata())
        )

    async def InvokeServiceBidi(  # noqa: N802
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.is_first or not first.service_name:
            await context.write(
                pb.InvokeServiceBidiResponse(
                    code=m.ERR_CODE_INVALID_ARGUMENT,
                    message="first message must set is_first and service_name",
                )
            )
            return
        if not isinstance(self.p, BidirectionalPlugin):
            await context.write(
                pb.InvokeServiceBidiResponse(
                    code=m.ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED,
                    message="plugin does not support bidirectional streaming",
                )
            )
            return

        queue: asyncio.Queue[BidiMessage | None] = asyncio.Queue(maxsize=64)
        if first.data or first.message_type:
            queue.put_nowait(
                BidiMessage(first.data, first.message_type or "text", dict(first.metadata))
            )

        async def pump() -> None:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    await asyncio.sleep(EOF_GRACE_S)
                    await queue.put(None)
                    return
                await queue.put(BidiMessage(msg.data, msg.message_type, dict(msg.metadata)))

        async def incoming() -> AsyncIterator[BidiMessage]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        async def send(out: BidiMessage) -> None:
            await context.write(
                pb.InvokeServiceBidiResponse(
                    code=0, data=out.data, message_type=out.message_type,
                    metadata=out.metadata,
                )
            )

        pump_task = asyncio.ensure_future(pump())
        try:
            await self.p.invoke_service_bidirectional(
                first.service_name,
                first.metadata.get("ws_conn_id", ""),
                first.auth_info,
                incoming(),
                send,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            log.warning("bidi session of %s failed: %s", first.service_name, msg)
            with contextlib.suppress(Exception):
                await context.write(pb.InvokeServiceBidiResponse(code=code, message=msg))
        finally:
            pump_task.cancel()

    async def HealthCheck(self, request: Any, context: Any) -> pb.HealthCheckResponse:  # noqa: N802
        return await self._status(pb.HealthCheckResponse, self.p.health_check)

    async def GetOperateStatus(self, request: Any, context: Any) -> pb.GetOperateStatusResponse:  # noqa: N802
        return pb.GetOperateStatusResponse(status=self.p.operate_status)

    async def SetOperateStatus(  # noqa: N802
        self, request: pb.SetOperateStatusRequest, context: Any
    ) -> pb.SetOperateStatusResponse:
        self.p.operate_status = request.status
        return pb.SetOperateStatusResponse()

    # ---- remote --------------------------------------------------------------------

    async def SetAuth(self, request: pb.SetAuthRequest, context: Any) -> pb.SetAuthResponse:  # noqa: N802
        async def run() -> None:
            await self._remote().set_auth(request.auth_type, dict(request.credentials))

        return await self._status(pb.SetAuthResponse, run)

    async def ValidateAuth(self, request: Any, context: Any) -> pb.ValidateAuthResponse:  # noqa: N802
        return await self._status(
            pb.ValidateAuthResponse, lambda: self._remote().validate_auth()
        )

    async def RefreshAuth(self, request: Any, context: Any) -> pb.RefreshAuthResponse:  # noqa: N802
        return await self._status(pb.RefreshAuthResponse, lambda: self._remote().refresh_auth())

    # ---- local: engine -------------------------------------------------------------

    async def StartEngine(  # noqa: N802
        self, request: pb.StartEngineRequest, context: Any
    ) -> pb.StartEngineResponse:
        return await self._status(
            pb.StartEngineResponse, lambda: self._local().start_engine(request.mode)
        )

    async def StopEngine(self, request: Any, context: Any) -> pb.StopEngineResponse:  # noqa: N802
        return await self._status(pb.StopEngineResponse, lambda: self._local().stop_engine())

    async def GetConfig(self, request: Any, context: Any) -> pb.GetConfigResponse:  # noqa: N802
        return await self._json(
            pb.GetConfigResponse, "config_json", lambda: self._local().get_config()
        )

    async def CheckEngine(self, request: Any, context: Any) -> pb.CheckEngineResponse:  # noqa: N802
        try:
            installed = await self._local().check_engine()
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            return pb.CheckEngineResponse(code=code, message=msg)
        return pb.CheckEngineResponse(code=0, message="success", installed=bool(installed))

    async def InstallEngine(  # noqa: N802
        self, request: pb.InstallEngineRequest, context: Any
    ) -> pb.InstallEngineResponse:
        return await self._status(
            pb.InstallEngineResponse, lambda: self._local().install_engine(request.cover)
        )

    async def InitEnv(self, request: Any, context: Any) -> pb.InitEnvResponse:  # noqa: N802
        return await self._status(pb.InitEnvResponse, lambda: self._local().init_env())

    async def UpgradeEngine(self, request: Any, context: Any) -> pb.UpgradeEngineResponse:  # noqa: N802
        return await self._status(
            pb.UpgradeEngineResponse, lambda: self._local().upgrade_engine()
        )

    # ---- local: models -------------------------------------------------------------

    async def PullModel(self, request: pb.PullModelRequest, context: Any) -> pb.PullModelResponse:  # noqa: N802
        async def run() -> m.ProgressResponse:
            req = m.PullModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            return await self._local().pull_model(req)

        return await self._json(pb.PullModelResponse, "response_json", run)

    async def PullModelStream(  # noqa: N802
        self, request: pb.PullModelStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            req = m.PullModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            async for event in self._local().pull_model_stream(req):
                data = json.dumps(event.to_dict() if hasattr(event, "to_dict") else event)
                await context.write(pb.PullModelStreamResponse(code=0, data=data.encode()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            await context.write(
                pb.PullModelStreamResponse(
                    code=code, message=msg, data=json.dumps({"error": msg}).encode()
                )
            )

    async def DeleteModel(  # noqa: N802
        self, request: pb.DeleteModelRequest, context: Any
    ) -> pb.DeleteModelResponse:
        async def run() -> None:
            req = m.DeleteModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            await self._local().delete_model(req)

        return await self._status(pb.DeleteModelResponse, run)

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:  # noqa: N802
        return await self._json(
            pb.ListModelsResponse, "response_json", lambda: self._local().list_models()
        )

    async def LoadModel(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:  # noqa: N802
        async def run() -> None:
            req = m.LoadModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            await self._local().load_model(req)

        return await self._status(pb.LoadModelResponse, run)

    async def UnloadModel(  # noqa: N802
        self, request: pb.UnloadModelRequest, context: Any
    ) -> pb.UnloadModelResponse:
        async def run() -> None:
            req = m.UnloadModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            await self._local().unload_model(req)

        return await self._status(pb.UnloadModelResponse, run)

    async def GetRunningModels(self, request: Any, context: Any) -> pb.GetRunningModelsResponse:  # noqa: N802
        return await self._json(
            pb.GetRunningModelsResponse, "response_json",
            lambda: self._local().get_running_models(),
        )

    async def GetVersion(self, request: pb.GetVersionRequest, context: Any) -> pb.GetVersionResponse:  # noqa: N802
        return await self._json(
            pb.GetVersionResponse, "response_json", lambda: self._local().get_version()
        )


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


async def _relay_stream(
    it: AsyncIterator[_Item], context: grpc.aio.ServicerContext, service: str, limit: int
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


class _Controller(grpc_controller_pb2_grpc.GRPCControllerServicer):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    async def Shutdown(self, request: Any, context: Any) -> grpc_controller_pb2.Empty:  # noqa: N802
        log.info("host asked the plugin to shut down")
        asyncio.get_running_loop().call_later(0.05, self._stop.set)
        return grpc_controller_pb2.Empty()


class _Stdio(grpc_stdio_pb2_grpc.GRPCStdioServicer):
    """go-plugin's stdio mirror. Our output goes to stderr, which the host already
    reads, so the stream stays open and empty until shutdown."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    async def StreamStdio(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._stop.wait()
        return
        yield  # pragma: no cover - makes this an async generator


class _Broker(grpc_broker_pb2_grpc.GRPCBrokerServicer):
    """Accepts the broker stream and offers no brokered services."""

    async def StartStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for _ in request_iterator:
            pass
        return
        yield  # pragma: no cover


def find_plugin_dir(start: Path | None = None) -> Path:
    """The plugin root: the working directory if it holds a manifest (AOG starts
    plugins there), else the nearest parent of the main script that does."""
    candidates = [Path.cwd()]
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if start is not None:
        candidates.insert(0, start)
    if main is not None:
        candidates.extend(list(main.parents)[:6])
    for c in candidates:
        if (c / "plugin.yaml").exists() or (c / "plugin.json").exists():
            return c
    raise FileNotFoundError("no plugin.yaml found in the working directory or above the plugin")


def _listen(server: grpc.aio.Server) -> tuple[str, str]:
    """Bind a listener the way go-plugin does: a private unix socket, or TCP."""
    network = os.environ.get("AOGSTREAM_PLUGIN_NETWORK") or (
        "tcp" if sys.platform == "win32" else "unix"
    )
    if network == "unix":
        base = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or None
        path = os.path.join(tempfile.mkdtemp(prefix="plugin", dir=base), "plugin.sock")
        server.add_insecure_port(f"unix:{path}")
        return "unix", path
    lo = int(os.environ.get("PLUGIN_MIN_PORT") or 0)
    hi = int(os.environ.get("PLUGIN_MAX_PORT") or 0)
    ports = range(lo, hi + 1) if lo and hi >= lo else [0]
    for port in ports:
        try:
            bound = server.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            continue
        if bound:
            return "tcp", f"127.0.0.1:{bound}"
    raise RuntimeError(f"no free port in {lo}..{hi}")


async def _watch_parent(stop: asyncio.Event) -> None:
    """Exit when the host dies without saying so (e.g. kill -9): no orphan engines."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("host process went away; shutting down")
            stop.set()


def _tune_gc() -> None:
    """Keep the collector off the stream path once the plugin has started.

    Everything allocated at start-up (modules, protos, the provider) lives as long as
    the process, so it is frozen out of every later collection, and the young
    generation is collected after 50,000 allocations instead of 700: collection
    pauses, not CPU, set the tail latency of a plugin serving many streams.

    The gateway's serving processes use the same policy (`aogstream.serving.process_setup`);
    this is a copy, not an import, because `sdk/` may depend only on `rpc/` and the
    manifest (a plugin never imports the gateway).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


async def _serve(provider: PluginProvider, handshake_fd: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        # Ctrl-C reaches the whole process group; the host decides when we die.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
        ]
    )
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(ProviderServicer(provider), server)
    hs = health.aio.HealthServicer()
    await hs.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    grpc_controller_pb2_grpc.add_GRPCControllerServicer_to_server(_Controller(stop), server)
    grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(_Stdio(stop), server)
    grpc_broker_pb2_grpc.add_GRPCBrokerServicer_to_server(_Broker(), server)
    network, address = _listen(server)
    try:
        await server.start()
        line = format_handshake(network, address,
                                multiplex_asked=os.environ.get(MULTIPLEX_ENV) == "true")
        os.write(handshake_fd, (line + "\n").encode())
        _tune_gc()
        watcher = asyncio.ensure_future(_watch_parent(stop))
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            await server.stop(grace=1.0)
            with contextlib.suppress(Exception):
                if isinstance(provider, LocalPluginProvider):
                    await provider.stop_engine()
    finally:
        if network == "unix":
            _remove_socket(address)


def _remove_socket(address: str) -> None:
    """The unix socket and the private folder `_listen` made for it (gRPC may already
    have removed the socket, so each step is tried on its own)."""
    with contextlib.suppress(OSError):
        os.unlink(address)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(address))


def serve(provider: PluginProvider) -> None:
    """Run `provider` as a plugin process until the host shuts it down.

    Exits with status 1 and a hint when started by hand (no magic cookie), as Go
    plugins do.
    """
    try:
        check_cookie(os.environ)
    except HandshakeError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)
    # Only the handshake may go to stdout: point everything else at stderr, which
    # the host logs line by line.
    handshake_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if provider.manifest is None:
        try:
            provider.manifest = m.load_manifest(find_plugin_dir())
        except Exception as exc:  # noqa: BLE001 - a plugin can run without it
            log.warning("could not load plugin manifest: %s", exc)
    try:
        asyncio.run(_serve(provider, handshake_fd))
    except Exception:  # noqa: BLE001 - report it and exit non-zero, as Go plugins do
        traceback.print_exc()
        sys.exit(1)
