"""`protocol.ProviderService` served over a `PluginProvider`: one rpc, one method.

The servicer is a translation table: each rpc of AOG's ProviderService becomes a call
on the plugin's base class that declares it (`LocalPluginProvider` for engines and
models, `RemotePluginProvider` for credentials, `StreamablePlugin` and
`BidirectionalPlugin` for the two streaming shapes), and every answer carries AOG's
business code in `code`/`message` (`error_codes`), never a gRPC status. How a stream is
framed (`stream_relay`) and how a bidi session runs (`bidi_session`) live beside it;
how the process starts and talks to go-plugin lives in `server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from aogstream import manifest as m
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.gen import provider_pb2_grpc
from aogstream.rpc.wire import batch_limit
from aogstream.sdk.bidi_session import run_bidi_session
from aogstream.sdk.blocking import call_plugin, iterate_plugin, request_scope
from aogstream.sdk.error_codes import error_code
from aogstream.sdk.provider import (
    BidirectionalPlugin,
    LocalPluginProvider,
    PluginProvider,
    RemotePluginProvider,
    StreamablePlugin,
)
from aogstream.sdk.stream_relay import relay_stream

log = logging.getLogger("aogstream.sdk")


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

    async def _status[R](self, resp_type: Callable[..., R],
                         fn: Callable[[], Awaitable[Any]]) -> R:
        try:
            await fn()
        except Exception as exc:
            code, msg = error_code(exc)
            log.debug("rpc failed: %s", msg, exc_info=True)
            return resp_type(code=code, message=msg)
        return resp_type(code=0, message="success")

    async def _json[R](
        self, resp_type: Callable[..., R], field: str, fn: Callable[[], Awaitable[Any]]
    ) -> R:
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
            return pb.GetManifestResponse(code=m.ERR_CODE_INTERNAL,
                                          message="plugin not initialized")
        data = json.dumps(self.p.manifest.to_dict()).encode()
        return pb.GetManifestResponse(code=0, message="success", manifest_json=data)

    async def InvokeService(  # noqa: N802
        self, request: pb.InvokeServiceRequest, context: Any
    ) -> pb.InvokeServiceResponse:
        try:
            with request_scope():
                data = await call_plugin(self.p.invoke_service, request.service_name,
                                         request.auth_info, request.request_data)
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            return pb.InvokeServiceResponse(code=code, message=msg)
        return pb.InvokeServiceResponse(code=0, message="success", response_data=data)

    async def InvokeServiceStream(  # noqa: N802
        self, request: pb.InvokeServiceRequest,
        context: grpc.aio.ServicerContext[pb.InvokeServiceRequest, pb.InvokeServiceStreamResponse],
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
        with request_scope():
            it = iterate_plugin(self.p.invoke_service_stream(
                request.service_name, request.auth_info, request.request_data
            ))
            await relay_stream(
                it, context, request.service_name, batch_limit(context.invocation_metadata())
            )

    async def InvokeServiceBidi(  # noqa: N802
        self, request_iterator: Any,
        # the request type is Any: read() also returns grpc.aio.EOF, which the stubs omit
        context: grpc.aio.ServicerContext[Any, pb.InvokeServiceBidiResponse],
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

        with request_scope():
            await run_bidi_session(self.p, first, context)

    async def HealthCheck(self, request: Any, context: Any) -> pb.HealthCheckResponse:  # noqa: N802
        return await self._status(pb.HealthCheckResponse,
                                  lambda: call_plugin(self.p.health_check))

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
            await call_plugin(self._remote().set_auth, request.auth_type,
                              dict(request.credentials))

        return await self._status(pb.SetAuthResponse, run)

    async def ValidateAuth(self, request: Any, context: Any) -> pb.ValidateAuthResponse:  # noqa: N802
        return await self._status(
            pb.ValidateAuthResponse, lambda: call_plugin(self._remote().validate_auth)
        )

    async def RefreshAuth(self, request: Any, context: Any) -> pb.RefreshAuthResponse:  # noqa: N802
        return await self._status(pb.RefreshAuthResponse,
                                  lambda: call_plugin(self._remote().refresh_auth))

    # ---- local: engine -------------------------------------------------------------

    async def StartEngine(  # noqa: N802
        self, request: pb.StartEngineRequest, context: Any
    ) -> pb.StartEngineResponse:
        return await self._status(
            pb.StartEngineResponse,
            lambda: call_plugin(self._local().start_engine, request.mode)
        )

    async def StopEngine(self, request: Any, context: Any) -> pb.StopEngineResponse:  # noqa: N802
        return await self._status(pb.StopEngineResponse,
                                  lambda: call_plugin(self._local().stop_engine))

    async def GetConfig(self, request: Any, context: Any) -> pb.GetConfigResponse:  # noqa: N802
        return await self._json(
            pb.GetConfigResponse, "config_json", lambda: call_plugin(self._local().get_config)
        )

    async def CheckEngine(self, request: Any, context: Any) -> pb.CheckEngineResponse:  # noqa: N802
        try:
            installed = await call_plugin(self._local().check_engine)
        except Exception as exc:  # noqa: BLE001
            code, msg = error_code(exc)
            return pb.CheckEngineResponse(code=code, message=msg)
        return pb.CheckEngineResponse(code=0, message="success", installed=bool(installed))

    async def InstallEngine(  # noqa: N802
        self, request: pb.InstallEngineRequest, context: Any
    ) -> pb.InstallEngineResponse:
        return await self._status(
            pb.InstallEngineResponse,
            lambda: call_plugin(self._local().install_engine, request.cover)
        )

    async def InitEnv(self, request: Any, context: Any) -> pb.InitEnvResponse:  # noqa: N802
        return await self._status(pb.InitEnvResponse,
                                  lambda: call_plugin(self._local().init_env))

    async def UpgradeEngine(self, request: Any, context: Any) -> pb.UpgradeEngineResponse:  # noqa: N802
        return await self._status(
            pb.UpgradeEngineResponse, lambda: call_plugin(self._local().upgrade_engine)
        )

    # ---- local: models -------------------------------------------------------------

    async def PullModel(self, request: pb.PullModelRequest, context: Any) -> pb.PullModelResponse:  # noqa: N802
        async def run() -> m.ProgressResponse:
            req = m.PullModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            progress: m.ProgressResponse = await call_plugin(self._local().pull_model, req)
            return progress

        return await self._json(pb.PullModelResponse, "response_json", run)

    async def PullModelStream(  # noqa: N802
        self, request: pb.PullModelStreamRequest,
        context: grpc.aio.ServicerContext[pb.PullModelStreamRequest, pb.PullModelStreamResponse],
    ) -> None:
        try:
            req = m.PullModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            async for event in iterate_plugin(self._local().pull_model_stream(req)):
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
            await call_plugin(self._local().delete_model, req)

        return await self._status(pb.DeleteModelResponse, run)

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:  # noqa: N802
        return await self._json(
            pb.ListModelsResponse, "response_json",
            lambda: call_plugin(self._local().list_models)
        )

    async def LoadModel(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:  # noqa: N802
        async def run() -> None:
            req = m.LoadModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            await call_plugin(self._local().load_model, req)

        return await self._status(pb.LoadModelResponse, run)

    async def UnloadModel(  # noqa: N802
        self, request: pb.UnloadModelRequest, context: Any
    ) -> pb.UnloadModelResponse:
        async def run() -> None:
            req = m.UnloadModelRequest.from_dict(json.loads(request.request_json or b"{}"))
            await call_plugin(self._local().unload_model, req)

        return await self._status(pb.UnloadModelResponse, run)

    async def GetRunningModels(self, request: Any, context: Any) -> pb.GetRunningModelsResponse:  # noqa: N802
        return await self._json(
            pb.GetRunningModelsResponse, "response_json",
            lambda: call_plugin(self._local().get_running_models),
        )

    async def GetVersion(  # noqa: N802
        self, request: pb.GetVersionRequest, context: Any
    ) -> pb.GetVersionResponse:
        return await self._json(
            pb.GetVersionResponse, "response_json",
            lambda: call_plugin(self._local().get_version)
        )
