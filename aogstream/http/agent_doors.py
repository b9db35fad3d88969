"""The doors coding agents and chat SDKs knock on: `POST /v1/responses` (OpenAI's
Responses API) and `POST /v1/messages`, `/v1/messages/count_tokens` (Anthropic's
Messages API).

Each request is translated into the chat form (`aogstream.convert.formats`) and then
served exactly as a `POST /v1/chat/completions` would be: OpenAI flavor → AOG (routing,
hybrid policy) → provider flavor, with provider fallback, through `FlavorCalls.dispatch`.
The answer comes back as a chat answer or chat stream chunks, which the format's
translator turns into a `response` object / `message`, or into typed SSE events
(`event: <type>` + `data: <json>`, no `[DONE]`) with a per-stream state machine.

One exception: when the model's provider speaks the door's format itself
(`invocation.FormatSpeaker`: a native executor declaring `claude` or `openai-response`),
the body goes to it as the client sent it and its answer or events come back as they
are, without the chat form in between (CLIProxyAPI does the same when formats match).

Streaming keeps the chat door's properties: events are written as soon as a chunk
arrives (whatever is already waiting is coalesced into one write, never waited for),
and a client that hangs up cancels the provider call (`serve_with_fallback` watches
the connection). Errors come in each API's own shape: OpenAI's `{"error": {...}}` on
`/v1/responses`, Anthropic's `{"type": "error", "error": {...}}` on `/v1/messages`.

Stored responses are not kept: `previous_response_id` is refused with a 400 that says
to resend the history with `store: false`; `store` itself is accepted (answers say
`store: false`). Claude Code's `?beta=true` query string is ignored with the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aogstream import errors
from aogstream.asgi_types import Headers, Receive, Scope, Send
from aogstream.convert import ConvertError, anthropic, chat_tools, formats, upstream
from aogstream.convert.chat_form import InvalidRequest, dumps
from aogstream.convert.chat_stream import ChatStreamTranslator, Event
from aogstream.convert.chat_tools import estimate_prompt_tokens as prompt_tokens
from aogstream.gateway import Gateway, Route
from aogstream.http.asgi import (
    CLOSE_AFTER,
    ClientGone,
    parse_object,
    read_body,
    send_json,
    served_by_headers,
)
from aogstream.http.flavor_calls import Door, FlavorCalls, send_bytes, strip_sse
from aogstream.http.flavor_errors import error_body
from aogstream.http.provider_fallback import serve_with_fallback
from aogstream.invocation import FormatSpeaker, Invocation, Mode, TokenCounter
from aogstream.sse.writer import SSE_HEADERS, relay_batches

log = logging.getLogger(__name__)

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
PATHS = {RESPONSES: formats.OPENAI_RESPONSE, MESSAGES: formats.CLAUDE,
         COUNT_TOKENS: formats.CLAUDE}
# the chat door every translated request goes through
CHAT_DOOR = Door("openai", "chat", "POST", "/v1/chat/completions")


def agent_path(path: str) -> str | None:
    """The door's path when `path` is one of these doors (a trailing slash allowed)."""
    path = path.rstrip("/")
    return path if path in PATHS else None


def frame(event: Event) -> bytes:
    """One typed SSE event: `event:` equals the JSON `type`, then the one-line data."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + dumps(event).encode() + b"\n\n"


def frame_all(events: list[Event]) -> bytes:
    return b"".join(frame(e) for e in events)


class AgentDoors:
    """`/v1/responses`, `/v1/messages` and `/v1/messages/count_tokens` over the chat path."""

    def __init__(self, gateway: Gateway, calls: FlavorCalls, max_body: int) -> None:
        self.gateway = gateway
        self.calls = calls
        self.max_body = max_body

    def _error(self, path: str, status: int, message: str, param: str | None = None) -> bytes:
        if PATHS[path] == formats.CLAUDE:
            return json.dumps(anthropic.error_object(status, message), ensure_ascii=False).encode()
        kind = "invalid_request_error" if status < 500 else "server_error"
        return json.dumps({"error": {"message": message, "type": kind, "param": param,
                                     "code": None}}, ensure_ascii=False).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        fmt = PATHS[path]
        err_flavor = "anthropic" if fmt == formats.CLAUDE else "openai"
        body_read = False
        try:
            if scope["method"] != "POST":
                raise errors.GatewayError(errors.METHOD_NOT_ALLOWED,
                                          f"{scope['method']} is not allowed on {path}; use POST")
            cfg = self.gateway.config
            raw = await read_body(scope, receive, self.max_body, cfg.body_timeout,
                                  cfg.body_min_rate)
            body_read = True
            body = parse_object(raw, 'with "model" and the API\'s fields')
            if path == COUNT_TOKENS:
                await self._count_tokens(send, body)
                return
            self.gateway.check_service("chat")
            chat = formats.request_to_chat(fmt, body)
            await self._serve(fmt, body, chat, receive, send, err_flavor)
        except InvalidRequest as exc:
            await send_json(send, 400, self._error(path, 400, exc.message, exc.param))
        except errors.GatewayError as err:
            await send_json(send, err.status, error_body(err_flavor, err),
                            None if body_read else CLOSE_AFTER)
        except ClientGone:
            return

    async def _count_tokens(self, send: Send, body: dict[str, Any]) -> None:
        """`{"input_tokens": N}`: counted by the provider of the model when it counts
        for itself (a native executor's `executor.count_tokens`, `TokenCounter`), else
        estimated from the rendered text (engines expose no tokenizer call here), the
        same estimate `message_start` carries."""
        chat = anthropic.request_to_chat(body, count_only=True)
        count = prompt_tokens(chat)
        model = chat.get("model") if isinstance(chat.get("model"), str) else ""
        try:
            routes = self.gateway.routes("chat", {"model": model}) if model else []
        except errors.GatewayError:
            routes = []  # an unknown model is still estimated for, as before
        if routes and isinstance(routes[0].provider, TokenCounter):
            count = await routes[0].provider.count_tokens(formats.CLAUDE, body, chat)
        await send_json(send, 200, json.dumps({"input_tokens": count}).encode())

    async def _serve(self, fmt: str, body: dict[str, Any], chat: dict[str, Any],
                     receive: Receive, send: Send, err_flavor: str) -> None:
        model = chat.get("model") if isinstance(chat.get("model"), str) else None
        want_stream = body.get("stream") is True
        raw = dumps(chat).encode()
        aog, aog_obj = self.calls.to_aog(CHAT_DOOR, raw, chat, model, want_stream)
        routes = self.gateway.routes("chat", aog_obj)
        first = routes[0].provider if routes else None
        if isinstance(first, FormatSpeaker) and first.speaks(fmt):
            await self._same_format(routes[0], fmt, body, model, want_stream, receive, send,
                                    err_flavor)
            return
        estimate = prompt_tokens(chat)

        async def reply(data: bytes, ctype: bytes, served_by: Headers) -> None:
            try:
                answer = json.loads(data)
                if not isinstance(answer, dict):
                    raise ConvertError("the chat answer is not an object")
                name = answer.get("model") if isinstance(answer.get("model"), str) else model
                out = formats.response_from_chat(fmt, answer, body, name or "", estimate)
            except (ValueError, ConvertError) as exc:
                raise errors.GatewayError(errors.INVOKE_FAILED, "cannot convert the "
                                          f"provider's answer: {exc}") from None
            await send_bytes(send, 200, dumps(out).encode(), b"application/json", served_by)

        async def streamer(inv: Invocation, route: Route,
                           served_by: Headers) -> errors.GatewayError | None:
            name = model or route.definition.default_model or ""
            translator = formats.stream_from_chat(fmt, body, name, estimate)
            return await self._stream(inv, route, send, served_by, model, translator)

        await self.calls.dispatch(CHAT_DOOR, routes, aog, model, want_stream, receive, send,
                                  reply=reply, streamer=streamer, error_flavor=err_flavor)

    async def _same_format(self, route: Route, fmt: str, body: dict[str, Any],
                           model: str | None, want_stream: bool, receive: Receive, send: Send,
                           err_flavor: str) -> None:
        """A provider that speaks the door's format (`FormatSpeaker`, a native executor
        declaring it) gets the request as the client sent it and its answer goes back
        as is: a unary body unchanged, stream events re-framed one per SSE event; no
        chat form in between, as CPA does when the formats match."""
        raw = dumps(body).encode()
        mode = route.mode_for(want_stream)
        served_by = served_by_headers(route)
        closing = formats.stream_from_chat(fmt, body, model or "")

        def reframe(chunk: bytes) -> bytes:
            try:
                return frame_all([e for e in upstream.sse_events(bytes(chunk))
                                  if isinstance(e.get("type"), str)])
            except ConvertError as exc:
                raise errors.GatewayError(errors.TASK_FAILED, f"{exc}") from None

        async def attempt(route: Route) -> errors.GatewayError | None:
            async with self.gateway.invoke(route, mode, raw, metadata={"format": fmt}) as inv:
                if mode is Mode.STREAM:
                    return await write_events(
                        inv, send, served_by, reframe, b"", lambda: b"",
                        lambda err: frame_all(closing.fail(err.message)))
                try:
                    data = await inv.result()
                except errors.GatewayError as err:
                    return err
            await send_bytes(send, 200, data, b"application/json", served_by)
            return None

        async def answer_error(err: errors.GatewayError) -> None:
            await send_json(send, err.status, error_body(err_flavor, err))

        await serve_with_fallback([route], attempt, answer_error, receive)

    async def _stream(self, inv: Invocation, route: Route, send: Send, served_by: Headers,
                      model: str | None,
                      translator: ChatStreamTranslator) -> errors.GatewayError | None:
        """The provider's stream → chat chunks (the chat door's own conversion) → the
        format's events, framed and written as they come."""
        sc = self.calls.between("chat", CHAT_DOOR.flavor, route).stream(
            {"Content-Type": "text/event-stream"}, model=model)
        # an Ollama provider's whole, id-less calls numbered first, as on the chat door
        number_calls = chat_tools.OllamaProviderCalls().convert \
            if self.calls.provider_flavor(route, "chat")[0] == "ollama" else None

        def translate(chunk: bytes) -> bytes:
            try:
                raw = strip_sse(bytes(chunk))
                converted = sc.convert(number_calls(raw) if number_calls else raw)
                if converted is None or converted.strip() == b"[DONE]":
                    return b""
                obj = json.loads(converted)
            except (ValueError, ConvertError) as exc:
                log.warning("cannot convert a stream chunk: %s", exc)
                raise errors.GatewayError(errors.TASK_FAILED, "cannot convert a stream "
                                          f"chunk: {errors.without_paths(str(exc))}") from None
            if not isinstance(obj, dict):
                return b""
            return frame_all(translator.feed(obj))

        return await write_events(
            inv, send, served_by, translate, frame_all(translator.start()),
            lambda: frame_all(translator.finish()),
            lambda err: frame_all(translator.fail(err.message)))


async def write_events(inv: Invocation, send: Send, extra_headers: Headers,
                       translate: Callable[[bytes], bytes], start: bytes,
                       finish: Callable[[], bytes],
                       fail: Callable[[errors.GatewayError], bytes]) -> errors.GatewayError | None:
    """Relay `inv`'s chunks as typed SSE events: `start` with the first chunk, each
    chunk through `translate`, then `finish()` (or `fail(err)` after a failure), on the
    chat door's own batching loop (`sse.writer.relay_batches`).

    Returns the error to answer with instead when the call failed before its first
    chunk (so the caller can fall back or answer with a proper status)."""

    def frame(items: list[Any]) -> bytes:
        return b"".join(translate(chunk) for item in items
                        for chunk in (item if isinstance(item, list) else (item,)))

    def tail(failed: errors.GatewayError | None) -> bytes:
        return fail(failed) if failed is not None else finish()

    return await relay_batches(inv, send, [*SSE_HEADERS, *extra_headers], frame, start, tail)
