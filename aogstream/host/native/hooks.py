"""The request pipeline hooks of native plugins: `model.route`, the request and
response interceptors (per stream chunk too), `usage.handle` and `request.complete`.

Where they run: on every request a native executor serves (`NativeProvider.serve`), in
CPA's order — model routers first (before the executor is chosen), then
`request.intercept_before` and `request.intercept_after` (no credentials are chosen in
between here, so they run back to back), the executor, then
`response.intercept_after` on a successful unary answer or
`response.intercept_stream_chunk` on each chunk of a stream, and after the request,
off its path, `usage.handle` and `request.complete`. Requests that the gateway's own
providers (process plugins, engines) serve do not pass through these hooks yet. The
translation hooks (`request.translate`/`normalize`, `response.translate`/`normalize_*`)
run around the executor in module `translate`, the thinking appliers in `thinking`.

Precedence (spec §3.2): the plugins that declare a capability, highest `priority`
first, ties by plugin ID. Interceptors chain (each sees the previous one's output;
the first `Terminate` ends the request, the first `DropChunk` drops the chunk); the
model router is first-wins (the first `Handled` answer naming a target that can serve,
else the next router); usage and lifecycle events are broadcast to every plugin that
declares them. An interceptor that fails is logged and counts as "not handled", as in
CPA; it never fails the request.

Events are delivered on system tasks detached from the request (a client that leaves
does not cancel them, CPA's bug #5244), one at a time per plugin (a plugin's counters
need not be thread-safe, spec §9.10), and dropped with a warning when a plugin has
more than `EVENT_BACKLOG` waiting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import trio

from aogstream import errors
from aogstream.host.native import gojson as gj
from aogstream.host.native.abi import CallError

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")

HISTORY_CHUNKS = 64  # response.intercept_stream_chunk's history: at most 64 chunks …
HISTORY_BYTES = 1 << 20  # … and 1 MiB
EVENT_BACKLOG = 1000  # usage/lifecycle events waiting per plugin before new ones drop
_FAILED = (CallError, gj.ReplyError, gj.EnvelopeError)


def rfc3339(ts: float) -> str:
    """A wall-clock time as Go's `time.Time` marshals it (RFC 3339, nanoseconds)."""
    dt = datetime.fromtimestamp(ts, UTC)
    frac = f"{min(round((ts % 1) * 1e9), 999_999_999):09d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


@attrs.define
class RequestInfo:
    """What the hooks of one request are told about it."""

    request_id: str
    model: str  # the model the executor runs (after a router's `TargetModel`)
    requested_model: str  # the model the client named
    stream: bool
    source_format: str = "openai"
    to_format: str = "openai"
    headers: dict[str, list[str]] = attrs.Factory(dict)
    started: float = attrs.Factory(time.time)
    started_mono: float = attrs.Factory(time.monotonic)
    first_byte: float | None = None  # monotonic time of the first answer byte
    provider: str = ""  # the serving plugin's provider key
    executor: str = ""  # the serving plugin's ID
    auth: Any = None  # the auth record the executor call carries (`auths.AuthRecord`)


class Terminated(Exception):
    """A request interceptor ended the request with its own answer."""

    def __init__(self, plugin: str, status: int, body: bytes) -> None:
        super().__init__(f"request terminated by native plugin {plugin}")
        self.plugin = plugin
        self.status = status
        self.body = body

    def error(self) -> errors.GatewayError:
        """The answer as the error the door writes (the plugin's status; its body's
        `error.message`, or the body itself, as the message)."""
        message = self.body.decode("utf-8", "replace").strip()
        try:
            doc = json.loads(self.body)
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"]
            elif isinstance(err, str):
                message = err
        except ValueError:
            pass
        code = errors.PLUGIN_BAD_REQUEST.code if self.status < 500 else \
            errors.PLUGIN_SERVICE_ERROR.code
        return errors.GatewayError(errors.Bcode(self.status, code),
                                   message or f"request refused by native plugin {self.plugin}")


def usage_detail(body: dict[str, Any]) -> dict[str, int] | None:
    """An OpenAI `usage` object as CPA's `Detail` (None when there is none)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None

    def num(obj: Any, key: str) -> int:
        v = obj.get(key) if isinstance(obj, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = num(prompt_details, "cached_tokens")
    return {"InputTokens": num(usage, "prompt_tokens"),
            "OutputTokens": num(usage, "completion_tokens"),
            "ReasoningTokens": num(completion_details, "reasoning_tokens"),
            "CachedTokens": cached, "CacheReadTokens": cached, "CacheCreationTokens": 0,
            "TotalTokens": num(usage, "total_tokens")}


def _header_merge(headers: dict[str, list[str]], reply: Any) -> None:
    """CPA's header merge: delete `ClearHeaders`, then replace each key in `Headers`."""
    clear = gj.field(reply, "ClearHeaders", [])
    if isinstance(clear, list):
        low = {str(c).lower() for c in clear}
        for key in [k for k in headers if k.lower() in low]:
            del headers[key]
    new = gj.field(reply, "Headers", {})
    if isinstance(new, dict):
        for key, values in new.items():
            for old in [k for k in headers if k.lower() == str(key).lower()]:
                del headers[old]
            if isinstance(values, list):
                headers[str(key)] = [str(v) for v in values]
            elif isinstance(values, str):
                headers[str(key)] = [values]


class Hooks:
    """The hooks of the native plugins of one gateway process."""

    def __init__(self, plugins: Callable[[], Iterable[NativePlugin]]) -> None:
        self._plugins = plugins
        self._backlog: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}

    def wants_usage(self, but: str = "") -> bool:
        """Some running plugin takes `usage.handle`: only then is an answer's usage read
        (a non-stream answer parsed once more) for it."""
        return bool(self.having("usage_plugin", but=but))

    def having(self, capability: str, *, but: str = "") -> list[NativePlugin]:
        """The running plugins that declare `capability`, in precedence order."""
        found = [p for p in self._plugins()
                 if p.state == "running" and p.id != but and
                 gj.boolean(p.capabilities, capability)]
        return sorted(found, key=lambda p: (-p.priority, p.id))

    async def _call(self, plugin: NativePlugin, method: str, request: dict[str, Any],
                    request_id: str) -> Any:
        """One request-bound hook call under a callback scope of its own; None when it
        failed (logged: a failing hook is "not handled")."""
        scope = plugin.host.open_scope(plugin.id, request_id)
        try:
            return await plugin.call_raw(method, {**request, "host_callback_id": scope.id})
        except _FAILED as exc:
            log.warning("native plugin %s: %s failed (not handled): %s", plugin.id, method,
                        exc)
            return None
        finally:
            plugin.host.close_scope(scope)

    # ---- model.route -------------------------------------------------------------------

    async def route(self, info: RequestInfo, body: bytes,
                    targets: Callable[[str, str, NativePlugin], NativePlugin | None]
                    ) -> tuple[NativePlugin, str] | None:
        """The first router's valid answer: (the plugin whose executor serves, the
        target model); None when no router handles the request. `targets(kind,
        target, router)` finds the executor a `TargetKind`/`Target` names."""
        for plugin in self.having("model_router"):
            reply = await self._call(plugin, "model.route", {
                "Plugin": _metadata(plugin), "PluginID": plugin.id,
                "SourceFormat": info.source_format, "RequestedModel": info.requested_model,
                "Stream": info.stream, "Headers": gj.header_map(info.headers), "Query": None,
                "Body": body, "Metadata": None,
                "AvailableProviders": sorted({p.provider_key or p.id
                                              for p in self.having("executor")})},
                info.request_id)
            if not isinstance(reply, dict) or not gj.boolean(reply, "Handled"):
                continue
            kind = gj.text(reply, "TargetKind").lower() or "self"
            target = targets(kind, gj.text(reply, "Target"), plugin)
            if target is None:
                log.warning("native plugin %s: model.route named %s %r, which serves "
                            "nothing here; the next router decides", plugin.id, kind,
                            gj.text(reply, "Target"))
                continue
            model = gj.text(reply, "TargetModel") or info.requested_model
            log.info("native plugin %s routed %s to %s (%s)%s", plugin.id,
                     info.requested_model, target.id, model,
                     f": {gj.text(reply, 'Reason')}" if gj.text(reply, "Reason") else "")
            return target, model
        return None

    # ---- request interceptors ------------------------------------------------------------

    async def intercept_request(self, info: RequestInfo, body: bytes,
                                but: str = "") -> bytes:
        """`request.intercept_before`, then `request.intercept_after`, chained over
        every request interceptor; raises `Terminated` for the first `Terminate`.
        `info.headers` are updated in place."""
        plugins = self.having("request_interceptor", but=but)
        for method, to_format in (("request.intercept_before", ""),
                                  ("request.intercept_after", info.to_format)):
            for plugin in plugins:
                reply = await self._call(plugin, method, {
                    "RequestID": info.request_id, "TraceID": info.request_id,
                    "SourceFormat": info.source_format, "ToFormat": to_format,
                    "Model": info.model, "RequestedModel": info.requested_model,
                    "Stream": info.stream, "Headers": gj.header_map(info.headers),
                    "Body": body, "Metadata": None}, info.request_id)
                if not isinstance(reply, dict):
                    continue
                _header_merge(info.headers, reply)
                try:
                    new = gj.data(reply, "Body")
                    if gj.boolean(reply, "Terminate"):
                        status = gj.integer(reply, "StatusCode")
                        raise Terminated(plugin.id, status if 100 <= status <= 599 else 403,
                                         gj.data(reply, "ResponseBody"))
                except gj.ReplyError as exc:
                    log.warning("native plugin %s: %s answered %s (not handled)",
                                plugin.id, method, exc)
                    continue
                if new:
                    body = new
        return body

    # ---- response interceptors -----------------------------------------------------------

    async def intercept_response(self, info: RequestInfo, original: bytes, request: bytes,
                                 body: bytes, but: str = "") -> bytes:
        """`response.intercept_after` over a successful unary answer, chained."""
        for plugin in self.having("response_interceptor", but=but):
            reply = await self._call(plugin, "response.intercept_after", {
                "RequestID": info.request_id, "SourceFormat": info.source_format,
                "Model": info.model, "RequestedModel": info.requested_model,
                "Stream": info.stream, "RequestHeaders": gj.header_map(info.headers),
                "ResponseHeaders": None, "OriginalRequest": original, "RequestBody": request,
                "Body": body, "StatusCode": 200, "Metadata": None}, info.request_id)
            try:
                new = gj.data(reply, "Body") if isinstance(reply, dict) else b""
            except gj.ReplyError as exc:
                log.warning("native plugin %s: response.intercept_after answered %s",
                            plugin.id, exc)
                continue
            if new:
                body = new
        return body

    def chunk_chain(self, info: RequestInfo, original: bytes, request: bytes,
                    but: str = "") -> ChunkChain | None:
        plugins = self.having("response_stream_interceptor", but=but)
        return ChunkChain(self, plugins, info, original, request) if plugins else None

    # ---- events ------------------------------------------------------------------------

    def usage(self, info: RequestInfo, detail: dict[str, int] | None,
              failure: errors.GatewayError | None, but: str = "") -> None:
        """`usage.handle` to every usage plugin, off the request path (the event is not
        built when no plugin takes it)."""
        plugins = self.having("usage_plugin", but=but)
        if not plugins:
            return
        now = time.monotonic()
        event = {
            "Provider": info.provider, "ExecutorType": info.executor, "Model": info.model,
            "Alias": info.requested_model if info.requested_model != info.model else "",
            "APIKey": "", "AuthID": info.auth.id if info.auth else "",
            "AuthIndex": info.auth.id if info.auth else "",
            "AuthType": "oauth" if info.auth else "", "Source": "",
            "ReasoningEffort": "", "ServiceTier": "", "Generate": False,
            "RequestedAt": rfc3339(info.started),
            "Latency": int((now - info.started_mono) * 1e9),
            "TTFT": int((info.first_byte - info.started_mono) * 1e9)
            if info.first_byte is not None else 0,
            "Failed": failure is not None,
            "Failure": {"StatusCode": failure.bcode.status if failure else 0,
                        "Body": failure.message if failure else ""},
            "Detail": detail or {"InputTokens": 0, "OutputTokens": 0, "ReasoningTokens": 0,
                                 "CachedTokens": 0, "CacheReadTokens": 0,
                                 "CacheCreationTokens": 0, "TotalTokens": 0},
            "ResponseHeaders": None}
        for plugin in plugins:
            self._deliver(plugin, "usage.handle", event)

    def complete(self, info: RequestInfo, outcome: str, status: int, error: str,
                 but: str = "") -> None:
        """`request.complete` to every lifecycle plugin, off the request path."""
        for plugin in self.having("request_lifecycle_plugin", but=but):
            scope = plugin.host.open_scope(plugin.id, info.request_id)
            self._deliver(plugin, "request.complete", {
                "RequestID": info.request_id, "TraceID": info.request_id,
                "SourceFormat": info.source_format, "Model": info.model,
                "RequestedModel": info.requested_model, "Stream": info.stream,
                "Outcome": outcome, "StatusCode": status, "Error": error,
                "StartedAt": rfc3339(info.started), "CompletedAt": rfc3339(time.time()),
                "Metadata": None, "host_callback_id": scope.id}, scope)

    def _deliver(self, plugin: NativePlugin, method: str, event: dict[str, Any],
                 scope: Any = None) -> None:
        waiting = self._backlog.get(plugin.id, 0)
        if waiting >= EVENT_BACKLOG:
            log.warning("native plugin %s: %d events wait already; %s dropped", plugin.id,
                        waiting, method)
            if scope is not None:
                plugin.host.close_scope(scope)
            return
        self._backlog[plugin.id] = waiting + 1
        lock = self._locks.setdefault(plugin.id, trio.Lock())

        async def send() -> None:
            try:
                async with lock:  # one event at a time per plugin
                    await plugin.call_raw(method, event)
            except _FAILED as exc:
                log.warning("native plugin %s: %s failed: %s", plugin.id, method, exc)
            except Exception:  # a system task must never raise
                log.exception("native plugin %s: %s failed", plugin.id, method)
            finally:
                self._backlog[plugin.id] -= 1
                if scope is not None:
                    plugin.host.close_scope(scope)

        trio.lowlevel.spawn_system_task(send, name=f"native {plugin.id} {method}")


class ChunkChain:
    """`response.intercept_stream_chunk` over one stream: a header-only call
    (`ChunkIndex` -1) to each plugin, then each chunk through the chain with the
    history of the chunks sent before it. Schema ≥ 3 plugins get no
    `OriginalRequest`/`RequestBody` on the chunk calls (spec §1.3)."""

    def __init__(self, hooks: Hooks, plugins: list[NativePlugin], info: RequestInfo,
                 original: bytes, request: bytes) -> None:
        self.hooks = hooks
        self.plugins = plugins
        self.info = info
        self.original = original
        self.request = request
        self.index = -1
        self.history: list[bytes] = []
        self.history_bytes = 0

    def _request(self, plugin: NativePlugin, body: bytes | None) -> dict[str, Any]:
        bodies = self.index < 0 or plugin.schema_version < 3
        return {"RequestID": self.info.request_id, "SourceFormat": self.info.source_format,
                "Model": self.info.model, "RequestedModel": self.info.requested_model,
                "RequestHeaders": gj.header_map(self.info.headers), "ResponseHeaders": None,
                "OriginalRequest": self.original if bodies else None,
                "RequestBody": self.request if bodies else None, "Body": body,
                "HistoryChunks": list(self.history) if self.index >= 0 else None,
                "ChunkIndex": self.index, "Metadata": None}

    async def start(self) -> None:
        for plugin in self.plugins:
            await self.hooks._call(plugin, "response.intercept_stream_chunk",
                                   self._request(plugin, None), self.info.request_id)
        self.index = 0

    async def chunk(self, body: bytes) -> bytes | None:
        """The chunk after every interceptor; None when one dropped it."""
        for plugin in self.plugins:
            reply = await self.hooks._call(plugin, "response.intercept_stream_chunk",
                                           self._request(plugin, body), self.info.request_id)
            if not isinstance(reply, dict):
                continue
            if gj.boolean(reply, "DropChunk"):
                body = b""
                break
            try:
                new = gj.data(reply, "Body")
            except gj.ReplyError as exc:
                log.warning("native plugin %s: response.intercept_stream_chunk answered %s",
                            plugin.id, exc)
                continue
            if new:
                body = new
        self.index += 1
        if not body:
            return None
        self.history.append(body)
        self.history_bytes += len(body)
        while self.history and (len(self.history) > HISTORY_CHUNKS or
                                self.history_bytes > HISTORY_BYTES):
            self.history_bytes -= len(self.history.pop(0))
        return body


def _metadata(plugin: NativePlugin) -> dict[str, Any]:
    from aogstream.host.native.plugin import metadata_object

    return metadata_object(plugin.metadata)
