"""The `Provider` that routes chat to a native plugin's executor.

`NativeProvider` is a second implementation of `invocation.Provider`: the gateway and
the doors see a provider of the `chat` service whose `config_ref` is `openai:chat`, so
every door (AOG's `/aog/v0.2/services/chat`, `/v1/chat/completions`, `/api/chat`, the
api_flavors routes) converts the client's request to OpenAI Chat Completions and the
answer back with the existing flavor conversions. On top of that, CPA's format
negotiation (spec §3.1, `negotiation`) with the client protocol `openai`: an executor
that declares `openai` gets the chat request as is; one that declares only `claude` or
`openai-response` gets it translated into that format, and its answer (unary, or its
stream events) is translated back into chat (`convert.formats`, the translators the
`/v1/messages` and `/v1/responses` doors use), before the response hooks see it. An
executor that declares only formats the gateway does not translate is spoken to through
the plugins' translators, with the normalizer chains around every translation (module
`translate`), and a thinking applier for the executor's provider key rewrites the body
the executor gets when the client asked for a reasoning setting (module `thinking`).

Each request a native executor serves passes through the plugins' pipeline hooks
(`hooks`: model routers, request/response/stream-chunk interceptors, usage and
lifecycle events).

Precedence (spec §3.2): the gateway's own providers first (a model a process plugin
already serves is not taken by a native plugin), then priority, then plugin ID.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.host.native import auth_models, scheduler, thinking
from aogstream.host.native import gojson as gj
from aogstream.host.native.callbacks import StreamError
from aogstream.host.native.hooks import Hooks, RequestInfo, Terminated, usage_detail
from aogstream.host.native.negotiation import CLIENT_FORMAT
from aogstream.host.native.plugin import NATIVE_DESC, NativePlugin, plugin_error
from aogstream.host.native.translate import Translation, compact
from aogstream.invocation import Invocation, Mode
from aogstream.sse.framing import SseDecoder

log = logging.getLogger("aogstream.native")


def request_id() -> str:
    """A call's request ID for the plugin's hooks and logs: 16 random hex digits (what
    `uuid4().hex[:16]` gave, without building a UUID per call)."""
    return os.urandom(8).hex()


DONE = b"[DONE]"  # the end of an OpenAI stream


class NativeProvider:
    """The `Provider` of a native plugin's executor: the `chat` service of its models."""

    kind = "native"

    def __init__(self, plugin: NativePlugin, models: list[str], hooks: Hooks | None = None,
                 plugins: Callable[[], Iterable[NativePlugin]] | None = None) -> None:
        """`hooks`: the other plugins' pipeline hooks (None: none run); `plugins`: the
        loaded plugins, where a model router's target is looked up."""
        self.plugin = plugin
        self.hooks = hooks
        self.plugins = plugins
        self.name = plugin.id
        flavor = CLIENT_FORMAT
        self.manifest = m.PluginManifest(
            version="1.0",
            provider=m.ProviderInfo(
                name=plugin.id, display_name=gj.text(plugin.metadata, "Name"),
                version=gj.text(plugin.metadata, "Version"), type=m.PLUGIN_TYPE_REMOTE,
                author=gj.text(plugin.metadata, "Author"),
                description=f"{NATIVE_DESC}{plugin.path.name}"),
            services=[m.ServiceDef(
                service_name="chat", task_type="text-generation", protocol="HTTP",
                expose_protocol="HTTP", config_ref=f"{flavor}:chat", auth_type="none",
                default_model=models[0] if models else "", support_models=list(models),
                capabilities=m.ServiceCapabilities(support_streaming=True))])

    @property
    def state(self) -> str:
        return self.plugin.state

    def speaks(self, fmt: str) -> bool:
        """`FormatSpeaker`: the executor takes and answers `fmt` itself, so a client of
        that format (`/v1/messages` for `claude`) is served without translation, as CPA
        does when the formats match (spec §9.3)."""
        plugin = self.plugin
        return plugin.state == "running" and fmt != CLIENT_FORMAT and \
            plugin.executor_format == fmt and plugin.executor_output == fmt

    async def health(self, timeout: float | None = 5.0) -> None:
        if self.plugin.state != "running":
            raise errors.GatewayError(
                errors.PLUGIN_NOT_RUNNING,
                f"native plugin {self.name} is {self.plugin.state}"
                + (f" ({self.plugin.last_error})" if self.plugin.last_error else ""))

    async def models(self, timeout: float | None = 30.0) -> list[m.ModelInfo]:
        return [m.ModelInfo(name=n, model=n) for n in self.manifest.services[0].support_models]

    async def serve(self, inv: Invocation) -> None:
        """Serve one chat call: model routers, request interceptors, the executor
        (unary or streamed), response interceptors, then usage and lifecycle events
        (module `hooks`)."""
        await self.health()
        if inv.mode is Mode.BIDI:
            raise errors.GatewayError(errors.PLUGIN_NOT_IMPLEMENTED,
                                      f"native plugin {self.name} serves no sessions")
        plugin = self.plugin
        stream = inv.mode is not Mode.UNARY
        requested = _model_of(inv.request)
        client = inv.metadata.get("format") or CLIENT_FORMAT
        if client != CLIENT_FORMAT and not self.speaks(client):
            raise errors.GatewayError(errors.PLUGIN_NOT_IMPLEMENTED, (
                f"native plugin {self.name} does not take {client} requests as they are"))
        info = RequestInfo(request_id=request_id(), model=requested,
                           requested_model=requested, stream=stream, source_format=client,
                           to_format=plugin.executor_format, provider=plugin.provider_key,
                           executor=plugin.id,
                           headers={"Content-Type": ["application/json"]})
        hooks = self.hooks
        request = inv.request
        detail: list[dict[str, int] | None] = [None]
        outcome, status, why = "failed", 500, ""
        executed = False
        failure: errors.GatewayError | None = None
        try:
            if hooks is not None:
                routed = await hooks.route(info, request, self._target)
                if routed is not None:
                    if client != CLIENT_FORMAT and routed[0] is not plugin and \
                            not (routed[0].executor_format == routed[0].executor_output
                                 == client):
                        raise errors.GatewayError(errors.PLUGIN_NOT_IMPLEMENTED, (
                            f"a model router sent this {client} request to native plugin "
                            f"{routed[0].id}, which does not speak {client}"))
                    plugin, info.model = routed
                    info.executor, info.provider = plugin.id, plugin.provider_key
                    info.to_format = plugin.executor_format
                    request = _with_model(request, info.model)
                request = await hooks.intercept_request(info, request)
            xl = Translation(hooks, plugin, info)
            payload = await xl.request(request)
            payload = await thinking.apply(hooks, plugin, info, request, payload)
            executed = True
            await self._execute(inv, plugin, info, request, xl, payload, detail)
            outcome, status = "succeeded", 200
        except Terminated as stop:
            outcome, status, why = "rejected", stop.status, str(stop)
            raise stop.error() from None
        except errors.GatewayError as err:
            failure = err
            outcome, status, why = "failed", err.status, err.message
            raise
        except BaseException as exc:
            if _cancelled(exc):
                outcome, status, why = "canceled", 499, "the client left"
            else:
                why = type(exc).__name__
            raise
        finally:
            if hooks is not None:
                if executed and outcome != "canceled":
                    hooks.usage(info, detail[0], failure)
                hooks.complete(info, outcome, status, why)

    async def _execute(self, inv: Invocation, plugin: NativePlugin, info: RequestInfo,
                       request: bytes, xl: Translation, payload: bytes,
                       detail: list[dict[str, int] | None]) -> None:
        """The executor call, with one of the plugin's auth records when it has any
        (chosen by `scheduler`, among those bound to the model by `auth_models`): a
        record the plugin refuses (429, 401, 403) before the first answer byte cools
        down and the call is tried on the next one (module `auths`)."""
        auths = plugin.host.auths
        key = plugin.auth_key
        tried: set[str] = set()
        allowed = auth_models.auths_for(plugin, info.model)
        while True:
            rec = await scheduler.pick(
                auths, plugin, self.plugins() if self.plugins is not None else [plugin],
                info.model, info.stream, info.headers, tried, allowed) \
                if auths is not None else None
            if rec is None and auths is not None and auths.has(key, allowed):
                raise errors.GatewayError(errors.Bcode(429, errors.PLUGIN_BAD_REQUEST.code), (
                    f"every credential of provider {key} was refused or is cooling down; "
                    f"try again later or log in again"))
            info.auth = rec
            try:
                if info.stream:
                    await self._stream(inv, plugin, info, request, xl, payload, detail)
                else:
                    await self._unary(inv, plugin, info, request, xl, payload, detail)
                return
            except errors.GatewayError as err:
                if rec is None or info.first_byte is not None or auths is None or \
                        not auths.cool_down(rec, err.status):
                    raise
                tried.add(rec.name)

    def _target(self, kind: str, target: str, router: NativePlugin) -> NativePlugin | None:
        """The running native executor a router's `TargetKind`/`Target` names: `self`
        the router's own; `executor` and `provider` a plugin by ID or provider key."""
        if kind == "self":
            found: NativePlugin | None = router
        elif kind in ("executor", "provider") and self.plugins is not None:
            want = target.strip().lower()
            found = next((p for p in self.plugins()
                          if want and (p.id.lower() == want or p.provider_key == want)),
                         None)
        else:
            found = None
        if found is None or found.state != "running" or not found.executor_format:
            return None
        return found

    async def _unary(self, inv: Invocation, plugin: NativePlugin, info: RequestInfo,
                     request: bytes, xl: Translation, sent: bytes,
                     detail: list[dict[str, int] | None]) -> None:
        scope = plugin.host.open_scope(plugin.id, info.request_id)
        try:
            reply = await plugin.call("executor.execute",
                                      self._request(plugin, inv, info, sent, scope.id))
        finally:
            plugin.host.close_scope(scope)
        try:
            payload = gj.data(reply, "Payload")
        except gj.ReplyError as exc:
            raise plugin_error(plugin.id, "executor.execute", exc) from None
        payload = await xl.answer(payload)
        info.first_byte = time.monotonic()
        if self.hooks is not None:
            payload = await self.hooks.intercept_response(info, inv.request, request,
                                                          payload)
            if self.hooks.wants_usage():
                detail[0] = _usage(payload)
        await inv.emit(payload)

    def _request(self, plugin: NativePlugin, inv: Invocation, info: RequestInfo,
                 payload: bytes, scope_id: str, stream_id: str = "") -> dict[str, Any]:
        """The ExecutorRequest of a chat call: `payload` is the request in the
        executor's format (`translate`)."""
        return executor_request(plugin, info, inv.request, payload, scope_id, stream_id)

    async def count_tokens(self, fmt: str, body: dict[str, Any],
                           chat: dict[str, Any]) -> int:
        """`executor.count_tokens` (the `TokenCounter` of `invocation`): the request
        as the client sent it when the executor speaks its format, else translated
        from its chat form; the answer's `input_tokens` (or a chat answer's
        `usage.prompt_tokens`)."""
        await self.health()
        plugin = self.plugin
        if not plugin.executor_format:
            raise errors.GatewayError(errors.PLUGIN_NOT_IMPLEMENTED,
                                      f"native plugin {plugin.id} has no executor")
        original = compact(body)
        named = body.get("model")
        model = named if isinstance(named, str) else ""
        info = RequestInfo(request_id=request_id(), model=model,
                           requested_model=model, stream=False, source_format=fmt,
                           to_format=plugin.executor_format, provider=plugin.provider_key,
                           executor=plugin.id,
                           headers={"Content-Type": ["application/json"]})
        if fmt == plugin.executor_format:
            payload = original
        else:  # translated from the chat form, as a chat request would be
            info.source_format = CLIENT_FORMAT
            payload = await Translation(self.hooks, plugin, info).request(compact(chat))
            info.source_format = fmt
        auths = plugin.host.auths
        info.auth = await scheduler.pick(
            auths, plugin, self.plugins() if self.plugins is not None else [plugin], model,
            False, info.headers, (), auth_models.auths_for(plugin, model)) \
            if auths is not None else None
        scope = plugin.host.open_scope(plugin.id, info.request_id)
        try:
            reply = await plugin.call("executor.count_tokens", executor_request(
                plugin, info, original, payload, scope.id))
            answer = json.loads(gj.data(reply, "Payload") or b"null")
        except (ValueError, gj.ReplyError) as exc:
            raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR, (
                f"native plugin {plugin.id}: executor.count_tokens answered no count: "
                f"{exc}")) from None
        finally:
            plugin.host.close_scope(scope)
        count = token_count(answer)
        if count is None:
            raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR, (
                f"native plugin {plugin.id}: executor.count_tokens answered no "
                f"input_tokens"))
        return count


    async def _stream(self, inv: Invocation, plugin: NativePlugin, info: RequestInfo,
                      request: bytes, xl: Translation, sent: bytes,
                      detail: list[dict[str, int] | None]) -> None:
        """`executor.execute_stream`: the synchronous `chunks` answer or the
        asynchronous emit/close, relayed chunk by chunk (through the stream-chunk
        interceptors); leaving (the client gone, the deadline) closes the stream, so
        the plugin's next emit fails and it stops."""
        host = plugin.host
        stream = host.open_stream(plugin.id)
        scope = host.open_scope(plugin.id, info.request_id)
        failure: list[errors.GatewayError] = []
        chain = self.hooks.chunk_chain(info, inv.request, request) \
            if self.hooks is not None else None

        async def start() -> None:
            try:
                reply = await plugin.call("executor.execute_stream", self._request(
                    plugin, inv, info, sent, scope.id, stream.id))
                chunks = gj.field(reply, "chunks")
                if isinstance(chunks, list) and chunks:
                    stream.queue.put_all([gj.data(chunk, "Payload") for chunk in chunks])
            except errors.GatewayError as err:
                failure.append(err)
                stream.queue.end(on_loop=True)
            except gj.ReplyError as exc:
                failure.append(plugin_error(plugin.id, "executor.execute_stream", exc))
                stream.queue.end(on_loop=True)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start)
                if chain is not None:
                    await chain.start()
                done = False
                chunk: bytes | None  # a request hook may drop a chunk (None)
                async for item in stream.queue:
                    if isinstance(item, StreamError):
                        raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR,
                                                  f"native plugin {plugin.id}: {item.message}")
                    for chunk in [xl.as_is(p) for p in _payloads(item)] \
                            if xl.streams_as_is else \
                            await xl.chunk(item):
                        if chunk and chunk != DONE and chain is not None:
                            chunk = await chain.chunk(chunk)
                        if chunk:
                            done = chunk == DONE
                            if info.first_byte is None:
                                info.first_byte = time.monotonic()
                            if self.hooks is not None and b'"usage"' in chunk:
                                detail[0] = _usage(chunk) or detail[0]
                            await inv.emit(chunk)
                if failure:
                    raise failure[0]
                # as CPA does after an `openai` stream, and OpenAI itself
                if not done and info.source_format == CLIENT_FORMAT:
                    await inv.emit(DONE)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            host.abort_stream(stream)
            host.close_scope(scope)

def token_count(answer: Any) -> int | None:
    """The input tokens of a count answer: Anthropic's `input_tokens`, a chat or
    Responses `usage`, or a bare `total_tokens`/`totalTokens`."""
    if not isinstance(answer, dict):
        return None
    given = answer.get("usage")
    usage: dict[str, Any] = given if isinstance(given, dict) else {}
    for value in (answer.get("input_tokens"), usage.get("input_tokens"),
                  usage.get("prompt_tokens"), answer.get("prompt_tokens"),
                  answer.get("total_tokens"), answer.get("totalTokens")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def executor_request(plugin: NativePlugin, info: RequestInfo, original: bytes,
                     payload: bytes, scope_id: str, stream_id: str = "") -> dict[str, Any]:
    """`rpcExecutorRequest`: ExecutorRequest's fields in Go order, then the scope.
    `Format` is the answer format wanted (a declared output format), `SourceFormat`
    the one `Payload` is in (a declared input format), as CLIProxyAPI sends them."""
    fmt = plugin.executor_format
    auth = plugin.host.auths.executor_fields(info.auth) \
        if plugin.host.auths is not None else {}
    req: dict[str, Any] = {
        "AuthID": auth.get("AuthID", ""), "AuthProvider": plugin.auth_key,
        "Model": info.model, "Format": plugin.executor_output or fmt, "Stream": info.stream,
        "Alt": "",
        "Headers": gj.header_map(info.headers), "Query": None,
        "OriginalRequest": original, "SourceFormat": fmt,
        "Payload": payload,
        "Metadata": None, "StorageJSON": auth.get("StorageJSON"),
        "AuthMetadata": auth.get("AuthMetadata"),
        "AuthAttributes": auth.get("AuthAttributes")}
    if scope_id:
        req["host_callback_id"] = scope_id
    if stream_id:
        req["stream_id"] = stream_id
    return req


def _model_of(request: bytes) -> str:
    try:
        body = json.loads(request)
    except ValueError:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else ""


def _with_model(request: bytes, model: str) -> bytes:
    """The request naming `model` (a router's `TargetModel`)."""
    try:
        body = json.loads(request)
    except ValueError:
        return request
    if not isinstance(body, dict) or body.get("model") == model:
        return request
    body["model"] = model
    return json.dumps(body, ensure_ascii=False).encode()


def _usage(payload: bytes) -> dict[str, int] | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return usage_detail(body) if isinstance(body, dict) else None


def _cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_cancelled(e) for e in exc.exceptions)
    return False


def _payloads(chunk: bytes) -> list[bytes]:
    """A chunk as event payloads (CPA writes each inside `data: …`): bare JSON is one;
    a chunk the plugin framed as SSE itself gives each frame's `data:` payload (its
    `event:` lines dropped: the doors frame events by their JSON `type`), so a plugin
    may put several frames in one chunk."""
    chunk = chunk.strip()
    if not chunk.startswith((b"data:", b"event:", b":")):
        return [chunk]
    decoder = SseDecoder()  # the gateway's own SSE parser, one chunk at a time
    return decoder.feed(chunk) + decoder.flush()
