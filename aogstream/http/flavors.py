"""Front doors for every flavor, as raw ASGI like the hot routes.

Apps written for OpenAI (`/v1/...`), Ollama (`/api/...`), OpenVINO Model Server
(`/v3/...`), or for any built-in flavor through AOG's
`/aog/v0.2/api_flavors/<flavor>/<endpoint>` (aog, openai, ollama, deepseek, aliyun, baidu,
tencent, openvino: each template's `endpoints` list decides which paths exist), reach the
same providers as the AOG routes: the request is converted from the app's flavor to AOG
(so model names and the hybrid policy route exactly as on `/aog/v0.2/services/*`), then
from AOG to the provider's `config_ref` flavor when that is not AOG, and every answer,
stream chunk and error goes back in the shape that ecosystem's client libraries parse, so
they raise their own exception types instead of choking on an AOG error body.

The same machinery serves `/aog/v0.2/services/*` when a provider's plugin speaks another
flavor than AOG's (`config_ref: openai:chat`): `HotRoutes` hands such requests to
`serve_pivot`. OpenAI's audio endpoints need more than a template: transcriptions arrive
as multipart forms and leave as json/text/srt/vtt/verbose_json, speech leaves as audio
bytes (`aogstream.http.audio`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from aogstream import SPEC_VERSION, errors
from aogstream.convert import PIVOT, Conversion, Converter, ConvertError, TemplateError
from aogstream.gateway import Gateway, Route, may_fall_back
from aogstream.http import audio
from aogstream.http.asgi import (
    CLOSE_AFTER,
    ClientGone,
    check_fields,
    header,
    parse_object,
    query_object,
    read_body,
    send_json,
    served_by_headers,
    watch_disconnect,
)
from aogstream.invocation import Mode
from aogstream.sse.writer import error_event, write_stream

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
# A unary answer's last step: (body, content type, served-by headers) → the response.
Reply = Callable[[bytes, bytes, list[tuple[bytes, bytes]]], Awaitable[None]]
# A stream's writer when it is not SSE/NDJSON events (e.g. raw audio): (invocation,
# route, served-by headers) → the error to answer with if it failed before any byte.
Streamer = Callable[[Any, Route, list[tuple[bytes, bytes]]],
                    Awaitable[errors.GatewayError | None]]
API_FLAVORS_PREFIX = f"/aog/{SPEC_VERSION}/api_flavors/"
# Bare paths of the templates with `install_raw_routes` (openai, ollama, openvino).
RAW_PREFIXES = ("/v1/", "/api/", "/v3/")
HTTP_METHODS = ("GET", "POST")
# `GET /api/tags` lists the downloaded models of these services (Ollama apps expect
# language models there); OpenAI-like listings show every service's models.
OLLAMA_MODEL_SERVICES = ("chat", "generate", "embed")
# OpenAI's own model names stand for "the gateway's default model" of their service.
OPENAI_MODEL_ALIASES = {
    "whisper-1": "speech-to-text", "gpt-4o-transcribe": "speech-to-text",
    "gpt-4o-mini-transcribe": "speech-to-text", "tts-1": "text-to-speech",
    "tts-1-hd": "text-to-speech", "gpt-4o-mini-tts": "text-to-speech",
}
# OpenAI's voices are not local voices: they mean "the default voice".
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova",
                           "sage", "shimmer", "verse", "marin", "cedar"})
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = {"wav": b"audio/wav", "pcm": b"audio/pcm"}
OPENAI_PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz 16-bit signed little-endian mono
TEXT_PLAIN = b"text/plain; charset=utf-8"


@dataclass(frozen=True)
class Door:
    """One front-door endpoint: which flavor speaks it and which service it invokes."""

    flavor: str
    service: str
    method: str
    path: str = ""


def is_front_door(path: str) -> bool:
    """Cheap prefix test for `HotRoutes` (only these paths come here)."""
    return path.startswith(RAW_PREFIXES) or path.startswith(API_FLAVORS_PREFIX)


def _openai_error(err: errors.GatewayError) -> bytes:
    """OpenAI's error body: the openai client reads `error.message/type/code`."""
    if err.status == 404:
        kind = "not_found_error"
    elif err.status == 401:
        kind = "authentication_error"
    elif err.status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error"
    code = "model_not_found" if err.bcode == errors.PLUGIN_MODEL_NOT_FOUND else str(err.bcode.code)
    return json.dumps({"error": {"message": err.message, "type": kind, "code": code}},
                      ensure_ascii=False).encode()


def _ollama_error(err: errors.GatewayError) -> bytes:
    """Ollama's error body: the ollama client raises ResponseError with this string."""
    return json.dumps({"error": err.message}, ensure_ascii=False).encode()


def error_body(flavor: str, err: errors.GatewayError) -> bytes:
    """An error in the shape the flavor's clients expect: Ollama's, AOG's envelope, or
    OpenAI's (every other built-in flavor speaks an OpenAI-compatible API)."""
    if flavor == "ollama":
        return _ollama_error(err)
    if flavor == PIVOT:
        return err.body()
    return _openai_error(err)


def conversion_error(exc: ConvertError, *, request: bool,
                     who: str = "") -> errors.GatewayError:
    """A failed conversion as an answer: the request's is the client's mistake (400),
    the provider's answer's is the provider's (502). The template's folder is a server
    path, so the message keeps only the file name (the log keeps it all)."""
    log.warning("conversion failed%s: %s", f" for {who}" if who else "", exc)
    detail = errors.without_paths(str(exc))
    if request:
        return errors.GatewayError(errors.BAD_REQUEST,
                                   f"cannot convert the request: {detail}; check its fields "
                                   "against the API it was sent to")
    return errors.GatewayError(errors.INVOKE_FAILED,
                               f"cannot convert the provider's answer{f' ({who})' if who else ''}"
                               f": {detail}")


def template_error(exc: TemplateError, who: str = "") -> errors.GatewayError:
    """A flavor template that cannot serve this call: the gateway's problem (500)."""
    log.error("flavor template problem%s: %s", f" for {who}" if who else "", exc)
    return errors.GatewayError(errors.TASK_FAILED,
                               f"{who + ': ' if who else ''}{errors.without_paths(str(exc))}")


def _strip_sse(chunk: bytes) -> bytes:
    """Providers of other flavors may hand SSE-framed chunks: keep just the payload."""
    chunk = chunk.strip()
    if chunk.startswith(b"data:"):
        chunk = chunk[5:].strip()
    return chunk


def _media_type(data: bytes) -> bytes | None:
    """The content type of a non-JSON provider answer (None for JSON, which converts)."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return b"audio/wav"
    return b"application/octet-stream"


async def _send_bytes(send: Send, status: int, body: bytes, ctype: bytes,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete response of any type; the last send shielded (see `send_json`)."""
    headers = [(b"content-type", ctype), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": body, "more_body": False})


class FrontDoors:
    """The flavor endpoints, built from the flavor templates' `endpoints` lists."""

    def __init__(self, gateway: Gateway, max_body: int,
                 converter: Converter | None = None) -> None:
        """Remember the gateway; templates are read at the first front-door request."""
        self.gateway = gateway
        self.max_body = max_body
        self.converter = converter or Converter()
        # (flavor, path) → method → door; bare path → method → door (install_raw_routes)
        self._doors: dict[tuple[str, str], dict[str, Door]] | None = None
        self._raw: dict[str, dict[str, Door]] = {}
        self._listings: dict[str, list[Door]] = {}  # flavor → its GET model listings
        self._flavors: tuple[str, ...] = ()
        self._renamed: dict[tuple[str, str, str, str, str], Conversion] = {}

    def flavors(self) -> tuple[str, ...]:
        """The built-in flavors, each served under /aog/v0.2/api_flavors/<flavor>/."""
        if not self._flavors:
            self._flavors = tuple(self.converter.registry.known())
        return self._flavors

    def _index(self) -> dict[tuple[str, str], dict[str, Door]]:
        """Every HTTP endpoint of every built-in flavor, from the templates' `endpoints`
        (WebSocket and gRPC-only entries have no HTTP door)."""
        if self._doors is None:
            doors: dict[tuple[str, str], dict[str, Door]] = {}
            for flavor in self.flavors():
                fl = self.converter.registry.get(flavor)
                for svc, sdef in fl.services.items():
                    for endpoint in sdef.info.get("endpoints") or []:
                        method, _, path = str(endpoint).strip().partition(" ")
                        method, path = method.upper(), path.strip().rstrip("/")
                        if method not in HTTP_METHODS or not path.startswith("/"):
                            continue
                        door = Door(flavor, svc, method, path)
                        doors.setdefault((flavor, path), {})[method] = door
                        if sdef.info.get("install_raw_routes") and path.startswith(RAW_PREFIXES):
                            self._raw.setdefault(path, {}).setdefault(method, door)
                        if svc == "models" and method == "GET":
                            self._listings.setdefault(flavor, []).append(door)
            self._doors = doors
        return self._doors

    # ---- dispatch ---------------------------------------------------------------------

    def _find(self, path: str) -> tuple[str, dict[str, Door], str | None]:
        """The flavor that owns `path` (for the error shape), its doors by method, and
        the model id when the path is `<model listing>/<id>` (OpenAI's retrieve)."""
        doors = self._index()
        if path.startswith(API_FLAVORS_PREFIX):
            flavor, _, rest = path[len(API_FLAVORS_PREFIX):].partition("/")
            sub = "/" + rest.rstrip("/")
            found = doors.get((flavor, sub))
        else:
            sub = path.rstrip("/")
            found = self._raw.get(sub)
            flavor = next(iter(found.values())).flavor if found else (
                "ollama" if path.startswith("/api/") else
                "openvino" if path.startswith("/v3/") else "openai")
        if found:
            return flavor, found, None
        if flavor not in ("ollama", PIVOT):  # OpenAI-like: GET <listing>/{model id}
            for door in self._listings.get(flavor, []):
                if sub.startswith(door.path + "/") and len(sub) > len(door.path) + 1:
                    return flavor, {"GET": door}, sub[len(door.path) + 1:]
        return flavor, {}, None

    def _not_found(self, flavor: str, path: str) -> errors.GatewayError:
        """A 404 listing what this flavor does serve (or the flavors there are)."""
        if flavor not in self.flavors():
            return errors.GatewayError(
                errors.SERVICE_NOT_FOUND,
                f"flavor {flavor!r} has no front door here; supported flavors: "
                f"{', '.join(self.flavors())}")
        known = sorted(f"{d.method} {p}" for (f, p), ds in self._index().items()
                       if f == flavor for d in ds.values())
        return errors.GatewayError(
            errors.SERVICE_NOT_FOUND,
            f"{path} is not an endpoint of the {flavor} flavor; its endpoints: "
            f"{', '.join(known)}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Serve one HTTP request on a front-door path."""
        path = scope.get("path", "")
        flavor, methods, item = self._find(path)
        err_flavor = flavor if flavor in self.flavors() else "openai"
        body_read = False
        try:
            if not methods:
                raise self._not_found(flavor, path)
            door = methods.get(scope["method"])
            if door is None:
                allowed = " or ".join(sorted(methods))
                raise errors.GatewayError(
                    errors.METHOD_NOT_ALLOWED,
                    f"{scope['method']} is not allowed on {path}; use {allowed}")
            if door.service == "models":
                await self._models(send, door, item)
                return
            self.gateway.check_service(door.service)
            cfg = self.gateway.config
            body = await read_body(scope, receive, self.max_body, cfg.body_timeout,
                                   cfg.body_min_rate)
            body_read = True
            if door.flavor == "openai" and door.service == "speech-to-text":
                await self._transcribe(scope, door, body, receive, send)
            elif door.flavor == "openai" and door.service == "text-to-speech":
                await self._speech(door, body, receive, send)
            else:
                await self._invoke(scope, door, body, receive, send)
        except errors.GatewayError as err:
            await send_json(send, err.status, error_body(err_flavor, err),
                            None if body_read or scope["method"] == "GET" else CLOSE_AFTER)
        except ClientGone:
            return

    # ---- model listing ----------------------------------------------------------------

    async def _models(self, send: Send, door: Door, item: str | None) -> None:
        """The downloaded models in the flavor's listing shape; with `item`, that one
        model in OpenAI's retrieve shape (404 naming the ones there are)."""
        seen: dict[str, dict[str, Any]] = {}
        for (svc, name), rows in sorted(self.gateway._models.items()):
            if door.flavor == "ollama" and svc not in OLLAMA_MODEL_SERVICES:
                continue
            if name in seen or not rows:
                continue
            row = rows[0]
            seen[name] = {"name": name, "model": name, "modified_at": row.updated_at,
                          "size": row.size, "owned_by": row.provider_name}
        aog = json.dumps({"models": list(seen.values())}).encode()
        conv = self.converter.between("models", door.flavor, PIVOT)
        out = self._convert(lambda: conv.response(aog, {"Content-Type": "application/json"}),
                            request=False)
        if item is None:
            await send_json(send, 200, out)
            return
        listing = json.loads(out)
        entries = listing.get("data") if isinstance(listing, dict) else None
        for entry in entries or []:
            if isinstance(entry, dict) and entry.get("id") == item:
                await send_json(send, 200, json.dumps(entry, ensure_ascii=False).encode())
                return
        alias = OPENAI_MODEL_ALIASES.get(item)
        if alias and self.gateway._services.get(alias):
            await send_json(send, 200, json.dumps({
                "id": item, "object": "model", "created": 0,
                "owned_by": f"aogstream (the default {alias} model)"}).encode())
            return
        raise errors.GatewayError(
            errors.PLUGIN_MODEL_NOT_FOUND,
            f"model {item!r} does not exist here; downloaded models: "
            f"{', '.join(sorted(seen)) or 'none'} (pull it first)")

    # ---- conversion helpers -----------------------------------------------------------

    @staticmethod
    def _convert(fn: Callable[[], Any], *, request: bool = True) -> bytes:
        """Run a conversion: a request the templates cannot convert is the client's
        400, an answer they cannot convert the provider's 502, a broken template a 500;
        each message says what failed, never where the templates live on this machine."""
        try:
            return fn().body
        except ConvertError as exc:
            raise conversion_error(exc, request=request) from None
        except TemplateError as exc:
            raise template_error(exc) from None

    def _parse(self, door: Door, body: bytes) -> dict[str, Any]:
        """The app's JSON object, or a 400 naming what is wrong with it."""
        obj = parse_object(body, 'with "model" and the service\'s fields')
        check_fields(obj, door.service)
        if door.service == "chat" and not (isinstance(obj.get("messages"), list)
                                           and obj["messages"]):
            raise errors.GatewayError(errors.BAD_REQUEST,
                                      "'messages' must be a non-empty list of "
                                      "{role, content} objects")
        if door.service == "generate" and not isinstance(obj.get("prompt"), str):
            raise errors.GatewayError(errors.BAD_REQUEST, "'prompt' must be a string")
        if door.service == "embed" and not isinstance(obj.get("input"), str | list):
            raise errors.GatewayError(errors.BAD_REQUEST,
                                      "'input' must be a string or a list of strings")
        return obj

    @staticmethod
    def _provider(route: Route, service: str) -> tuple[str, str, Path | None]:
        """The provider plugin's flavor and template service (its config_ref,
        "flavor:service") and its folder (where its own templates may live)."""
        ref = route.definition.config_ref or f"{PIVOT}:{service}"
        flavor, _, ref_service = ref.partition(":")
        return flavor or PIVOT, ref_service or service, route.provider.manifest.plugin_dir

    def _between(self, service: str, app_flavor: str, route: Route) -> Conversion:
        """The conversion between the app's `service` and the provider's: AOG copies the
        pipelines of the template service its config_ref names under the plugin's own
        service name, so the two names may differ."""
        pflavor, pservice, pdir = self._provider(route, service)
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
        """Does any of these providers speak another flavor than AOG's? (Then the AOG
        route must convert, and `serve_pivot` does.)"""
        return any(self._provider(r, r.service)[0] != PIVOT for r in routes)

    def _to_aog(self, door: Door, body: bytes, obj: dict[str, Any], model: str | None,
                want_stream: bool) -> tuple[bytes, dict[str, Any]]:
        """The request in AOG's shape (bytes and object); no `model` when the app named
        none, so routing picks the service's default model."""
        if door.flavor == PIVOT:
            return body, obj
        to_aog = self.converter.between(door.service, door.flavor, PIVOT)
        aog = self._convert(lambda: to_aog.request(body, model=model or None,
                                                   stream=want_stream))
        aog_obj = json.loads(aog)
        if not isinstance(aog_obj, dict):
            raise errors.GatewayError(errors.TASK_FAILED,
                                      f"the {door.flavor} template turned the request into "
                                      f"{type(aog_obj).__name__}, not an object")
        if not model and "model" in aog_obj:
            aog_obj.pop("model", None)
            aog = json.dumps(aog_obj).encode()
        return aog, aog_obj

    # ---- JSON services ----------------------------------------------------------------

    async def _invoke(self, scope: dict[str, Any], door: Door, body: bytes, receive: Any,
                      send: Send) -> None:
        """app → AOG (route on it) → provider flavor; the answer back the same way."""
        if door.method == "GET":  # AOG turns a GET's query string into {key: [values]}
            obj: dict[str, Any] = query_object(scope)
            body = json.dumps(obj).encode()
        else:
            obj = self._parse(door, body)
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if door.service in ("embed", "models"):
            want_stream = False
        elif door.flavor == "ollama":
            want_stream = obj.get("stream") is not False  # Ollama streams by default
        else:
            want_stream = obj.get("stream") is True
        aog, aog_obj = self._to_aog(door, body, obj, model, want_stream)
        routes = self.gateway.routes(door.service, aog_obj)
        ndjson = b"application/x-ndjson" in header(scope, b"accept")
        await self._dispatch(door, routes, aog, model, want_stream, receive, send,
                             ndjson=ndjson)

    async def serve_pivot(self, service: str, aog: bytes, obj: dict[str, Any],
                          routes: list[Route], receive: Any, send: Send, *,
                          ndjson: bool = False) -> None:
        """`/aog/v0.2/services/<service>` when a provider speaks another flavor: the AOG
        request converted to the provider's flavor, the answer back to AOG's shapes."""
        door = Door(PIVOT, service, "POST")
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        try:
            await self._dispatch(door, routes, aog, model, obj.get("stream") is True,
                                 receive, send, ndjson=ndjson)
        except errors.GatewayError as err:
            await send_json(send, err.status, err.body())

    async def _dispatch(self, door: Door, routes: list[Route], aog: bytes, model: str | None,
                        want_stream: bool, receive: Any, send: Send, *, ndjson: bool = False,
                        reply: Reply | None = None, streamer: Streamer | None = None) -> None:
        """Try the providers in order (falling back on provider trouble before the first
        byte), answering in the door's flavor; `reply` finishes a unary answer and
        `streamer` writes a stream that is not events."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope)
            for i, route in enumerate(routes):
                may_retry = i < len(routes) - 1
                try:
                    early = await self._try(route, door, aog, model, want_stream, send,
                                            ndjson, reply, streamer)
                except errors.GatewayError as err:  # conversion trouble: answer, no fallback
                    early, may_retry = err, False
                if early is None:
                    break
                if may_retry and may_fall_back(early):
                    log.warning("%s failed (%s); trying %s", route.provider_name,
                                early.message, routes[i + 1].provider_name)
                    continue
                await send_json(send, early.status, error_body(door.flavor, early))
                break
            nursery.cancel_scope.cancel()

    async def _try(self, route: Route, door: Door, aog: bytes, model: str | None,
                   want_stream: bool, send: Send, ndjson: bool, reply: Reply | None,
                   streamer: Streamer | None = None) -> errors.GatewayError | None:
        """One provider's attempt; returns the error when it failed before answering."""
        pflavor = self._provider(route, door.service)[0]
        mode = route.mode_for(want_stream)
        try:
            back = self._between(door.service, door.flavor, route)
            # `$model` and `$stream` are what the provider is asked for, as AOG's
            # scheduler binds them: the request's model, else the provider's default;
            # the final stream decision
            request = aog if pflavor == PIVOT else self._between(
                door.service, PIVOT, route).request(
                    aog, model=model or route.definition.default_model or None,
                    stream=mode is Mode.STREAM).body
        except ConvertError as exc:
            return conversion_error(exc, request=True, who=route.provider_name)
        except TemplateError as exc:
            return template_error(exc, route.provider_name)
        served_by = served_by_headers(route)
        async with self.gateway.invoke(route, mode, request) as inv:
            if mode is Mode.STREAM:
                if streamer is not None:
                    return await streamer(inv, route, served_by)
                return await self._stream(inv, send, door, back, model, served_by, ndjson)
            try:
                data = await inv.result()
            except errors.GatewayError as err:
                return err
        media = _media_type(data)
        if media is None:  # JSON: into the app's flavor
            data = self._convert(lambda: back.response(
                data, {"Content-Type": "application/json"}, model=model), request=False)
        if reply is not None:
            await reply(data, media or b"application/json", served_by)
        else:
            await _send_bytes(send, 200, data, media or b"application/json", served_by)
        return None

    async def _stream(self, inv: Any, send: Send, door: Door, back: Conversion,
                      model: str | None, served_by: list[tuple[bytes, bytes]],
                      ndjson_asked: bool) -> errors.GatewayError | None:
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
                return sc.convert(_strip_sse(bytes(chunk)))
            except ConvertError as exc:
                log.warning("cannot convert a stream chunk: %s", exc)
                raise errors.GatewayError(errors.TASK_FAILED, "cannot convert a stream chunk: "
                                          f"{errors.without_paths(str(exc))}") from None

        # the prologue/epilogue strings are the payload of an event ("[DONE]"), framed
        # like every other event: `data: [DONE]\n\n`, not a bare line (openvino's
        # template writes its epilogue with the `data: ` already in it)
        return await write_stream(
            # same flavor both sides: no per-chunk work, the plugin's SSE bytes go out as
            # they came (the writer's raw path)
            inv, send, ndjson=ndjson, extra_headers=served_by,
            convert=None if sc.passthrough else convert,
            prologue=[_strip_sse(p) for p in sc.prologue],
            epilogue=[_strip_sse(e) for e in sc.epilogue],
            # AOG's last event of a failed stream is marked finished, as on /services
            error_tail=error_event if door.flavor == PIVOT else
            (lambda err: error_body(door.flavor, err)))

    # ---- OpenAI audio -----------------------------------------------------------------

    async def _transcribe(self, scope: dict[str, Any], door: Door, body: bytes,
                          receive: Any, send: Send) -> None:
        """`POST /v1/audio/transcriptions`: a multipart form with the audio file → AOG
        speech-to-text (base64 audio) → OpenAI's json/text/srt/vtt/verbose_json."""
        form = audio.parse_form(body, header(scope, b"content-type").decode("latin-1"))
        upload = form.get("file")
        if upload is None:
            raise audio.bad("the form has no 'file' field; send the audio file (wav, mp3, "
                            "flac, ogg ...) as a multipart file field named 'file'")
        if not upload.data:
            raise audio.bad(f"the uploaded 'file' ({upload.filename or 'no name'}) is empty; "
                            "send the audio file's bytes")

        def text(name: str) -> str | None:
            part = form.get(name)
            value = part.text().strip() if part is not None else ""
            return value or None

        fmt = text("response_format") or "json"
        if fmt not in TRANSCRIPT_FORMATS:
            raise audio.bad(f"response_format {fmt!r} is not supported; use one of "
                            f"{', '.join(TRANSCRIPT_FORMATS)}")
        if (text("stream") or "").lower() in ("true", "1"):
            raise audio.bad("streamed transcription is not supported here; send the "
                            "request without 'stream'")
        model = text("model")
        if model in OPENAI_MODEL_ALIASES:
            model = None  # "whisper-1": whatever the gateway's default model is
        request: dict[str, Any] = {"file": base64.b64encode(upload.data).decode()}
        for name in ("language", "prompt"):
            if (value := text(name)) is not None:
                request[name] = value
        if (temp := text("temperature")) is not None:
            try:
                request["temperature"] = float(temp)
            except ValueError:
                raise audio.bad(f"'temperature' must be a number from 0 to 1, not "
                                f"{temp!r}") from None
        if model:
            request["model"] = model
        aog, aog_obj = self._to_aog(door, json.dumps(request).encode(), request, model,
                                     False)
        routes = self.gateway.routes(door.service, aog_obj)

        async def reply(data: bytes, ctype: bytes, served_by: list[tuple[bytes, bytes]]
                        ) -> None:
            try:
                verbose = json.loads(data)
            except ValueError:
                verbose = None
            if not isinstance(verbose, dict):
                raise errors.GatewayError(errors.INVOKE_FAILED,
                                          "the speech-to-text provider answered no JSON "
                                          "transcript")
            text_out = str(verbose.get("text") or "")
            if fmt == "json":
                out, ctype = json.dumps({"text": text_out}, ensure_ascii=False).encode(), \
                    b"application/json"
            elif fmt == "verbose_json":
                out, ctype = json.dumps(verbose, ensure_ascii=False).encode(), \
                    b"application/json"
            elif fmt == "text":
                out, ctype = (text_out + "\n").encode(), TEXT_PLAIN
            elif fmt == "srt":
                out, ctype = audio.srt(verbose).encode(), TEXT_PLAIN
            else:
                out, ctype = audio.vtt(verbose).encode(), TEXT_PLAIN
            await _send_bytes(send, 200, out, ctype, served_by)

        await self._dispatch(door, routes, aog, model, False, receive, send, reply=reply)

    async def _speech(self, door: Door, body: bytes, receive: Any, send: Send) -> None:
        """`POST /v1/audio/speech`: OpenAI's JSON → AOG text-to-speech → audio bytes.

        OpenAI's default format is mp3, which nothing local produces: without
        `response_format` the answer is WAV; asking for a format that cannot be made is
        a 400 listing the ones that can."""
        obj = parse_object(body, 'with "input" (the text), "model" and "voice"')
        text = obj.get("input")
        if not isinstance(text, str) or not text.strip():
            raise audio.bad("'input' must be a non-empty string: the text to speak")
        fmt = obj.get("response_format") or "wav"
        if fmt not in SPEECH_FORMATS:
            raise audio.bad(f"response_format {fmt!r} cannot be produced here; use one of "
                            f"{', '.join(SPEECH_FORMATS)}")
        if obj.get("stream_format") not in (None, "audio"):
            raise audio.bad(f"stream_format {obj['stream_format']!r} is not supported; "
                            "use 'audio' (or leave it out)")
        voice = obj.get("voice")
        if isinstance(voice, dict):  # newer clients may send {"id": "..."}
            voice = voice.get("id")
        if voice is not None and not isinstance(voice, str):
            raise audio.bad(f"'voice' must be a string, not {type(voice).__name__}")
        if voice and voice.lower() in OPENAI_VOICES:
            voice = None  # an OpenAI voice: the default local voice speaks instead
        speed = obj.get("speed")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)):
            raise audio.bad(f"'speed' must be a number from 0.25 to 4.0, not {speed!r}")
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if model in OPENAI_MODEL_ALIASES:
            model = None  # "tts-1": the gateway's default text-to-speech model
        request: dict[str, Any] = {"input": text, "response_format": "wav"}
        if voice:
            request["voice"] = voice
        if speed is not None:
            request["speed"] = speed
        if model:
            request["model"] = model
        aog, aog_obj = self._to_aog(door, json.dumps(request).encode(), request, model,
                                     False)
        routes = self.gateway.routes(door.service, aog_obj)

        async def stream_pcm(inv: Any, route: Route, served_by: list[tuple[bytes, bytes]]
                             ) -> errors.GatewayError | None:
            return await self._stream_pcm(inv, route, door.service, send, served_by)

        async def reply(data: bytes, ctype: bytes, served_by: list[tuple[bytes, bytes]]
                        ) -> None:
            wav = data
            if ctype == b"application/json":  # a provider answering base64 audio in JSON
                try:
                    wav = base64.b64decode(json.loads(data).get("audio") or "")
                except (ValueError, AttributeError):
                    wav = b""
            if wav[:4] != b"RIFF":
                raise errors.GatewayError(errors.INVOKE_FAILED,
                                          "the text-to-speech provider answered no WAV audio")
            if fmt == "pcm":
                pcm, rate = audio.wav_pcm(wav)
                pcm = await trio.to_thread.run_sync(audio.resample_pcm16, pcm, rate,
                                                    OPENAI_PCM_RATE)
                await _send_bytes(send, 200, pcm, SPEECH_FORMATS["pcm"], served_by)
            else:
                await _send_bytes(send, 200, wav, SPEECH_FORMATS["wav"], served_by)

        # pcm is OpenAI's low-latency format: streamed sentence by sentence when the
        # provider streams (WAV needs its length up front, so it is sent whole)
        await self._dispatch(door, routes, aog, model, fmt == "pcm", receive, send,
                             reply=reply, streamer=stream_pcm)

    async def _stream_pcm(self, inv: Any, route: Route, service: str, send: Send,
                          served_by: list[tuple[bytes, bytes]]
                          ) -> errors.GatewayError | None:
        """A text-to-speech stream (AOG events with base64 PCM16 `audio` and its
        `sample_rate`) written as OpenAI's `pcm`: raw 24 kHz samples, each piece sent as
        soon as the provider has spoken it. Returns the error when nothing came."""
        try:
            to_aog = self._between(service, PIVOT, route).stream(
                {"Content-Type": "text/event-stream"})
        except TemplateError as exc:
            return template_error(exc, route.provider_name)

        async def pcm_of(item: Any) -> bytes:
            out = bytearray()
            for event in item if isinstance(item, list) else (item,):
                try:
                    chunk = to_aog.convert(_strip_sse(bytes(event)))
                    obj = json.loads(chunk) if chunk else None
                except (ConvertError, ValueError) as exc:
                    raise errors.GatewayError(errors.TASK_FAILED, "cannot read a speech chunk: "
                                              f"{errors.without_paths(str(exc))}") from None
                if not isinstance(obj, dict) or not obj.get("audio"):
                    continue  # the closing {finished: true} event
                try:
                    pcm = base64.b64decode(obj["audio"])
                    rate = int(obj.get("sample_rate") or OPENAI_PCM_RATE)
                except (ValueError, TypeError) as exc:
                    raise errors.GatewayError(errors.TASK_FAILED,
                                              f"a speech chunk has no PCM audio: {exc}") from None
                out += await trio.to_thread.run_sync(audio.resample_pcm16, pcm, rate,
                                                     OPENAI_PCM_RATE)
            return bytes(out)

        try:
            first = await inv.responses.receive()
        except trio.EndOfChannel:
            return inv.error or errors.GatewayError(
                errors.PLUGIN_SERVICE_ERROR, f"{route.provider_name}: the speech stream "
                "ended without audio")
        body = await pcm_of(first)  # a bad first chunk is still a proper error status
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", SPEECH_FORMATS["pcm"]), *served_by]})
        try:
            while True:
                if body:
                    await send({"type": "http.response.body", "body": body,
                                "more_body": True})
                try:
                    body = await pcm_of(await inv.responses.receive())
                except trio.EndOfChannel:
                    break
        except errors.GatewayError as err:  # headers are out: all we can do is stop
            log.warning("speech stream cut short: %s", err.message)
        if inv.error is not None:
            log.warning("speech stream cut short: %s", inv.error.message)
        with trio.CancelScope(shield=True):  # or hypercorn never closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None
