"""OpenAI- and Ollama-compatible front doors, as raw ASGI like the hot routes.

Apps written for OpenAI (`/v1/...`) or Ollama (`/api/...`), or for AOG's
`/aog/v0.2/api_flavors/<flavor>/<endpoint>`, reach the same providers as the AOG routes:
the request is converted from the app's flavor to AOG (so model names and the hybrid
policy route exactly as on `/aog/v0.2/services/*`), then from AOG to the provider's
`config_ref` flavor when that is not AOG, and every answer, stream chunk and error goes
back in the shape that ecosystem's client libraries parse, so they raise their own
exception types instead of choking on an AOG error body.
"""

from __future__ import annotations

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
from aogstream.http.asgi import (
    ClientGone,
    parse_object,
    read_body,
    send_json,
    served_by_headers,
    watch_disconnect,
)
from aogstream.invocation import Mode
from aogstream.sse.writer import write_stream

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
API_FLAVORS_PREFIX = f"/aog/{SPEC_VERSION}/api_flavors/"
RAW_PREFIXES = ("/v1/", "/api/")
FLAVORS = ("openai", "ollama")
# Services served on these doors; audio (transcriptions, speech) is not wired yet.
SERVICES = ("chat", "generate", "embed", "models")
# `GET /v1/models` and `GET /api/tags` list the downloaded models of these services.
MODEL_SERVICES = ("chat", "generate", "embed")


@dataclass(frozen=True)
class Door:
    """One front-door endpoint: which flavor speaks it and which service it invokes."""

    flavor: str
    service: str
    method: str


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
    code = "model_not_found" if err.bcode == errors.MODEL_NOT_FOUND else str(err.bcode.code)
    return json.dumps({"error": {"message": err.message, "type": kind, "code": code}},
                      ensure_ascii=False).encode()


def _ollama_error(err: errors.GatewayError) -> bytes:
    """Ollama's error body: the ollama client raises ResponseError with this string."""
    return json.dumps({"error": err.message}, ensure_ascii=False).encode()


def error_body(flavor: str, err: errors.GatewayError) -> bytes:
    """An error in the shape the flavor's clients expect."""
    return _ollama_error(err) if flavor == "ollama" else _openai_error(err)


def _strip_sse(chunk: bytes) -> bytes:
    """Providers of other flavors may hand SSE-framed chunks: keep just the payload."""
    chunk = chunk.strip()
    if chunk.startswith(b"data:"):
        chunk = chunk[5:].strip()
    return chunk


class FrontDoors:
    """The OpenAI/Ollama endpoints, built from the flavor templates' `endpoints` lists."""

    def __init__(self, gateway: Gateway, max_body: int,
                 converter: Converter | None = None) -> None:
        """Remember the gateway; templates are read at the first front-door request."""
        self.gateway = gateway
        self.max_body = max_body
        self.converter = converter or Converter()
        self._doors: dict[tuple[str, str], Door] | None = None  # (flavor, path) → door
        self._raw: dict[str, Door] = {}  # bare path → door (install_raw_routes)

    def _index(self) -> dict[tuple[str, str], Door]:
        """Every endpoint of the supported flavors, from the templates' `endpoints` lists."""
        if self._doors is None:
            doors: dict[tuple[str, str], Door] = {}
            for flavor in FLAVORS:
                fl = self.converter.registry.get(flavor)
                for svc in SERVICES:
                    sdef = fl.services.get(svc)
                    if sdef is None:
                        continue
                    for endpoint in sdef.info.get("endpoints") or []:
                        method, _, path = str(endpoint).partition(" ")
                        door = Door(flavor, svc, method.upper())
                        doors[(flavor, path)] = door
                        if sdef.info.get("install_raw_routes"):
                            self._raw[path] = door
            self._doors = doors
        return self._doors

    # ---- dispatch ---------------------------------------------------------------------

    def _find(self, path: str) -> tuple[str, Door | None]:
        """The flavor that owns `path` (for the error shape) and its door, if any."""
        doors = self._index()
        if path.startswith(API_FLAVORS_PREFIX):
            flavor, _, rest = path[len(API_FLAVORS_PREFIX):].partition("/")
            return flavor, doors.get((flavor, "/" + rest.rstrip("/")))
        door = self._raw.get(path.rstrip("/"))
        return ("ollama" if path.startswith("/api/") else "openai"), door

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        """Serve one HTTP request on a front-door path."""
        flavor, door = self._find(scope.get("path", ""))
        err_flavor = flavor if flavor in FLAVORS else "openai"
        try:
            if door is None:
                if flavor not in FLAVORS:
                    raise errors.GatewayError(
                        errors.SERVICE_NOT_FOUND,
                        f"flavor {flavor!r} has no front door here; supported flavors: "
                        f"{', '.join(FLAVORS)}")
                known = sorted(f"{d.method} {p}" for (f, p), d in self._index().items()
                               if f == flavor)
                raise errors.GatewayError(
                    errors.SERVICE_NOT_FOUND,
                    f"{scope.get('path')} is not a {flavor} endpoint served here; "
                    f"endpoints: {', '.join(known)}")
            if scope["method"] != door.method:
                raise errors.GatewayError(
                    errors.METHOD_NOT_ALLOWED,
                    f"{scope['method']} is not allowed on {scope.get('path')}; use {door.method}")
            if door.service == "models":
                await self._models(send, door)
                return
            self.gateway.check_service(door.service)
            body = await read_body(scope, receive, self.max_body)
            await self._invoke(door, body, receive, send)
        except errors.GatewayError as err:
            await send_json(send, err.status, error_body(err_flavor, err))
        except ClientGone:
            return

    # ---- model listing ----------------------------------------------------------------

    async def _models(self, send: Send, door: Door) -> None:
        """The downloaded models of chat/generate/embed, in the flavor's listing shape."""
        seen: dict[str, dict[str, Any]] = {}
        for (svc, name), rows in sorted(self.gateway._models.items()):
            if svc not in MODEL_SERVICES or name in seen or not rows:
                continue
            row = rows[0]
            seen[name] = {"name": name, "model": name, "modified_at": row.updated_at,
                          "size": row.size, "owned_by": row.provider_name}
        aog = json.dumps({"models": list(seen.values())}).encode()
        conv = self.converter.between("models", door.flavor, PIVOT)
        out = self._convert(lambda: conv.response(aog, {"Content-Type": "application/json"}))
        await send_json(send, 200, out)

    # ---- invocation -------------------------------------------------------------------

    @staticmethod
    def _convert(fn: Callable[[], Any]) -> bytes:
        """Run a conversion, turning template trouble into a clear 400/500."""
        try:
            return fn().body
        except ConvertError as exc:
            raise errors.GatewayError(errors.BAD_REQUEST,
                                      f"cannot convert the body: {exc}") from None
        except TemplateError as exc:
            raise errors.GatewayError(errors.TASK_FAILED, str(exc)) from None

    def _parse(self, door: Door, body: bytes) -> dict[str, Any]:
        """The app's JSON object, or a 400 naming what is wrong with it."""
        obj = parse_object(body, 'with "model" and the service\'s fields')
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

    def _provider(self, route: Route, service: str) -> tuple[str, Path | None]:
        """The provider plugin's flavor (from its config_ref) and its folder."""
        ref = route.definition.config_ref or f"{PIVOT}:{service}"
        flavor = ref.partition(":")[0] or PIVOT
        return flavor, route.plugin.manifest.plugin_dir

    async def _invoke(self, door: Door, body: bytes, receive: Any, send: Send) -> None:
        """app → AOG (route on it) → provider flavor; the answer back the same way."""
        obj = self._parse(door, body)
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if door.service == "embed":
            want_stream = False
        elif door.flavor == "ollama":
            want_stream = obj.get("stream") is not False  # Ollama streams by default
        else:
            want_stream = obj.get("stream") is True
        to_aog = self.converter.between(door.service, door.flavor, PIVOT)
        aog = self._convert(lambda: to_aog.request(body, model=model or None,
                                                   stream=want_stream))
        aog_obj = json.loads(aog)
        if not model:
            aog_obj.pop("model", None)
            aog = json.dumps(aog_obj).encode()
        routes = self.gateway.routes(door.service, aog_obj)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope)
            for i, route in enumerate(routes):
                may_retry = i < len(routes) - 1
                try:
                    early = await self._try(route, door, aog, model, want_stream, send)
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
                   want_stream: bool, send: Send) -> errors.GatewayError | None:
        """One provider's attempt; returns the error when it failed before answering."""
        pflavor, pdir = self._provider(route, door.service)
        try:
            back = self.converter.between(door.service, door.flavor, pflavor, pdir)
            request = aog if pflavor == PIVOT else self.converter.between(
                door.service, PIVOT, pflavor, pdir).request(aog).body
        except (TemplateError, ConvertError) as exc:
            return errors.GatewayError(errors.TASK_FAILED,
                                       f"{route.provider_name}: {exc}")
        mode = route.mode_for(want_stream)
        served_by = served_by_headers(route)
        async with self.gateway.invoke(route, mode, request) as inv:
            if mode is Mode.STREAM:
                return await self._stream(inv, send, door, back, model, served_by)
            try:
                data = await inv.result()
            except errors.GatewayError as err:
                return err
        out = self._convert(lambda: back.response(data, {"Content-Type": "application/json"},
                                                  model=model))
        await send_json(send, 200, out, served_by)
        return None

    async def _stream(self, inv: Any, send: Send, door: Door, back: Conversion,
                      model: str | None, served_by: list[tuple[bytes, bytes]]
                      ) -> errors.GatewayError | None:
        """Relay a stream chunk by chunk in the app's framing (SSE or NDJSON).

        Returns the error to answer with when the call failed before its first chunk (so
        the caller can fall back or send a proper HTTP error status)."""
        sc = back.stream({"Content-Type": "text/event-stream"}, model=model)
        ctype = sc.content_type if not sc.passthrough else ""
        ndjson = "ndjson" in ctype or (not ctype and door.flavor == "ollama")

        def convert(chunk: bytes) -> bytes | None:
            try:
                return sc.convert(_strip_sse(bytes(chunk)))
            except ConvertError as exc:
                raise errors.GatewayError(errors.TASK_FAILED,
                                          f"cannot convert a stream chunk: {exc}") from None

        # the prologue/epilogue strings are the payload of an event ("[DONE]"), framed
        # like every other event: `data: [DONE]\n\n`, not a bare line
        return await write_stream(
            inv, send, ndjson=ndjson, extra_headers=served_by, convert=convert,
            prologue=sc.prologue, epilogue=sc.epilogue,
            error_tail=lambda err: error_body(door.flavor, err))
