"""Front doors for every flavor, as raw ASGI like the hot routes.

Apps written for OpenAI (`/v1/...`), Ollama (`/api/...`), OpenVINO Model Server
(`/v3/...`), or for any built-in flavor through AOG's
`/aog/v0.2/api_flavors/<flavor>/<endpoint>` (aog, openai, ollama, deepseek, aliyun, baidu,
tencent, openvino: each template's `endpoints` list decides which paths exist), reach the
same providers as the AOG routes. This module finds the door a path and method name and
answers model listings; the call itself (app flavor → AOG → provider flavor and back,
with provider fallback) is `flavor_calls`, and OpenAI's audio endpoints, which need
more than a template, are `openai_audio`. Every answer, stream chunk and error goes
back in the shape that ecosystem's client libraries parse (`flavor_errors`), so they
raise their own exception types instead of choking on an AOG error body.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from aogstream import SPEC_VERSION, errors
from aogstream.asgi_types import Receive, Scope, Send
from aogstream.convert import PIVOT, token_ids
from aogstream.gateway import Gateway
from aogstream.http.agent_doors import AgentDoors, agent_path
from aogstream.http.asgi import (
    CLOSE_AFTER,
    ClientGone,
    check_fields,
    header,
    parse_object,
    query_object,
    read_body,
    send_json,
)
from aogstream.http.flavor_calls import Door, FlavorCalls, run_conversion
from aogstream.http.flavor_errors import error_body
from aogstream.http.ollama_extras import OllamaExtras
from aogstream.http.openai_audio import OPENAI_MODEL_ALIASES, OpenAIAudio
from aogstream.http.rerank_door import RerankDoor, is_rerank_door
from aogstream.store import ModelRow

API_FLAVORS_PREFIX = f"/aog/{SPEC_VERSION}/api_flavors/"
# Bare paths of the templates with `install_raw_routes` (openai, ollama, openvino).
RAW_PREFIXES = ("/v1/", "/api/", "/v3/")
HTTP_METHODS = ("GET", "POST")
# `GET /api/tags` lists the downloaded models of these services (Ollama apps expect
# language models there); OpenAI-like listings show every service's models.
OLLAMA_MODEL_SERVICES = ("chat", "generate", "embed")


# Ollama's model management, served by the management app (`ollama_models`) next to
# AOG's own model routes: not front doors, so the request guard treats them as management.
OLLAMA_MANAGEMENT = ("/api/pull", "/api/delete")
# Ollama's other endpoints beyond the templates' (`ollama_extras`): read-only listings
# and the legacy single-prompt embeddings.
OLLAMA_EXTRAS = ("/api/show", "/api/ps", "/api/version", "/api/embeddings")


def is_front_door(path: str) -> bool:
    """Cheap prefix test for `HotRoutes` (only these paths come here)."""
    if path.startswith("/api/") and path.rstrip("/") in OLLAMA_MANAGEMENT:
        return False
    return path.startswith(RAW_PREFIXES) or path.startswith(API_FLAVORS_PREFIX)


class FrontDoors:
    """The flavor endpoints, built from the flavor templates' `endpoints` lists."""

    def __init__(self, gateway: Gateway, max_body: int,
                 calls: FlavorCalls | None = None) -> None:
        """Remember the gateway; templates are read at the first front-door request."""
        self.gateway = gateway
        self.max_body = max_body
        self.calls = calls or FlavorCalls(gateway)
        self.converter = self.calls.converter
        self.audio = OpenAIAudio(self.calls)
        self.rerank = RerankDoor(gateway, max_body, self.calls)
        self.agents = AgentDoors(gateway, self.calls, max_body)  # Responses, Anthropic
        self.ollama = OllamaExtras(self)
        # (flavor, path) → method → door; bare path → method → door (install_raw_routes)
        self._doors: dict[tuple[str, str], dict[str, Door]] | None = None
        self._raw: dict[str, dict[str, Door]] = {}
        self._listings: dict[str, list[Door]] = {}  # flavor → its GET model listings
        self._flavors: tuple[str, ...] = ()

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

    def template_doors(self) -> list[tuple[Door, bool]]:
        """Every door the flavor templates open, in template order, each with whether it
        also answers on its bare path (`install_raw_routes`; the first flavor to claim a
        bare path has it). The API description reads the doors from here."""
        self._index()
        assert self._doors is not None
        return [(door, self._raw.get(door.path, {}).get(door.method) is door)
                for by_method in self._doors.values() for door in by_method.values()]

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request on a front-door path."""
        path = scope.get("path", "")
        if is_rerank_door(path):  # no template names it: its own door
            await self.rerank(scope, receive, send)
            return
        agent = agent_path(path)
        if agent is not None:
            await self.agents(scope, receive, send, agent)
            return
        if path.rstrip("/") in OLLAMA_EXTRAS:
            await self.ollama.serve(scope, receive, send, path.rstrip("/"))
            return
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
                await self.audio.transcribe(scope, door, body, receive, send)
            elif door.flavor == "openai" and door.service == "text-to-speech":
                await self.audio.speech(door, body, receive, send)
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
        for name, row in await self.answering_models(
                OLLAMA_MODEL_SERVICES if door.flavor == "ollama" else None):
            if name not in seen:
                seen[name] = {"name": name, "model": name, "modified_at": row.updated_at,
                              "size": row.size, "owned_by": row.provider_name}
        aog = json.dumps({"models": list(seen.values())}).encode()
        conv = self.converter.between("models", door.flavor, PIVOT)
        out = run_conversion(lambda: conv.response(aog, {"Content-Type": "application/json"}),
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
        if alias and self.gateway.serves(alias):
            await send_json(send, 200, json.dumps({
                "id": item, "object": "model", "created": 0,
                "owned_by": f"aogstream (the default {alias} model)"}).encode())
            return
        raise errors.GatewayError(
            errors.PLUGIN_MODEL_NOT_FOUND,
            f"model {item!r} does not exist here; downloaded models: "
            f"{', '.join(sorted(seen)) or 'none'} (pull it first)")

    async def answering_models(self, services: tuple[str, ...] | None = None
                               ) -> list[tuple[str, ModelRow]]:
        """(model name, store row) of the downloaded models that can answer now, local
        ones first: a remote model only when its provider needs no key or has one (a
        client that picks the first listed model must not get a 401)."""
        providers = {p.provider_name: p
                     for p in await trio.to_thread.run_sync(self.gateway.store.providers)}
        out: list[tuple[bool, str, ModelRow]] = []
        for (svc, name), rows in self.gateway.downloaded_models().items():
            if services is not None and svc not in services:
                continue
            for row in rows:
                prov = providers.get(row.provider_name)
                local = row.service_source == "local"
                if local or prov is None or prov.auth_type in ("", "none") or prov.auth_key:
                    out.append((not local, name, row))
        out.sort(key=lambda item: (item[0], item[1]))
        return [(name, row) for _, name, row in out]

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

    async def _invoke(self, scope: Scope, door: Door, body: bytes, receive: Receive,
                      send: Send) -> None:
        """app → AOG (route on it) → provider flavor; the answer back the same way."""
        if door.method == "GET":  # AOG turns a GET's query string into {key: [values]}
            obj: dict[str, Any] = query_object(scope)
            body = json.dumps(obj).encode()
        else:
            obj = self._parse(door, body)
            if door.service == "embed" and token_ids.token_id_input(obj.get("input")):
                try:
                    obj["input"] = await trio.to_thread.run_sync(token_ids.decode, obj["input"])
                except token_ids.TokenIdsError as exc:
                    raise errors.GatewayError(errors.BAD_REQUEST, str(exc)) from None
                body = json.dumps(obj).encode()
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if door.service in ("embed", "models"):
            want_stream = False
        elif door.flavor == "ollama":
            want_stream = obj.get("stream") is not False  # Ollama streams by default
        else:
            want_stream = obj.get("stream") is True
        aog, aog_obj = self.calls.to_aog(door, body, obj, model, want_stream)
        routes = self.gateway.routes(door.service, aog_obj)
        ndjson = b"application/x-ndjson" in header(scope, b"accept")
        await self.calls.dispatch(door, routes, aog, model, want_stream, receive, send,
                                  ndjson=ndjson)
