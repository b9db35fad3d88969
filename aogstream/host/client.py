"""The host's view of one plugin: every method of AOG's `client` package, in trio.

Each method is one `protocol.ProviderService` rpc through the bridge, or, for the three
Invoke rpcs of a plugin that listens on the lane (`rpc.lane`), through `host.lane`'s
`LaneChannel`, which offers the same calls and streams (`CallStream`). A result code
other than 0/200 raises `PluginError(code, message)` (as AOG's Go client does);
gRPC-level failures (process gone, deadline) raise `RpcFailure`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import trio

from aogstream import manifest as m
from aogstream.host.lane import LaneChannel
from aogstream.rpc import wire
from aogstream.rpc.bridge import Channel, Packer
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.wire import BATCH_OFFER, BIDI_BATCH_OFFER, MAX_BATCH_BYTES
from aogstream.sse.framing import SseDecoder, SseEvents

SERVICE = "/protocol.ProviderService/"

RespT_co = TypeVar("RespT_co", covariant=True)


class CallStream(Protocol[RespT_co]):
    """What the code here uses of a streaming call: `rpc.bridge.Stream` (gRPC) and
    `host.lane.LaneStream` (the lane) both have it."""

    async def receive(self) -> RespT_co: ...

    def receive_nowait(self) -> RespT_co: ...

    def __aiter__(self) -> CallStream[RespT_co]: ...

    async def __anext__(self) -> RespT_co: ...

    async def send(self, msg: Any) -> None: ...

    def send_nowait(self, msg: Any, *, kick: bool = True) -> None: ...

    def kick_writer(self) -> None: ...

    async def done_writing(self) -> None: ...

    def done_writing_nowait(self) -> None: ...

    def end_reading(self) -> None: ...


def is_success(code: int) -> bool:
    return code in (0, 200)


def _check(resp: Any) -> Any:
    if not is_success(resp.code):
        raise m.PluginError(resp.code, resp.message, "")
    return resp


def _load(raw: bytes) -> Any:
    return json.loads(raw) if raw else {}


class BidiSession:
    """An open InvokeServiceBidi call: send client frames, receive plugin frames."""

    def __init__(self, stream: CallStream[pb.InvokeServiceBidiResponse]):
        self._s = stream

    async def send(
        self, data: bytes, message_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        await self._s.send(self.request(data, message_type, metadata))

    def request(self, data: bytes, message_type: str,
                metadata: dict[str, str] | None = None) -> pb.InvokeServiceBidiRequest:
        # a realtime frame every 20 ms per session: building the map field (even
        # empty) costs more than the rest of the message, so it is set only when there
        # is metadata (and is_first is false by default)
        if metadata:
            return pb.InvokeServiceBidiRequest(data=data, message_type=message_type,
                                               metadata=metadata)
        return pb.InvokeServiceBidiRequest(data=data, message_type=message_type)

    def send_nowait(self, data: bytes, message_type: str,
                    metadata: dict[str, str] | None = None, *, kick: bool = True) -> None:
        """`send` of a message that fits in the window now (else trio.WouldBlock);
        `kick=False` queues it for a later `kick_writer` (see `Stream.send_nowait`)."""
        self._s.send_nowait(self.request(data, message_type, metadata), kick=kick)

    def kick_writer(self) -> None:
        self._s.kick_writer()

    async def done_writing(self) -> None:
        await self._s.done_writing()

    def done_writing_nowait(self) -> None:
        self._s.done_writing_nowait()

    def end_reading(self) -> None:
        """Wake a reader parked in `receive` with the call's end (see `Stream.end_reading`)."""
        self._s.end_reading()

    async def receive(self) -> pb.InvokeServiceBidiResponse:
        """Next plugin message; PluginError on a failure code, EndOfChannel at the end."""
        resp: pb.InvokeServiceBidiResponse = _check(await self._s.receive())
        return resp

    def __aiter__(self) -> BidiSession:
        return self

    async def __anext__(self) -> pb.InvokeServiceBidiResponse:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def unpack_response(msg: pb.InvokeServiceBidiResponse) -> list[bytes] | None:
    """The frames of a packed plugin message (a batched session only), or None for
    a message that carries one frame."""
    md = msg.metadata
    if md and wire.FRAME_LENGTHS_KEY in md and len(md) == 1:
        frames = wire.unpack_frames(msg.data, md[wire.FRAME_LENGTHS_KEY])
        if frames is not None:
            counts = wire.PACK_COUNTS
            counts.read += 1
            counts.frames_read += len(frames)
        return frames
    return None


def _bidi_packer_for(initial_metadata: Any) -> Packer | None:
    """The packer of a session whose plugin said (initial metadata) it unpacks."""
    limit = wire.frame_batch_limit(initial_metadata)
    if limit <= 1:
        return None

    def pack(run: list[pb.InvokeServiceBidiRequest]) -> list[pb.InvokeServiceBidiRequest]:
        return _pack_requests(run, limit)

    return pack


def _pack_requests(run: list[pb.InvokeServiceBidiRequest],
                   limit: int) -> list[pb.InvokeServiceBidiRequest]:
    """Consecutive frames of one kind with no metadata (nearly all of a realtime
    session's) become one message each, up to `limit` frames or MAX_BATCH_BYTES;
    anything else is left as it was, in order. Runs on the bridge's loop thread, or
    in the sending task on the lane."""
    if len(run) == 1:
        return run
    out: list[pb.InvokeServiceBidiRequest] = []
    group: list[pb.InvokeServiceBidiRequest] = []
    size = 0

    def close_group() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            data, md = wire.pack_frames([g.data for g in group])
            out.append(pb.InvokeServiceBidiRequest(
                data=data, message_type=group[0].message_type, metadata=md))
            counts = wire.PACK_COUNTS
            counts.written += 1
            counts.frames_written += len(group)
        group.clear()

    for msg in run:
        if msg.metadata or msg.is_first:
            close_group()
            size = 0
            out.append(msg)
            continue
        if group and (msg.message_type != group[0].message_type or len(group) >= limit
                      or size + len(msg.data) > MAX_BATCH_BYTES):
            close_group()
            size = 0
        group.append(msg)
        size += len(msg.data)
    close_group()
    return out


class PluginClient:
    """A connected plugin. `manifest` is the on-disk one (AOG routes by it too).

    With `lane`, the three Invoke rpcs go over it and every other rpc over `channel`
    (gRPC); without, everything goes over `channel`."""

    def __init__(self, channel: Channel, manifest: m.PluginManifest,
                 lane: LaneChannel | None = None) -> None:
        self.channel = channel
        self.lane = lane
        self.manifest = manifest
        self.name = manifest.provider.name

    async def _call(self, rpc: str, req: Any, resp_type: type, timeout: float | None) -> Any:
        return await self.channel.unary(SERVICE + rpc, req, resp_type, timeout=timeout)

    async def _status(self, rpc: str, req: Any, resp_type: type, timeout: float | None) -> None:
        _check(await self._call(rpc, req, resp_type, timeout))

    # ---- base -----------------------------------------------------------------------

    def get_manifest(self) -> m.PluginManifest:
        return self.manifest

    async def fetch_manifest(self, timeout: float | None = 10.0) -> m.PluginManifest:
        """The manifest as the running plugin reports it (GetManifest rpc)."""
        resp = _check(await self._call("GetManifest", pb.GetManifestRequest(),
                                       pb.GetManifestResponse, timeout))
        return m.PluginManifest.from_dict(_load(resp.manifest_json))

    async def health_check(self, timeout: float | None = 5.0) -> None:
        await self._status("HealthCheck", pb.HealthCheckRequest(), pb.HealthCheckResponse,
                           timeout)

    async def get_operate_status(self, timeout: float | None = 5.0) -> int:
        resp = await self._call("GetOperateStatus", pb.GetOperateStatusRequest(),
                                pb.GetOperateStatusResponse, timeout)
        return int(resp.status)

    async def set_operate_status(self, status: int, timeout: float | None = 5.0) -> None:
        await self._call("SetOperateStatus", pb.SetOperateStatusRequest(status=status),
                         pb.SetOperateStatusResponse, timeout)

    def get_support_model_list(self) -> list[m.RecommendModelData]:
        return self.manifest.support_model_list()

    # ---- invocation -----------------------------------------------------------------

    async def invoke_service(
        self, service: str, auth_info: str, request: bytes, *, timeout: float | None = None
    ) -> bytes:
        req = pb.InvokeServiceRequest(service_name=service, request_data=request,
                                      auth_info=auth_info)
        if self.lane is not None:
            resp = _check(await self.lane.unary(SERVICE + "InvokeService", req,
                                                pb.InvokeServiceResponse, timeout=timeout))
        else:
            resp = _check(await self._call("InvokeService", req, pb.InvokeServiceResponse,
                                           timeout))
        return bytes(resp.response_data)

    @asynccontextmanager
    async def invoke_service_stream(
        self, service: str, auth_info: str, request: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[AsyncIterator[list[bytes]]]:
        """Yields an iterator of event batches: the SSE `data` payloads of each chunk.

        Reading ends at the first `is_final`, at EOF, or raises PluginError at the
        first failure code (AOG's rules). Batches keep what arrived together together,
        so the writer can send it in one write. The call offers our SDK's plugins to
        pack waiting events into one message (`rpc.wire`); AOG plugins ignore it.
        """
        req = pb.InvokeServiceRequest(service_name=service, request_data=request,
                                      auth_info=auth_info)
        via = self.lane if self.lane is not None else self.channel
        async with via.stream(
            SERVICE + "InvokeServiceStream", pb.InvokeServiceStreamResponse,
            request=req, timeout=timeout, metadata=BATCH_OFFER, is_last=_is_final,
        ) as s:
            yield _stream_events(s)

    @asynccontextmanager
    async def invoke_service_bidi(
        self,
        service: str,
        auth_info: str,
        *,
        first_data: bytes = b"",
        first_type: str = "",
        metadata: dict[str, str] | None = None,
        batch: bool = False,
    ) -> AsyncIterator[BidiSession]:
        """Open a bidi session; the first message carries service, auth and metadata
        (`ws_conn_id` among them) as AOG's host sends it. No deadline (AOG's rule).

        With `batch`, the call offers to unpack packed frames (`rpc.wire`): the
        caller must then read them with `unpack_response`. Frames already waiting
        to be written are packed too, once the plugin has said it unpacks them; an
        AOG plugin never says so and gets one frame per message."""
        offer = BIDI_BATCH_OFFER if batch else ()
        via = self.lane if self.lane is not None else self.channel
        async with via.stream(
            SERVICE + "InvokeServiceBidi", pb.InvokeServiceBidiResponse,
            metadata=offer or None, packer_for=_bidi_packer_for if offer else None,
        ) as s:
            await s.send(pb.InvokeServiceBidiRequest(
                service_name=service, auth_info=auth_info, is_first=True,
                data=first_data, message_type=first_type, metadata=metadata or {},
            ))
            yield BidiSession(s)

    # ---- remote ---------------------------------------------------------------------

    async def set_auth(self, auth_type: str, credentials: dict[str, str],
                       timeout: float | None = 10.0) -> None:
        await self._status("SetAuth", pb.SetAuthRequest(auth_type=auth_type,
                                                        credentials=credentials),
                           pb.SetAuthResponse, timeout)

    async def validate_auth(self, timeout: float | None = 30.0) -> None:
        await self._status("ValidateAuth", pb.ValidateAuthRequest(), pb.ValidateAuthResponse,
                           timeout)

    async def refresh_auth(self, timeout: float | None = 30.0) -> None:
        await self._status("RefreshAuth", pb.RefreshAuthRequest(), pb.RefreshAuthResponse,
                           timeout)

    # ---- local: engine --------------------------------------------------------------

    async def start_engine(self, mode: str = "daemon", timeout: float | None = None) -> None:
        await self._status("StartEngine", pb.StartEngineRequest(mode=mode),
                           pb.StartEngineResponse, timeout)

    async def stop_engine(self, timeout: float | None = None) -> None:
        await self._status("StopEngine", pb.StopEngineRequest(), pb.StopEngineResponse, timeout)

    async def get_config(self, timeout: float | None = None) -> m.EngineRecommendConfig:
        resp = _check(await self._call("GetConfig", pb.GetConfigRequest(),
                                       pb.GetConfigResponse, timeout))
        return m.EngineRecommendConfig.from_dict(_load(resp.config_json))

    async def check_engine(self, timeout: float | None = None) -> bool:
        resp = _check(await self._call("CheckEngine", pb.CheckEngineRequest(),
                                       pb.CheckEngineResponse, timeout))
        return bool(resp.installed)

    async def install_engine(self, cover: bool = False, timeout: float | None = None) -> None:
        await self._status("InstallEngine", pb.InstallEngineRequest(cover=cover),
                           pb.InstallEngineResponse, timeout)

    async def init_env(self, timeout: float | None = None) -> None:
        await self._status("InitEnv", pb.InitEnvRequest(), pb.InitEnvResponse, timeout)

    async def upgrade_engine(self, timeout: float | None = None) -> None:
        await self._status("UpgradeEngine", pb.UpgradeEngineRequest(),
                           pb.UpgradeEngineResponse, timeout)

    # ---- local: models --------------------------------------------------------------

    async def pull_model(
        self,
        req: m.PullModelRequest,
        progress: Callable[[m.ProgressResponse], Awaitable[None]] | None = None,
        timeout: float | None = None,
    ) -> m.ProgressResponse:
        """Pull a model. With `progress`, progress events are reported as they come
        (over PullModelStream); without, one blocking PullModel rpc."""
        if progress is None:
            resp = _check(await self._call(
                "PullModel", pb.PullModelRequest(request_json=_dump(req.to_dict())),
                pb.PullModelResponse, timeout))
            return m.ProgressResponse.from_dict(_load(resp.response_json))
        last = m.ProgressResponse(status="")
        async with self.pull_model_stream(req) as events:
            async for event in events:
                if "error" in event:
                    raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED, str(event["error"]), "")
                last = m.ProgressResponse.from_dict(event)
                await progress(last)
        return last

    @asynccontextmanager
    async def pull_model_stream(
        self, req: m.PullModelRequest
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Progress objects as the plugin sends them; ends at EOF (AOG's rule)."""
        req_dict = req.to_dict()
        req_dict["stream"] = True
        async with self.channel.stream(
            SERVICE + "PullModelStream", pb.PullModelStreamResponse,
            request=pb.PullModelStreamRequest(request_json=_dump(req_dict)),
        ) as s:
            yield _progress_events(s)

    async def delete_model(self, req: m.DeleteModelRequest, timeout: float | None = None) -> None:
        await self._status("DeleteModel", pb.DeleteModelRequest(request_json=_dump(req.to_dict())),
                           pb.DeleteModelResponse, timeout)

    async def list_models(self, timeout: float | None = None) -> m.ListModelsResponse:
        resp = _check(await self._call("ListModels", pb.ListModelsRequest(),
                                       pb.ListModelsResponse, timeout))
        return m.ListModelsResponse.from_dict(_load(resp.response_json))

    async def load_model(self, req: m.LoadModelRequest, timeout: float | None = None) -> None:
        await self._status("LoadModel", pb.LoadModelRequest(request_json=_dump(req.to_dict())),
                           pb.LoadModelResponse, timeout)

    async def unload_model(self, req: m.UnloadModelRequest,
                           timeout: float | None = None) -> None:
        await self._status("UnloadModel",
                           pb.UnloadModelRequest(request_json=_dump(req.to_dict())),
                           pb.UnloadModelResponse, timeout)

    async def get_running_models(self, timeout: float | None = None) -> m.ListModelsResponse:
        resp = _check(await self._call("GetRunningModels", pb.GetRunningModelsRequest(),
                                       pb.GetRunningModelsResponse, timeout))
        return m.ListModelsResponse.from_dict(_load(resp.response_json))

    async def get_version(self, timeout: float | None = None) -> m.EngineVersionResponse:
        template = _dump(m.EngineVersionResponse(version="").to_dict())
        resp = _check(await self._call("GetVersion", pb.GetVersionRequest(request_json=template),
                                       pb.GetVersionResponse, timeout))
        return m.EngineVersionResponse.from_dict(_load(resp.response_json))


def _is_final(msg: pb.InvokeServiceStreamResponse) -> bool:
    """Where AOG's host stops reading a stream: the final message or an error."""
    return msg.is_final or not is_success(msg.code)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _stream_events(
    s: CallStream[pb.InvokeServiceStreamResponse],
) -> AsyncIterator[list[bytes]]:
    """Batches of event payloads (`SseEvents`, carrying the plugin's own SSE bytes when
    they can be relayed as they are)."""
    decoder = SseDecoder()
    while True:
        try:
            msg = await s.receive()
        except trio.EndOfChannel:
            tail = decoder.flush()
            if tail:
                yield tail
            return
        batch = SseEvents()
        raw: list[bytes] | None = []
        final = False
        while True:
            if not is_success(msg.code):
                if batch:
                    yield batch
                raise m.PluginError(msg.code, msg.message, "")
            chunk = msg.chunk_data
            if chunk:
                batch.extend(decoder.feed(chunk))
                if raw is not None:
                    if decoder.verbatim:
                        raw.append(chunk)
                    else:
                        raw = None
            if msg.is_final:
                final = True
                break
            try:  # coalesce what has already arrived
                msg = s.receive_nowait()
            except trio.WouldBlock:
                break
        if final:
            tail = decoder.flush()
            if tail:
                batch.extend(tail)
                raw = None
        if batch:
            if raw is not None:
                batch.sse = raw[0] if len(raw) == 1 else b"".join(raw)
            yield batch
        if final:
            return


async def _progress_events(
    s: CallStream[pb.PullModelStreamResponse],
) -> AsyncIterator[dict[str, Any]]:
    async for msg in s:
        if msg.data:
            event = json.loads(msg.data)
            yield event
            if "error" in event:
                return
        elif not is_success(msg.code):
            yield {"error": msg.message or f"plugin code {msg.code}"}
            return
