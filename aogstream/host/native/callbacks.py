"""What native plugins call on the host (`host_api.call`), and the scopes that bind
those calls to the request that caused them.

Callbacks arrive on any thread (a worker thread of ours running the plugin's call, or
a thread the plugin made), re-entrantly. `host.log` and the per-chunk callbacks
(`host.stream.emit`/`close`, `host.http.stream_read`, through the queues of `bridge`)
are answered on that thread; every other callback runs as a trio task on the gateway's
loop (`trio.from_thread.run`), so it uses the gateway's HTTP client and its
cancellation while the plugin's thread waits.

Scopes (`host_callback_id`): the host opens one per request-bound call, sends its id,
and closes it when the call (for a streamed answer: the stream) ends. A callback that
names an open scope runs under that request's cancellation (the client leaving cancels
an outbound `host.http.do`) and logs with its request id; an unknown or expired id
falls back to no request (as CPA does).

Executor streams (`host.stream.emit`/`close`): the host registers a stream (a queue
of 16 chunks) before calling `executor.execute_stream`; `emit` blocks while 16 chunks
wait (backpressure into the invocation), and fails with "stream N is not open" once
the client has gone, which is how the plugin learns to stop.

Pull streams the plugin consumes: `host.http.do_stream` (read ahead by a task of the
host, up to 1 MiB; then `stream_read` answers what has arrived, up to 32 KiB,
`stream_close`) and `host.model.execute_stream` (the gateway's own
`/v1/chat/completions` over loopback, so a plugin's model call is routed, converted and
falls back exactly like a client's). Both close with the scope that opened them.
`host.model.*` speak `openai` only, and a plugin may not call the models it serves.
`host.auth.*` read and write the plugins' auth records (`auths`).

Why one module of this size: it is the one dispatcher behind `host_api.call`, and every
method it answers shares its tables (callback scopes, open streams by ID, the HTTP
client) and the rule that a call from any plugin thread is answered without blocking
the event loop; the auth callbacks, the thread bridge and the streams' queues already
live apart (`auths`, `bridge`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import trio

from aogstream.host import llm_gate
from aogstream.host.native import gojson as gj
from aogstream.host.native.auths import AuthError, AuthStore
from aogstream.host.native.bridge import PullQueue, PushQueue
from aogstream.plugin_config import PluginConfigFile

log = logging.getLogger("aogstream.native")

STREAM_BUFFER = 16  # CPA's bridge: emit blocks while this many chunks wait
HTTP_TIMEOUT = 120.0
HTTP_MAX_BODY = 32 * 1024 * 1024
OPENAI_NAMES = ("openai", "chat-completions", "chat_completions",
                "openai-chat-completions", "openai_chat_completions")
HTTP_READ_SIZE = 32 * 1024  # host.http.stream_read: CPA reads 32 KiB at a time
HTTP_READ_AHEAD = 1024 * 1024  # bytes of a pulled response read ahead for the plugin
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


class CallbackFailure(Exception):
    """A callback that fails: its message goes back as `host_call_failed`."""


@attrs.define(eq=False)
class Scope:
    """One request's callback scope: its plugin, request id, and what to cancel when
    it ends."""

    id: str
    plugin: str
    request_id: str
    closed: bool = False
    cancel_scopes: set[trio.CancelScope] = attrs.Factory(set)
    http_streams: set[str] = attrs.Factory(set)

    def close(self) -> None:
        self.closed = True
        for cs in list(self.cancel_scopes):
            cs.cancel()
        self.cancel_scopes.clear()


@contextmanager
def request_bound(scope: Scope | None) -> Iterator[trio.CancelScope]:
    """A cancel scope that ends with the request that opened `scope` (a plain one when
    the plugin named no request): a callback working for a request never outlives it.
    Like any cancel scope it absorbs that cancellation; check `cancelled_caught` after."""
    with trio.CancelScope() as cs:
        if scope is not None:
            scope.cancel_scopes.add(cs)
        try:
            yield cs
        finally:
            if scope is not None:
                scope.cancel_scopes.discard(cs)


@attrs.frozen
class StreamError:
    """An error chunk of an executor stream (`emit` with `error`, or `close` with one)."""

    message: str


@attrs.define(eq=False)
class HttpStream:
    """An outbound response a plugin pulls (`host.http.do_stream`/`stream_read`, read
    ahead into `buffer` by a task of the host; `host.model.execute_stream`, read on
    demand from `chunks`)."""

    id: str
    plugin: str
    response: httpx.Response
    chunks: Any  # the response's raw byte iterator
    scope: Scope | None
    lock: trio.Lock = attrs.Factory(trio.Lock)
    buffer: PullQueue | None = None
    pump: trio.CancelScope | None = None


@attrs.define(eq=False)
class ExecutorStream:
    """The host end of one streamed executor answer: chunks (bytes, or a
    `StreamError`) from the plugin's threads to the invocation."""

    id: str
    plugin: str
    queue: PushQueue


class HostServices:
    """The callbacks of every native plugin of one gateway process, and their scopes
    and streams. Create it inside the trio run (it keeps the loop's token)."""

    def __init__(self, max_body: int = HTTP_MAX_BODY, gateway_url: str = "",
                 own_models: Callable[[str], set[str]] | None = None,
                 trust: PluginConfigFile | None = None,
                 auths: AuthStore | None = None) -> None:
        """`gateway_url`: where `host.model.*` reach the gateway's own chat door;
        `own_models(plugin)`: the models that plugin serves (it may not call them);
        `trust`: the config.yaml whose `plugins.entries.<id>.llm` grants a plugin the
        right to name a model (`host.llm_gate`, as for process plugins' ctx.llm)."""
        self.token = trio.lowlevel.current_trio_token()
        self.max_body = max_body
        self.gateway_url = gateway_url
        self.own_models = own_models or (lambda _plugin: set())
        self.trust = trust
        self.auths = auths  # the plugins' auth records (`auths`)
        self._model_streams: dict[str, HttpStream] = {}
        self._ids = itertools.count(1)
        self._scopes: dict[str, Scope] = {}
        self._streams: dict[str, ExecutorStream] = {}
        self._http_streams: dict[str, HttpStream] = {}
        self._http: httpx.AsyncClient | None = None

    # ---- scopes and streams (called on the trio thread) -------------------------------

    def open_scope(self, plugin: str, request_id: str) -> Scope:
        scope = Scope(str(next(self._ids)), plugin, request_id)
        self._scopes[scope.id] = scope
        return scope

    def close_scope(self, scope: Scope) -> None:
        """The request ended: cancel what it started, close the HTTP streams it opened."""
        self._scopes.pop(scope.id, None)
        scope.close()
        for sid in list(scope.http_streams):
            stream = self._http_streams.pop(sid, None) or self._model_streams.pop(sid, None)
            if stream is None:
                continue
            if stream.pump is not None:  # the pump closes the response
                stream.pump.cancel()
            else:  # CPA's implicit close at the end of the scope
                trio.lowlevel.spawn_system_task(stream.response.aclose)

    def open_stream(self, plugin: str) -> ExecutorStream:
        stream = ExecutorStream(str(next(self._ids)), plugin,
                                PushQueue(self.token, STREAM_BUFFER))
        self._streams[stream.id] = stream
        return stream

    def abort_stream(self, stream: ExecutorStream) -> None:
        """The consumer is done (finished, failed or gone): later emits fail."""
        self._streams.pop(stream.id, None)
        stream.queue.abort()

    def end_streams(self, plugin: str, message: str) -> None:
        """End every open executor stream of `plugin` with an error (its host process
        died: no emit or close will come)."""
        for stream in list(self._streams.values()):  # one step: plugin threads pop too
            if stream.plugin != plugin:
                continue
            self._streams.pop(stream.id, None)
            stream.queue.end(StreamError(message), on_loop=True)

    async def aclose(self) -> None:
        for stream in [*self._http_streams.values(), *self._model_streams.values()]:
            await stream.response.aclose()
        self._http_streams.clear()
        self._model_streams.clear()
        if self._http is not None:
            await self._http.aclose()

    async def warm(self) -> None:
        """Make the HTTP client before the first callback needs it: building one loads
        the TLS trust store (a quarter second on a busy machine), which on the loop
        would stall every request in flight."""
        if self._http is None:
            self._http = await trio.to_thread.run_sync(_client)

    # ---- the entry point (any thread) ---------------------------------------------------

    def handle(self, plugin: str, method: str, data: bytes) -> bytes:
        """Answer one callback of `plugin` with an envelope (never raises)."""
        try:
            if method == "host.log":
                return gj.ok(self._log(plugin, gj.loads(data) if data else {}))
            if method.startswith("host.auth."):  # files: on the plugin's thread
                if self.auths is None:
                    raise CallbackFailure(f"{method}: this gateway keeps no auth files")
                req = gj.loads(data) if data else {}
                try:
                    return gj.ok(self.auths.callback(method, req if isinstance(req, dict)
                                                     else {}))
                except (AuthError, OSError) as exc:
                    raise CallbackFailure(f"{method}: {exc}") from None
            if method in _ON_CALLER_THREAD:  # per chunk: no loop round trip
                req = gj.loads(data) if data else {}
                if not isinstance(req, dict):
                    raise CallbackFailure(f"{method}: the request must be a JSON object")
                return gj.ok(_ON_CALLER_THREAD[method](self, plugin, req))
            try:
                trio.lowlevel.current_trio_token()
            except RuntimeError:
                pass
            else:  # on the loop's own thread we cannot wait for the loop
                raise CallbackFailure(f"{method} called from the event loop thread")
            result = trio.from_thread.run(self._dispatch, plugin, method, data,
                                          trio_token=self.token)
            return gj.ok(result)
        except (CallbackFailure, gj.ReplyError) as exc:
            return gj.failure(str(exc))
        except trio.RunFinishedError:
            return gj.failure("the gateway is shutting down")
        except Exception as exc:  # every failure goes back as an envelope
            log.exception("native plugin %s: host callback %s failed", plugin, method)
            return gj.failure(f"{method} failed: {exc}")

    def handle_nowait(self, plugin: str, method: str, data: bytes) -> bytes | None:
        """`handle` for the callbacks that need not wait (`host.log`,
        `host.stream.close`, and `host.stream.emit` while its stream has room); None
        for any other, which must go through `handle` on a thread that may block. A
        relay of callbacks (`isolated`) answers these on its reader thread, without a
        thread handoff per chunk."""
        if method == "host.stream.emit":
            try:
                req = gj.loads(data) if data else {}
                stream = self._stream(plugin, req)
                err = gj.text(req, "error")
                item: bytes | StreamError = StreamError(err) if err else \
                    gj.data(req, "payload")
            except (CallbackFailure, gj.ReplyError) as exc:
                return gj.failure(str(exc))
            put = stream.queue.offer(item)
            if put is None:
                return None  # full: wait in `handle` (the backpressure)
            return gj.ok({}) if put else gj.failure(f"stream {stream.id} is not open")
        if method in ("host.log", "host.stream.close"):
            return self.handle(plugin, method, data)
        return None

    async def _dispatch(self, plugin: str, method: str, data: bytes) -> Any:
        req = gj.loads(data) if data else {}
        if not isinstance(req, dict):
            raise CallbackFailure(f"{method}: the request must be a JSON object")
        if method == "host.http.do":
            return await self._http_do(plugin, req)
        if method == "host.http.do_stream":
            return await self._http_do_stream(plugin, req)
        if method == "host.http.stream_close":
            return await self._http_close(plugin, req)
        if method == "host.model.execute":
            return await self._model_execute(plugin, req, stream=False)
        if method == "host.model.execute_stream":
            return await self._model_execute(plugin, req, stream=True)
        if method == "host.model.stream_read":
            return await self._model_read(plugin, req)
        if method == "host.model.stream_close":
            return await self._model_close(plugin, req)
        raise CallbackFailure(f"unsupported host callback {method}")

    def _scope(self, plugin: str, req: Any) -> Scope | None:
        scope = self._scopes.get(gj.text(req, "host_callback_id"))
        return scope if scope is not None and scope.plugin == plugin and not scope.closed \
            else None

    # ---- host.log --------------------------------------------------------------------

    def _log(self, plugin: str, req: Any) -> dict[str, Any]:
        level = _LEVELS.get(gj.text(req, "level").lower(), logging.DEBUG)
        if log.isEnabledFor(level):
            message = gj.text(req, "message") or "plugin log"
            fields = gj.field(req, "fields")
            scope = self._scopes.get(gj.text(req, "host_callback_id"))
            extra = f" request_id={scope.request_id}" if scope is not None else ""
            if isinstance(fields, dict) and fields:
                extra += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
            log.log(level, "plugin %s: %s%s", plugin, message, extra)
        return {}

    # ---- host.http.do ----------------------------------------------------------------

    def _outbound(self, req: dict[str, Any], what: str) -> httpx.Request:
        """The request a plugin asks for (a nested `request` takes precedence)."""
        inner = gj.field(req, "request")
        src = inner if isinstance(inner, dict) else req
        method = (gj.text(src, "method") or "GET").upper()
        url = gj.text(src, "url")
        if not url.startswith(("http://", "https://")):
            raise CallbackFailure(f"{what}: url must be http:// or https://, got {url!r}")
        headers: list[tuple[str, str]] = []
        raw_headers = gj.field(src, "headers")
        if isinstance(raw_headers, dict):
            for k, v in raw_headers.items():
                for item in v if isinstance(v, list) else [v]:
                    headers.append((str(k), str(item)))
        body = gj.data(src, "body")
        if self._http is None:
            self._http = _client()
        try:
            return self._http.build_request(method, url, headers=headers, content=body or None)
        except (httpx.HTTPError, ValueError) as exc:
            raise CallbackFailure(f"{what}: {exc}") from None

    async def _http_do(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        request = self._outbound(req, "host.http.do")
        method = request.method
        assert self._http is not None
        with request_bound(self._scope(plugin, req)):
            try:
                with trio.fail_after(HTTP_TIMEOUT):
                    resp = await self._http.send(request, stream=True)
                    try:
                        chunks, size = [], 0
                        async for chunk in resp.aiter_raw():
                            size += len(chunk)
                            if size > self.max_body:
                                raise CallbackFailure(
                                    f"host.http.do: the response is larger than "
                                    f"{self.max_body} bytes")
                            chunks.append(chunk)
                    finally:
                        await resp.aclose()
                    return {"StatusCode": resp.status_code,
                            "Headers": _headers(resp), "Body": b"".join(chunks)}
            except httpx.HTTPError as exc:
                raise CallbackFailure(f"host.http.do {method} failed: {exc!r}") from None
            except trio.TooSlowError:
                raise CallbackFailure(f"host.http.do: no complete answer within "
                                      f"{HTTP_TIMEOUT:g} s") from None
        raise CallbackFailure("host.http.do: the request that opened this scope has ended")

    async def _http_do_stream(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        """Open a response the plugin then pulls in 32 KiB reads; it belongs to the
        request's scope (closed with it) when the plugin names one."""
        request = self._outbound(req, "host.http.do_stream")
        assert self._http is not None
        scope = self._scope(plugin, req)
        with request_bound(scope) as cs:
            try:
                with trio.fail_after(HTTP_TIMEOUT):
                    resp = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise CallbackFailure(f"host.http.do_stream {request.method} failed: "
                                      f"{exc!r}") from None
            except trio.TooSlowError:
                raise CallbackFailure(f"host.http.do_stream: no answer within "
                                      f"{HTTP_TIMEOUT:g} s") from None
        if cs.cancelled_caught:
            raise CallbackFailure("host.http.do_stream: the request that opened this scope "
                                  "has ended")
        # aiter_raw() without a size: a size would hold bytes back until it filled
        stream = HttpStream(str(next(self._ids)), plugin, resp, resp.aiter_raw(), scope,
                            buffer=PullQueue(self.token, HTTP_READ_AHEAD),
                            pump=trio.CancelScope())
        self._http_streams[stream.id] = stream
        trio.lowlevel.spawn_system_task(self._pump, stream, name=f"native http {stream.id}")
        if scope is not None:
            scope.http_streams.add(stream.id)
        return {"status_code": resp.status_code, "headers": _headers(resp),
                "stream_id": stream.id}

    def _http_stream(self, plugin: str, req: Any) -> HttpStream:
        sid = _stream_id(req)
        stream = self._http_streams.get(sid)
        if stream is None or stream.plugin != plugin:
            raise CallbackFailure(f"http stream {sid} is not open")
        return stream

    async def _pump(self, stream: HttpStream) -> None:
        """Read the response ahead into the stream's buffer, bounded (a slow plugin
        slows the upstream), until its end, a failure, or the scope/stream closing."""
        buffer, pump = stream.buffer, stream.pump
        assert buffer is not None and pump is not None
        why = "the request that opened this stream has ended"
        try:
            with pump:
                if stream.scope is not None:
                    stream.scope.cancel_scopes.add(pump)
                try:
                    async for chunk in stream.chunks:  # as it arrives, ≤ 32 KiB a piece
                        for i in range(0, len(chunk), HTTP_READ_SIZE):
                            if not await buffer.put(chunk[i:i + HTTP_READ_SIZE]):
                                return
                    why = ""
                except httpx.HTTPError as exc:
                    why = f"reading the response failed: {exc!r}"
                finally:
                    if stream.scope is not None:
                        stream.scope.cancel_scopes.discard(pump)
        except Exception as exc:  # a system task must never raise
            log.exception("native plugin %s: reading http stream %s failed", stream.plugin,
                          stream.id)
            why = f"reading the response failed: {exc!r}"
        finally:
            buffer.finish(why)
            with trio.CancelScope(shield=True):
                await stream.response.aclose()

    def _http_read(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        """The bytes read ahead so far (up to 32 KiB, waiting for at least one piece):
        `{"payload": ...}`; the end `{"done": true}` (with `error` when it broke), as
        CPA answers (omitempty fields). Runs on the plugin's thread."""
        stream = self._http_stream(plugin, req)
        assert stream.buffer is not None
        data, error, _done = stream.buffer.take(HTTP_READ_SIZE, HTTP_TIMEOUT)
        if data:
            return {"payload": data}
        return {"error": error, "done": True} if error else {"done": True}

    async def _http_close(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        stream = self._http_stream(plugin, req)
        self._http_streams.pop(stream.id, None)
        if stream.scope is not None:
            stream.scope.http_streams.discard(stream.id)
        if stream.pump is not None:
            stream.pump.cancel()  # the pump closes the response
        if stream.buffer is not None:
            stream.buffer.finish("closed")
        else:
            await stream.response.aclose()
        return {}

    # ---- host.model.* ----------------------------------------------------------------

    def _model_request(self, plugin: str, req: dict[str, Any], stream: bool) -> httpx.Request:
        """The gateway's own chat door for a plugin's model call: the full routing,
        conversions and fallbacks of a client request. Only `openai` (Chat Completions)
        in and out, the one CPA format aogstream translates; a plugin may not call the
        models it serves itself (recursion guard)."""
        what = "host.model.execute_stream" if stream else "host.model.execute"
        entry = gj.text(req, "entry_protocol").lower() or "openai"
        exit_ = gj.text(req, "exit_protocol").lower() or entry
        if entry not in OPENAI_NAMES or exit_ not in OPENAI_NAMES:
            raise CallbackFailure(f"{what}: entry/exit protocol {entry}/{exit_} is not "
                                  f"supported; aogstream serves openai (Chat Completions)")
        if gj.field(req, "stream", False) is not stream:
            raise CallbackFailure(f"{what}: stream must be {str(stream).lower()}")
        if not self.gateway_url:
            raise CallbackFailure(f"{what}: the gateway's address is unknown")
        body = gj.data(req, "body")
        try:
            obj = gj.loads(body) if body else {}
        except gj.ReplyError as exc:
            raise CallbackFailure(f"{what}: body is {exc}") from None
        if not isinstance(obj, dict):
            raise CallbackFailure(f"{what}: body must be a JSON object")
        model = gj.text(req, "model") or (obj.get("model") if isinstance(obj.get("model"), str)
                                           else "")
        if model:
            obj["model"] = model
        if model in self.own_models(plugin):
            raise CallbackFailure(f"{what}: model {model!r} is served by plugin {plugin} "
                                  f"itself (a call to it would recurse)")
        if model and self.trust is not None:
            # naming a model is an override, granted per plugin like ctx.llm's
            snap = self.trust.read()
            policy = llm_gate.policy_from_config(snap.data, plugin, problem=snap.error)
            try:
                llm_gate.check_overrides(policy, plugin, model=model)
            except llm_gate.TrustDenied as exc:
                log.warning("plugin_llm %s", json.dumps({
                    "plugin": plugin, "op": what, "outcome": "denied", "code": "trust_denied",
                    "model": model}, separators=(",", ":")))
                raise CallbackFailure(f"{what}: {exc.message}") from None
        obj["stream"] = stream
        headers = [("Content-Type", "application/json")]
        raw_headers = gj.field(req, "headers")
        if isinstance(raw_headers, dict):
            for k, v in raw_headers.items():
                if str(k).lower() not in ("content-length", "host", "content-type"):
                    for item in v if isinstance(v, list) else [v]:
                        headers.append((str(k), str(item)))
        if self._http is None:
            self._http = _client()
        return self._http.build_request(
            "POST", f"{self.gateway_url}/v1/chat/completions", headers=headers,
            content=json.dumps(obj).encode(), timeout=httpx.Timeout(300.0, connect=10.0))

    async def _model_execute(self, plugin: str, req: dict[str, Any], *, stream: bool
                             ) -> dict[str, Any]:
        what = "host.model.execute_stream" if stream else "host.model.execute"
        request = self._model_request(plugin, req, stream)
        assert self._http is not None
        try:
            resp = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise CallbackFailure(f"{what} failed: {exc!r}") from None
        if not stream:
            try:
                body = await resp.aread()
            except httpx.HTTPError as exc:
                raise CallbackFailure(f"{what} failed: {exc!r}") from None
            finally:
                await resp.aclose()
            return {"status_code": resp.status_code, "headers": _headers(resp), "body": body}
        # detached from the request's cancellation; closed with its scope, when named
        scope = self._scope(plugin, req)
        handle = HttpStream(str(next(self._ids)), plugin, resp, resp.aiter_raw(), scope)
        self._model_streams[handle.id] = handle
        if scope is not None:
            scope.http_streams.add(handle.id)
        return {"status_code": resp.status_code, "headers": _headers(resp),
                "stream_id": handle.id}

    async def _model_read(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        """The next piece of the stream as the gateway wrote it (SSE bytes); always
        `payload`, `error` and `done`, and `done` without error for an unknown id."""
        stream = self._model_streams.get(_stream_id(req))
        if stream is None or stream.plugin != plugin:
            return {"payload": None, "error": "", "done": True}
        async with stream.lock:
            try:
                chunk = await stream.chunks.__anext__()
            except StopAsyncIteration:
                return {"payload": None, "error": "", "done": True}
            except httpx.HTTPError as exc:
                return {"payload": None, "error": f"the stream broke: {exc!r}", "done": True}
        return {"payload": chunk, "error": "", "done": False}

    async def _model_close(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        stream = self._model_streams.get(_stream_id(req))
        if stream is not None and stream.plugin == plugin:
            self._model_streams.pop(stream.id, None)
            if stream.scope is not None:
                stream.scope.http_streams.discard(stream.id)
            await stream.response.aclose()
        return {}

    # ---- host.stream.* ---------------------------------------------------------------

    def _stream(self, plugin: str, req: Any) -> ExecutorStream:
        sid = _stream_id(req)
        stream = self._streams.get(sid)
        if stream is None or stream.plugin != plugin:
            raise CallbackFailure(f"stream {sid} is not open")
        return stream

    def _emit(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        """`host.stream.emit`, on the plugin's thread: blocks while 16 chunks wait."""
        stream = self._stream(plugin, req)
        err = gj.text(req, "error")
        item: bytes | StreamError = StreamError(err) if err else gj.data(req, "payload")
        if not stream.queue.put(item):
            raise CallbackFailure(f"stream {stream.id} is not open")
        return {}

    def _close(self, plugin: str, req: dict[str, Any]) -> dict[str, Any]:
        """`host.stream.close`, on the plugin's thread (an `error` ends it so)."""
        stream = self._stream(plugin, req)
        self._streams.pop(stream.id, None)
        err = gj.text(req, "error")
        stream.queue.end(StreamError(err) if err else None)
        return {}


_ON_CALLER_THREAD: dict[str, Callable[[HostServices, str, dict[str, Any]], dict[str, Any]]] = {
    "host.stream.emit": HostServices._emit,
    "host.stream.close": HostServices._close,
    "host.http.stream_read": HostServices._http_read,
}


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False)


def _stream_id(req: Any) -> str:
    """A `stream_id` as a string (plugins send it as text or as a number)."""
    sid = gj.field(req, "stream_id", "")
    return str(int(sid)) if isinstance(sid, int | float) and not isinstance(sid, bool) \
        and math.isfinite(sid) else str(sid)


def _headers(resp: httpx.Response) -> gj.GoMap | None:
    """A response's headers as Go's `http.Header` (canonical keys, string arrays)."""
    out: dict[str, list[str]] = {}
    for k, v in resp.headers.multi_items():
        out.setdefault(_canonical(k), []).append(v)
    return gj.header_map(out)


def _canonical(name: str) -> str:
    """Go's canonical header key (`content-type` → `Content-Type`)."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))
