"""The hot routes, as raw ASGI in front of Quart: `/aog/v0.2/services/<service>`.

Quart costs 25–40 % CPU per request and cuts streams at its 60 s response timeout,
so service invocations (JSON, SSE, NDJSON, WebSocket) are served here and everything
else falls through to the Quart app. Raw ASGI has no safety net, so this module does
four things itself: it watches `receive()` for `http.disconnect` (a send after a
disconnect is silently dropped, and the provider would run on), it shields the final
`more_body=False` send (or hypercorn never closes the connection), it enforces a body
limit, and it sets no response timeout on streams.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any

import trio

from aogstream import SPEC_VERSION, errors
from aogstream.asgi_types import ASGIApp, Headers, Receive, Scope, Send
from aogstream.bidi import openai_realtime
from aogstream.bidi.limits import CLOSE_TRY_AGAIN_LATER, SessionLimit
from aogstream.bidi.realtime_asr import SERVER_ERROR, event, serve_realtime
from aogstream.bidi.realtime_asr import SERVICE as REALTIME_SERVICE
from aogstream.bidi.relay import serve_relay
from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.engines.pcm import is_wav
from aogstream.gateway import Gateway, Route
from aogstream.http import local_audio
from aogstream.http.asgi import (
    CLOSE_AFTER,
    JSON_HEADERS,
    ClientGone,
    check_fields,
    header,
    parse_object,
    query_object,
    read_body,
    send_json,
    served_by_headers,
)
from aogstream.http.converted_services import serve_converted_service
from aogstream.http.flavor_calls import FlavorCalls
from aogstream.http.front_doors import FrontDoors, is_front_door
from aogstream.http.provider_fallback import serve_with_fallback
from aogstream.invocation import Mode
from aogstream.sse.writer import write_stream

log = logging.getLogger(__name__)

PREFIX = f"/aog/{SPEC_VERSION}/services/"
# AOG's plugin guide tests a plugin with `POST /v0.2/services/chat` (no `/aog`) and a
# body `{"provider": <plugin>, "service": <service>, "data": <the request>}`
GUIDE_PREFIX = f"/{SPEC_VERSION}/services/"
# how long a refused WebSocket reads what the client still sends before closing (`linger`)
REFUSAL_LINGER_S = 2.0
# The subprotocol a browser offers on the AOG service sockets beside its key (browsers
# cannot set headers on a WebSocket), and the gateway selects; as `realtime` on OpenAI's.
WS_SUBPROTOCOL = "aogstream"


async def send_error(send: Send, err: errors.GatewayError) -> None:
    await send_json(send, err.status, err.body())


class HotRoutes:
    """ASGI dispatcher: service routes here, the rest to `fallback` (Quart)."""

    def __init__(self, gateway: Gateway, fallback: ASGIApp) -> None:
        self.gateway = gateway
        self.fallback = fallback
        self.max_body = gateway.config.max_body_bytes
        self.max_ws_frame = gateway.config.ws_max_message_bytes
        self.calls = FlavorCalls(gateway)
        self.front_doors = FrontDoors(gateway, self.max_body, self.calls)
        self.ws_sessions = SessionLimit(gateway.config.max_realtime_sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        kind = scope["type"]
        if path.startswith(GUIDE_PREFIX):  # the plugin guide's test command's path
            path = "/aog" + path
        if path.startswith(PREFIX):
            service = path[len(PREFIX):].strip("/")
            if service == "models" and "models" not in self.gateway.services():
                # no plugin serves models: the app answers from the store
                await self.fallback({**scope, "path": path}, receive, send)
                return
            if kind == "http":
                await self._http(scope, receive, send, service)
                return
            if kind == "websocket":
                await self._websocket(scope, receive, send, service)
                return
        elif kind == "websocket" and path.rstrip("/") == openai_realtime.PATH:
            await self._openai_realtime(scope, receive, send)
            return
        elif kind == "http" and is_front_door(path):  # OpenAI / Ollama / api_flavors
            await self.front_doors(scope, receive, send)
            return
        await self.fallback(scope, receive, send)

    # ---- HTTP -----------------------------------------------------------------------

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        cfg = self.gateway.config
        return await read_body(scope, receive, self.max_body, cfg.body_timeout,
                               cfg.body_min_rate)

    def _parse(self, scope: Scope, body: bytes) -> tuple[bytes, dict[str, Any]]:
        """The request as JSON bytes and the parsed object (AOG reads `stream` from it).

        A GET's query string becomes `{key: [values]}` as AOG does."""
        if scope["method"] == "GET":
            obj: Any = query_object(scope)
            return json.dumps(obj).encode(), obj
        obj = parse_object(body, 'e.g. {"model": ..., "messages": [...]}')
        return body, obj

    async def _http(self, scope: Scope, receive: Receive, send: Send, service: str) -> None:
        body_read = False
        try:
            if scope["method"] not in ("POST", "GET"):
                raise errors.GatewayError(errors.METHOD_NOT_ALLOWED,
                                          f"{scope['method']} is not allowed here; use POST "
                                          "(or GET with a query string)")
            self.gateway.check_service(service)  # unknown: fail before reading the body
            body = await self._read_body(scope, receive)
            body_read = True
            raw, obj = self._parse(scope, body)
            raw, obj, provider = unwrap_guide_envelope(raw, obj, service)
            if scope["method"] != "GET":  # a query string's values are lists of strings
                check_fields(obj, service)
            cfg = self.gateway.config
            if service == local_audio.AUDIO_SERVICE and await local_audio.inline_audio_path(
                    scope, obj, cfg.local_audio_paths, cfg.local_audio_max_bytes):
                raw = json.dumps(obj).encode()  # AOG's SDK names a local file
            save_wav = service == local_audio.SPEECH_SERVICE and \
                local_audio.wants_saved_wav(scope, obj, cfg.local_audio_paths)
            routes = self.gateway.routes(service, obj)
            if provider:
                routes = pick_provider(routes, provider, service)
            if routes[0].definition.expose_protocol.upper() in ("WEBSOCKET", "WSS"):
                raise errors.GatewayError(
                    errors.BAD_REQUEST,
                    f"service {service!r} is a WebSocket service; open a WebSocket to "
                    f"{PREFIX}{service} instead",
                )
        except errors.GatewayError as err:
            await send_json(send, err.status, err.body(), None if body_read else CLOSE_AFTER)
            return
        except ClientGone:
            return
        want_stream = obj.get("stream") is True
        ndjson = b"application/x-ndjson" in header(scope, b"accept")
        if self.calls.converts(routes):  # a provider whose config_ref is not aog:*
            await serve_converted_service(self.calls, service, raw, obj, routes, receive,
                                          send, ndjson=ndjson)
            return

        async def attempt(route: Route) -> errors.GatewayError | None:
            mode = route.mode_for(want_stream)
            served_by = served_by_headers(route)
            async with self.gateway.invoke(route, mode, raw) as inv:
                if mode is Mode.STREAM:
                    return await write_stream(inv, send, ndjson=ndjson,
                                              extra_headers=served_by)
                try:
                    data = await inv.result()
                except errors.GatewayError as err:
                    return err
                if save_wav:  # AOG's answer: the saved WAV's path in `url`
                    data = await local_audio.add_saved_wav(
                        data, self.gateway.config.data_dir / "audio")
                await _send_unary(send, data, served_by)
                return None

        async def answer_error(err: errors.GatewayError) -> None:
            await send_error(send, err)

        await serve_with_fallback(routes, attempt, answer_error, receive)

    # ---- WebSocket ------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send,
                         service: str) -> None:
        ws = AsgiWebSocket(receive, send)
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        try:
            route = self.gateway.route(service)
            if not route.definition.supports_bidirectional():
                raise errors.GatewayError(
                    errors.BAD_REQUEST,
                    f"service {service!r} is not a WebSocket service; POST to {PREFIX}{service}",
                )
        except errors.GatewayError as err:
            await _reject_ws(scope, send, ws, err)
            return
        # a browser sends its key as a subprotocol (`openai-insecure-api-key.<key>`, read
        # by the guard) beside this one: select it, never echo the key
        offered = openai_realtime.offered_subprotocols(scope)
        await ws.accept(WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
        conn_id = str(uuid.uuid4())
        with self.ws_sessions.session(service) as admitted:
            try:
                if not admitted:
                    await self._refuse_busy(ws, service, conn_id)
                elif service == REALTIME_SERVICE:
                    await serve_realtime(ws, self.gateway, route, conn_id, self.max_ws_frame)
                else:
                    await serve_relay(ws, self.gateway, route, conn_id)
            finally:
                with trio.CancelScope(shield=True):
                    await ws.close(CLOSE_TRY_AGAIN_LATER if not admitted else 1000)

    async def _openai_realtime(self, scope: Scope, receive: Receive, send: Send) -> None:
        """OpenAI's realtime transcription socket, on the realtime speech plugins."""
        ws = AsgiWebSocket(receive, send)
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        offered = openai_realtime.offered_subprotocols(scope)
        # a browser sends its key as a subprotocol: select "realtime", never echo the key
        await ws.accept("realtime" if "realtime" in offered else None)
        with self.ws_sessions.session(REALTIME_SERVICE) as admitted:
            try:
                if not admitted:
                    message = self.ws_sessions.message(REALTIME_SERVICE)
                    log.warning("refused a WebSocket session: %s", message)
                    await ws.send_text(json.dumps({"type": "error", "event_id": "event_busy",
                                                   "error": {"type": "server_error",
                                                             "code": "too_many_sessions",
                                                             "message": message, "param": None,
                                                             "event_id": None}}))
                    await linger(ws, REFUSAL_LINGER_S)
                else:
                    await openai_realtime.serve_openai_realtime(ws, scope, self.gateway,
                                                                str(uuid.uuid4()))
            finally:
                with trio.CancelScope(shield=True):
                    await ws.close(CLOSE_TRY_AGAIN_LATER if not admitted else 1000)

    async def _refuse_busy(self, ws: AsgiWebSocket, service: str, conn_id: str) -> None:
        """Over the session cap: say so in the service's own protocol, then `linger`
        before the close follows."""
        message = self.ws_sessions.message(service)
        log.warning("refused a WebSocket session: %s", message)
        if service == REALTIME_SERVICE:
            await ws.send_text(event("task-failed", conn_id, error_code=SERVER_ERROR,
                                     error_message=message))
        else:
            await ws.send_text(json.dumps({"error": message}))
        await linger(ws, REFUSAL_LINGER_S)


async def linger(ws: AsgiWebSocket, wait: float) -> None:
    """After a refusal, read (and drop) what the client sends until it closes or `wait`
    seconds pass. Clients send their first message (a run-task) as soon as the socket
    opens; a socket closed with it still unread is reset by the kernel instead of
    closed, and a reset can cost the client the very message that explains the close."""
    with trio.move_on_after(wait), contextlib.suppress(Disconnected):
        while True:
            await ws.receive()


def unwrap_guide_envelope(raw: bytes, obj: dict[str, Any], service: str
                          ) -> tuple[bytes, dict[str, Any], str]:
    """The request inside AOG's plugin-guide envelope `{"provider", "service", "data"}`
    (`data` is the request; `provider` names the plugin or provider that must serve it),
    or the body unchanged with no provider when it is not that envelope."""
    if not isinstance(obj.get("data"), dict) or not set(obj) <= {"provider", "service", "data"} \
            or len(obj) < 2:  # a bare {"data": ...} may be some service's own request
        return raw, obj, ""
    named = obj.get("service")
    if named is not None and named != service:
        raise errors.GatewayError(errors.BAD_REQUEST,
                                  f"the body names service {named!r} but was posted to "
                                  f"{PREFIX}{service}; post it to {PREFIX}{named}")
    provider = obj.get("provider") or ""
    if not isinstance(provider, str):
        raise errors.GatewayError(errors.BAD_REQUEST, "'provider' must be a plugin or "
                                  "provider name (a string)")
    inner: dict[str, Any] = obj["data"]
    return json.dumps(inner).encode(), inner, provider


def pick_provider(routes: list[Route], provider: str, service: str) -> list[Route]:
    """The routes served by `provider` (a plugin name such as `aliyun-plugin`, or a
    provider name such as `remote_aliyun-plugin_chat`), or a 404 naming the ones there are."""
    mine = [r for r in routes if provider in (r.provider.name, r.provider_name)]
    if not mine:
        offered = sorted({r.provider.name for r in routes})
        raise errors.GatewayError(errors.SERVICE_NOT_FOUND,
                                  f"provider {provider!r} does not serve {service!r} for this "
                                  f"request; it can be served by: {', '.join(offered)}")
    return mine


async def _send_unary(send: Send, data: bytes, extra: Headers) -> None:
    head = data[:1]
    if head in (b"{", b"["):
        ctype = b"application/json"
    elif is_wav(data):
        ctype = b"audio/wav"  # text-to-speech asked for raw audio
    else:
        ctype = b"application/octet-stream"
    headers = [(b"content-type", ctype), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": data, "more_body": False})


async def _reject_ws(scope: Scope, send: Send, ws: AsgiWebSocket,
                     err: errors.GatewayError) -> None:
    """Refuse with a real HTTP status when the server supports it, else close with a
    JSON error frame so the client learns why."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": err.status,
                    "headers": JSON_HEADERS})
        await send({"type": "websocket.http.response.body", "body": err.body()})
        return
    await ws.accept()
    await ws.send_text(json.dumps({"error": err.message, **err.to_dict()}))
    await ws.close(1008)
