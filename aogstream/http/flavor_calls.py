"""A call converted between flavors: app → AOG → provider, and every answer back.

A request that arrives in one flavor (an OpenAI app's, an Ollama app's, AOG's own) is
converted to AOG's shape (so model names and the hybrid policy route exactly as on
`/aog/v0.2/services/*`), then to the provider's `config_ref` flavor when that is not
AOG; the answer, each stream chunk and each error go back in the app's flavor. The
front doors (`front_doors`, `openai_audio`) and AOG's services route for providers of
another flavor (`converted_services`) all call through `FlavorCalls.dispatch`, which
tries the routes with the shared `provider_fallback`.

Streams whose two flavors match are relayed as the plugin's own bytes: the writer's raw
path, no per-chunk work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from aogstream import errors
from aogstream.asgi_types import Headers, Receive, Send
from aogstream.convert import (
    PIVOT,
    Conversion,
    Converted,
    Converter,
    ConvertError,
    TemplateError,
    chat_tools,
)
from aogstream.convert.engine import encode_body
from aogstream.engines.pcm import is_wav
from aogstream.gateway import Gateway, Route
from aogstream.http.asgi import send_json, served_by_headers
from aogstream.http.flavor_errors import conversion_error, error_body, template_error
from aogstream.http.provider_fallback import serve_with_fallback
from aogstream.invocation import Invocation, Mode
from aogstream.sse.writer import error_event, write_stream

log = logging.getLogger(__name__)

type Reply = Callable[[bytes, bytes, Headers], Awaitable[None]]
"""A unary answer's last step: (body, content type, served-by headers) → the response."""

type Streamer = Callable[[Invocation, Route, Headers], Awaitable[errors.GatewayError | None]]
"""A stream's writer when it is not SSE/NDJSON events (e.g. raw audio): (invocation,
route, served-by headers) → the error to answer with if it failed before any byte."""


class AogBody:
    """A request in AOG's shape, both ways a call may need it: parsed (routing, the
    provider's template) and as bytes (an AOG-flavored provider), each made at most
    once. A front door parses the app's body once and converts the parsed form
    (`Conversion.request_parsed`): app → AOG → provider costs one parse and one
    serialisation, not the four parses and two serialisations of bytes in between."""

    __slots__ = ("_ascii", "_data", "_obj")

    def __init__(self, data: bytes | None = None, obj: dict[str, Any] | None = None, *,
                 ascii_json: bool = False) -> None:
        """`data`, `obj` or both (the same request); `ascii_json`: serialise `obj` as
        `json.dumps` does, not compact (what the request looked like before)."""
        self._data = data
        self._obj = obj
        self._ascii = ascii_json

    @classmethod
    def of(cls, aog: AogBody | bytes) -> AogBody:
        """A caller's request as an AogBody (bytes are parsed only if needed)."""
        return aog if isinstance(aog, AogBody) else cls(aog)

    @property
    def data(self) -> bytes:
        """The request's bytes (serialised at the first need)."""
        if self._data is None:
            assert self._obj is not None
            self._data = json.dumps(self._obj).encode() if self._ascii \
                else encode_body(self._obj)
        return self._data

    @property
    def parsed(self) -> dict[str, Any] | None:
        """The parsed request, when the caller had it (bytes are not parsed here: a body
        that is not JSON must fail in the template's step, as it always did)."""
        return self._obj


@dataclass(frozen=True)
class Door:
    """One front-door endpoint: which flavor speaks it and which service it invokes."""

    flavor: str
    service: str
    method: str
    path: str = ""


def strip_sse(chunk: bytes) -> bytes:
    """Providers of other flavors may hand SSE-framed chunks: keep just the payload."""
    chunk = chunk.strip()
    if chunk.startswith(b"data:"):
        chunk = chunk[5:].strip()
    return chunk


def media_type(data: bytes) -> bytes | None:
    """The content type of a non-JSON provider answer (None for JSON, which converts)."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        return None
    if is_wav(data):
        return b"audio/wav"
    return b"application/octet-stream"


async def send_bytes(send: Send, status: int, body: bytes, ctype: bytes,
                     extra: Headers | None = None) -> None:
    """A complete response of any type; the last send shielded (see `send_json`)."""
    headers = [(b"content-type", ctype), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": body, "more_body": False})


def run_conversion(fn: Callable[[], Converted], *, request: bool = True) -> bytes:
    """Run a conversion: a request the templates cannot convert is the client's 400, an
    answer they cannot convert the provider's 502, a broken template a 500; each message
    says what failed, never where the templates live on this machine."""
    try:
        return fn().body
    except ConvertError as exc:
        raise conversion_error(exc, request=request) from None
    except TemplateError as exc:
        raise template_error(exc) from None


class FlavorCalls:
    """Converted calls to the gateway's providers (one per gateway; conversions cached)."""

    def __init__(self, gateway: Gateway, converter: Converter | None = None) -> None:
        self.gateway = gateway
        self.converter = converter or Converter()
        self._renamed: dict[tuple[str, str, str, str, str], Conversion] = {}

    @staticmethod
    def provider_flavor(route: Route, service: str) -> tuple[str, str, Path | None]:
        """The provider plugin's flavor and template service (its config_ref,
        "flavor:service") and its folder (where its own templates may live)."""
        ref = route.definition.config_ref or f"{PIVOT}:{service}"
        flavor, _, ref_service = ref.partition(":")
        return flavor or PIVOT, ref_service or service, route.provider.manifest.plugin_dir

    def between(self, service: str, app_flavor: str, route: Route) -> Conversion:
        """The conversion between the app's `service` and the provider's: AOG copies the
        pipelines of the template service its config_ref names under the plugin's own
        service name, so the two names may differ."""
        pflavor, pservice, pdir = self.provider_flavor(route, service)
        if pservice == service:
            return self.converter.between(service, app_flavor, pflavor, pdir)
        key = (service, app_flavor, pflavor, pservice, str(pdir or ""))
        conv = self._renamed.get(key)
        if conv is None:
            conv = Conversion(self.converter.service(app_flavor, service),
                              self.converter.service(pflavor, pservice, pdir))
            self._renamed[key] = conv
        return conv

    def converts(self, routes: list[Route]) -> bool:
        """Does any of these providers speak another flavor than AOG's? (Then AOG's
        services route must convert: `converted_services`.)"""
        return any(self.provider_flavor(r, r.service)[0] != PIVOT for r in routes)

    def to_aog(self, door: Door, body: bytes, obj: dict[str, Any], model: str | None,
               want_stream: bool) -> tuple[AogBody, dict[str, Any]]:
        """The request in AOG's shape (bytes and object); no `model` when the app named
        none, so routing picks the service's default model. `obj` is `body` parsed; it
        is converted as it is (never changed), not parsed again."""
        if door.flavor == PIVOT:
            return AogBody(body, obj), obj
        to_aog = self.converter.between(door.service, door.flavor, PIVOT)
        aog: bytes | None = None
        aog_obj: Any
        if to_aog.parses_requests:
            try:
                aog_obj = to_aog.request_parsed(obj, model=model or None, stream=want_stream)
            except ConvertError as exc:
                raise conversion_error(exc, request=True) from None
            except TemplateError as exc:
                raise template_error(exc) from None
            if aog_obj is obj:  # an identity template: what follows changes it in place
                aog_obj = dict(obj)
        else:
            aog = run_conversion(lambda: to_aog.request(body, model=model or None,
                                                        stream=want_stream))
            aog_obj = json.loads(aog)
        if not isinstance(aog_obj, dict):
            raise errors.GatewayError(errors.TASK_FAILED,
                                      f"the {door.flavor} template turned the request into "
                                      f"{type(aog_obj).__name__}, not an object")
        changed = door.flavor == "ollama" and door.service == "chat" and \
            chat_tools.ollama_request_to_aog(aog_obj)
        if not model and "model" in aog_obj:
            aog_obj.pop("model", None)
            changed = True
        if changed:
            aog = None
        return AogBody(aog, aog_obj, ascii_json=bool(changed)), aog_obj

    async def dispatch(self, door: Door, routes: list[Route], aog: AogBody | bytes,
                       model: str | None,
                       want_stream: bool, receive: Receive, send: Send, *,
                       ndjson: bool = False, reply: Reply | None = None,
                       streamer: Streamer | None = None,
                       error_flavor: str | None = None) -> None:
        """Try the providers in order (falling back on provider trouble before the first
        byte), answering in the door's flavor; `reply` finishes a unary answer and
        `streamer` writes a stream that is not the flavor's own events; `error_flavor`
        shapes errors when the door's clients expect another flavor's (a translated
        API, e.g. Anthropic's over the OpenAI chat door, or `rerank_door`)."""
        request = AogBody.of(aog)

        async def attempt(route: Route) -> errors.GatewayError | None:
            return await self._attempt(route, door, request, model, want_stream, send, ndjson,
                                       reply, streamer)

        async def answer_error(err: errors.GatewayError) -> None:
            await send_json(send, err.status, error_body(error_flavor or door.flavor, err))

        await serve_with_fallback(routes, attempt, answer_error, receive)

    async def _attempt(self, route: Route, door: Door, aog: AogBody, model: str | None,
                       want_stream: bool, send: Send, ndjson: bool, reply: Reply | None,
                       streamer: Streamer | None) -> errors.GatewayError | None:
        """One provider's attempt; returns the error when it failed before answering."""
        pflavor = self.provider_flavor(route, door.service)[0]
        mode = route.mode_for(want_stream)
        try:
            back = self.between(door.service, door.flavor, route)
            # `$model` and `$stream` are what the provider is asked for, as AOG's
            # scheduler binds them: the request's model, else the provider's default;
            # the final stream decision
            request = aog.data if pflavor == PIVOT else self._from_aog(
                route, door.service, aog, model or route.definition.default_model or None,
                mode is Mode.STREAM)
            if pflavor == "ollama" and door.service == "chat":
                request = chat_tools.aog_request_to_ollama(request)
        except chat_tools.ToolChoiceError as exc:
            return errors.GatewayError(errors.BAD_REQUEST, str(exc))
        except ConvertError as exc:
            return conversion_error(exc, request=True, who=route.provider_name)
        except TemplateError as exc:
            return template_error(exc, route.provider_name)
        served_by = served_by_headers(route)
        async with self.gateway.invoke(route, mode, request) as inv:
            if mode is Mode.STREAM:
                if streamer is not None:
                    return await streamer(inv, route, served_by)
                return await self._stream(inv, send, door, back, model, served_by, ndjson,
                                          aog, pflavor)
            try:
                data = await inv.result()
            except errors.GatewayError as err:
                return err
        media = media_type(data)
        if media is None:  # JSON: into the app's flavor
            if pflavor == "ollama" and door.service == "chat":
                data = chat_tools.OllamaProviderCalls().convert(data)
            data = run_conversion(lambda: back.response(
                data, {"Content-Type": "application/json"}, model=model), request=False)
            if door.flavor == "ollama" and door.service == "chat":
                data = chat_tools.ollama_answer_from_aog(data)
        if reply is not None:
            await reply(data, media or b"application/json", served_by)
        else:
            await send_bytes(send, 200, data, media or b"application/json", served_by)
        return None

    def _from_aog(self, route: Route, service: str, aog: AogBody, model: str | None,
                  stream: bool) -> bytes:
        """The provider's request from AOG's (its template's `request_from_aog`): on the
        parsed request when the door parsed it, else on its bytes."""
        conv = self.between(service, PIVOT, route)
        parsed = aog.parsed
        if parsed is not None and conv.parses_requests:
            value = conv.request_parsed(parsed, model=model, stream=stream)
            return b"" if value is None else encode_body(value)
        return conv.request(aog.data, model=model, stream=stream).body

    async def _stream(self, inv: Invocation, send: Send, door: Door, back: Conversion,
                      model: str | None, served_by: Headers,
                      ndjson_asked: bool, aog: AogBody | None = None,
                      pflavor: str = PIVOT) -> errors.GatewayError | None:
        """Relay a stream chunk by chunk in the app's framing (SSE or NDJSON).

        Returns the error to answer with when the call failed before its first chunk (so
        the caller can fall back or send a proper HTTP error status)."""
        sc = back.stream({"Content-Type": "text/event-stream"}, model=model)
        ctype = sc.content_type if not sc.passthrough else ""
        if door.flavor == PIVOT:  # AOG: SSE unless the client asks for NDJSON
            ndjson = ndjson_asked
        else:
            ndjson = "ndjson" in ctype or (not ctype and door.flavor == "ollama")

        def convert(chunk: bytes) -> bytes | None:
            try:
                return sc.convert(strip_sse(bytes(chunk)))
            except ConvertError as exc:
                log.warning("cannot convert a stream chunk: %s", exc)
                raise errors.GatewayError(errors.TASK_FAILED, "cannot convert a stream chunk: "
                                          f"{errors.without_paths(str(exc))}") from None

        steps: Callable[[bytes], bytes | None] = convert
        epilogue: Sequence[bytes] = [strip_sse(e) for e in sc.epilogue]
        if not sc.passthrough and door.service == "chat":
            steps, epilogue = chat_stream_steps(convert, epilogue, door.flavor, pflavor, aog)

        # the prologue/epilogue strings are the payload of an event ("[DONE]"), framed
        # like every other event: `data: [DONE]\n\n`, not a bare line (openvino's
        # template writes its epilogue with the `data: ` already in it)
        return await write_stream(
            # same flavor both sides: no per-chunk work, the plugin's SSE bytes go out as
            # they came (the writer's raw path)
            inv, send, ndjson=ndjson, extra_headers=served_by,
            convert=None if sc.passthrough else steps,
            prologue=[strip_sse(p) for p in sc.prologue],
            epilogue=epilogue,
            # AOG's last event of a failed stream is marked finished, as on /services
            error_tail=error_event if door.flavor == PIVOT else
            (lambda err: error_body(door.flavor, err)))


def chat_stream_steps(convert: Callable[[bytes], bytes | None], epilogue: Sequence[bytes],
                      app_flavor: str, provider_flavor: str, aog: AogBody | bytes | None
                      ) -> tuple[Callable[[bytes], bytes | None], Sequence[bytes]]:
    """The stateful chat steps around a converted stream's templates (`chat_tools`):
    an Ollama provider's calls numbered before them; after them, an Ollama app's calls
    joined whole, or an OpenAI-shaped app's closing usage chunk when it asked for one."""
    before: Callable[[bytes], bytes] | None = None
    if provider_flavor == "ollama":
        before = chat_tools.OllamaProviderCalls().convert
    after: Callable[[bytes | None], bytes | None] | None = None
    if app_flavor == "ollama":
        after = chat_tools.OllamaToolCallStream().convert
    elif app_flavor != PIVOT and aog is not None:
        body = AogBody.of(aog)
        request = body.parsed
        if request is None and b"include_usage" in body.data:
            request = json.loads(body.data)
        if isinstance(request, dict) and chat_tools.wants_usage(request):
            usage = chat_tools.OpenAIUsageStream(
                chat_tools.estimate_prompt_tokens(request), epilogue)
            after, epilogue = usage.convert, usage.epilogue
    if before is None and after is None:
        return convert, epilogue

    def steps(chunk: bytes) -> bytes | None:
        if before is not None:
            chunk = before(strip_sse(bytes(chunk)))
        out = convert(chunk)
        return after(out) if after is not None else out

    return steps, epilogue
