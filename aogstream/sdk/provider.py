"""Base classes a Python plugin author subclasses, mirroring AOG's plugin interfaces.

AOG's Go SDK splits a plugin into PluginProvider (everyone), LocalPluginProvider
(engine and model management), RemotePluginProvider (credentials), StreamablePlugin
(server streaming) and BidirectionalPlugin (WebSocket-like sessions). The same split
here lets the SDK answer AOG hosts exactly as a Go plugin would: a remote plugin asked
to start an engine says "not a local plugin", a method a local plugin does not
override says "not supported".

Plugin code runs on asyncio (the grpc.aio server's loop). A host that goes away
cancels the call, and plugin code sees `asyncio.CancelledError` at its next await,
never a silent end of input: put engine clean-up in `try/finally`.

Any of these methods may instead be written as plain `def` (and a stream as a plain
generator) when its code blocks: the SDK then runs it on a worker thread
(`sdk.blocking`), so it holds up no other request, and it may use `ctx.llm`'s sync
twins. Such code cannot be interrupted: when its request is cancelled, the sync
`ctx.llm` call it waits on ends with `PluginLlmError` code "cancelled", and its result
is dropped. `invoke_service_bidirectional` is always `async def`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs

from aogstream import manifest as m
from aogstream.sdk.llm import PluginContext


@attrs.define
class StreamChunk:
    """One message of a server stream, when a plugin wants full control of it.

    Plugins usually yield a dict or JSON bytes and let the SDK frame it as SSE
    (`data: <json>\\n\\n`), which is what AOG hosts parse. Yield a StreamChunk to send
    `data` verbatim (already framed) with metadata.
    """

    data: bytes = b""
    is_final: bool = False
    metadata: dict[str, str] = attrs.Factory(dict)


@attrs.define
class BidiMessage:
    """One message of a bidirectional session: a WebSocket frame, in effect."""

    data: bytes = b""
    message_type: str = "text"  # text, binary, ping, pong, close
    metadata: dict[str, str] = attrs.Factory(dict)

    @classmethod
    def text(cls, obj: Any, **metadata: str) -> BidiMessage:
        """A text frame carrying `obj` as JSON (or `obj` itself if it is a str)."""
        body = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        return cls(body.encode(), "text", dict(metadata))


SendFn = Callable[[BidiMessage], Awaitable[None]]
ProgressFn = Callable[[m.ProgressResponse], Awaitable[None]]


def not_supported(what: str) -> m.PluginError:
    return m.PluginError(m.ERR_CODE_UNIMPLEMENTED, f"{what} is not supported by this plugin", "")


class PluginProvider:
    """What every plugin implements: metadata, health and unary invocation.

    `manifest` is loaded by `serve()` from the plugin's folder when the subclass
    does not set it.
    """

    manifest: m.PluginManifest | None = None
    operate_status: int = 1
    _ctx: PluginContext | None = None

    @property
    def ctx(self) -> PluginContext:
        """What the gateway offers this plugin while it runs: `self.ctx.llm` calls
        the gateway's own models (see `aogstream.sdk.llm`)."""
        if self._ctx is None:
            self._ctx = PluginContext()
        return self._ctx

    async def health_check(self) -> None:
        """Raise (ideally a PluginError) when the plugin cannot serve."""

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        raise not_supported(f"unary invocation of {service_name!r}")

    def get_support_model_list(self) -> list[m.RecommendModelData]:
        """Models this plugin offers, built from the manifest (as AOG's client does)."""
        return [] if self.manifest is None else self.manifest.support_model_list()

class StreamablePlugin(PluginProvider):
    """A plugin with server-streaming services (`capabilities.support_streaming`)."""

    def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any] | bytes | StreamChunk]:
        """Yield the provider-native JSON of each chunk (dict or bytes).

        The SDK frames each as one SSE event and ends the gRPC stream with an
        `is_final` message once the iterator is exhausted.
        """
        raise not_supported(f"streaming invocation of {service_name!r}")


class BidirectionalPlugin(PluginProvider):
    """A plugin with bidirectional services (WebSocket sessions, realtime speech)."""

    async def invoke_service_bidirectional(
        self,
        service_name: str,
        ws_conn_id: str,
        auth_info: str,
        incoming: AsyncIterator[BidiMessage],
        send: SendFn,
    ) -> None:
        """Serve one session: read client frames from `incoming`, answer with `send`.

        `incoming` ends when the host half-closes; a host that leaves cancels this
        coroutine instead.
        """
        raise not_supported(f"bidirectional invocation of {service_name!r}")


class LocalPluginProvider(PluginProvider):
    """A plugin that runs a local engine: lifecycle and model management.

    Every method has a default that answers "not supported" with AOG's
    unimplemented code, so a plugin overrides only what its engine can do.
    """

    async def start_engine(self, mode: str) -> None:
        raise not_supported("StartEngine")

    async def stop_engine(self) -> None:
        raise not_supported("StopEngine")

    async def get_config(self) -> m.EngineRecommendConfig:
        raise not_supported("GetConfig")

    async def check_engine(self) -> bool:
        raise not_supported("CheckEngine")

    async def install_engine(self, cover: bool = False) -> None:
        raise not_supported("InstallEngine")

    async def init_env(self) -> None:
        raise not_supported("InitEnv")

    async def upgrade_engine(self) -> None:
        raise not_supported("UpgradeEngine")

    async def pull_model(
        self, req: m.PullModelRequest, progress: ProgressFn | None = None
    ) -> m.ProgressResponse:
        """Blocking pull; the default drains `pull_model_stream`."""
        last = m.ProgressResponse(status="")
        async for event in self.pull_model_stream(req):
            if "error" in event:
                raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED, str(event["error"]), "")
            last = m.ProgressResponse.from_dict(event)
            if progress is not None:
                await progress(last)
        return last

    def pull_model_stream(self, req: m.PullModelRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield progress objects `{status, digest, total, completed}`, then
        `{"status": "success"}`; an object with an `error` key reports failure."""
        raise not_supported("PullModelStream")

    async def delete_model(self, req: m.DeleteModelRequest) -> None:
        raise not_supported("DeleteModel")

    async def list_models(self) -> m.ListModelsResponse:
        raise not_supported("ListModels")

    async def load_model(self, req: m.LoadModelRequest) -> None:
        raise not_supported("LoadModel")

    async def unload_model(self, req: m.UnloadModelRequest) -> None:
        raise not_supported("UnloadModel")

    async def get_running_models(self) -> m.ListModelsResponse:
        raise not_supported("GetRunningModels")

    async def get_version(self) -> m.EngineVersionResponse:
        raise not_supported("GetVersion")


class RemotePluginProvider(PluginProvider):
    """A plugin for a cloud service. Credentials arrive per call in `auth_info`.

    AOG hosts never call SetAuth/ValidateAuth/RefreshAuth; they exist for
    completeness and default to success, as AOG's SDK does.
    """

    async def set_auth(self, auth_type: str, credentials: dict[str, str]) -> None:
        return None

    async def validate_auth(self) -> None:
        return None

    async def refresh_auth(self) -> None:
        return None


def parse_auth_info(auth_info: str) -> dict[str, str]:
    """Credentials as a string map (AOG sends the provider's `auth_key` JSON verbatim)."""
    if not auth_info:
        return {}
    try:
        data = json.loads(auth_info)
    except json.JSONDecodeError as exc:
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, "auth_info is not JSON", str(exc)) from exc
    if not isinstance(data, dict):
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, "auth_info must be a JSON object", "")
    return {str(k): str(v) for k, v in data.items()}
