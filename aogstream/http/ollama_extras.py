"""Ollama's endpoints beyond the templates: `/api/version`, `/api/show`, `/api/ps` and
the legacy `/api/embeddings`.

Ollama's clients (the `ollama` Python and JS packages, Codex's `--oss` mode) call these
before or beside chat. The answers come from what the gateway already knows: the
downloaded models that can answer now (`FrontDoors.answering_models`), the service
each one serves (its capabilities), and for `/api/embeddings` an ordinary embed call
through the Ollama `embed` door. `/api/pull` and `/api/delete` change the model store,
so they are management routes (`ollama_models`). Errors are Ollama's `{"error": ...}`.
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

from aogstream import errors
from aogstream.asgi_types import Headers, Receive, Scope, Send
from aogstream.http.asgi import CLOSE_AFTER, ClientGone, parse_object, read_body, send_json
from aogstream.http.flavor_calls import Door
from aogstream.http.flavor_errors import error_body

if TYPE_CHECKING:
    from aogstream.http.front_doors import FrontDoors
    from aogstream.store import ModelRow

# What `/api/version` reports: Ollama's API as this gateway speaks it. Codex's `--oss`
# mode refuses anything below 0.13.4.
OLLAMA_VERSION = "0.13.5"
# service → Ollama capabilities of its models
CAPABILITIES = {"chat": ["completion", "tools"], "generate": ["completion"],
                "embed": ["embedding"]}
KEEP_ALIVE = datetime.timedelta(minutes=5)
METHODS = {"/api/version": "GET", "/api/ps": "GET", "/api/show": "POST",
           "/api/embeddings": "POST"}


def details(row: ModelRow) -> dict[str, Any]:
    """Ollama's `details` block; the store knows the format only by the file."""
    return {"parent_model": "", "format": "gguf" if row.service_source == "local" else "",
            "family": "", "families": None, "parameter_size": "", "quantization_level": ""}


class OllamaExtras:
    """The extra endpoints, answered from one gateway's front doors."""

    def __init__(self, doors: FrontDoors) -> None:
        self.doors = doors

    async def serve(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        body_read = False
        try:
            if scope["method"] != METHODS[path]:
                raise errors.GatewayError(errors.METHOD_NOT_ALLOWED,
                                          f"{scope['method']} is not allowed on {path}; "
                                          f"use {METHODS[path]}")
            if path == "/api/version":
                await send_json(send, 200, json.dumps({"version": OLLAMA_VERSION}).encode())
                return
            if path == "/api/ps":
                await self.ps(send)
                return
            cfg = self.doors.gateway.config
            body = await read_body(scope, receive, self.doors.max_body, cfg.body_timeout,
                                   cfg.body_min_rate)
            body_read = True
            obj = parse_object(body, 'with "model"')
            if path == "/api/show":
                await self.show(send, obj)
            else:
                await self.embeddings(scope, receive, send, obj)
        except errors.GatewayError as err:
            await send_json(send, err.status, error_body("ollama", err),
                            None if body_read or scope["method"] == "GET" else CLOSE_AFTER)
        except ClientGone:
            return

    async def _rows(self) -> dict[str, tuple[str, ModelRow]]:
        """model name → (service, row) of every model that can answer now."""
        out: dict[str, tuple[str, ModelRow]] = {}
        for name, row in await self.doors.answering_models():
            out.setdefault(name, (row.service_name, row))
        return out

    async def ps(self, send: Send) -> None:
        """The local models ready to answer (the gateway starts engines on demand, so
        "loaded" means ready to load; nothing here holds video memory)."""
        expires = (datetime.datetime.now(datetime.UTC) + KEEP_ALIVE).isoformat()
        models = [{"name": name, "model": name, "size": row.size, "digest": "",
                   "details": details(row), "expires_at": expires, "size_vram": 0}
                  for name, (_, row) in (await self._rows()).items()
                  if row.service_source == "local"]
        await send_json(send, 200, json.dumps({"models": models}).encode())

    async def show(self, send: Send, obj: dict[str, Any]) -> None:
        name = obj.get("model") or obj.get("name")
        if not isinstance(name, str) or not name:
            raise errors.GatewayError(errors.BAD_REQUEST,
                                      "'model' must name a model (see GET /api/tags)")
        rows = await self._rows()
        found = rows.get(name) or rows.get(name.removesuffix(":latest"))
        if found is None:
            raise errors.GatewayError(errors.PLUGIN_MODEL_NOT_FOUND,
                                      f"model '{name}' not found; models here: "
                                      f"{', '.join(sorted(rows)) or 'none'}")
        service, row = found
        caps = set()
        for (svc, model), _ in self.doors.gateway.downloaded_models().items():
            if model == row.model_name:
                caps.update(CAPABILITIES.get(svc, []))
        info = details(row)
        await send_json(send, 200, json.dumps({
            "modelfile": f"# served by aogstream ({row.provider_name})\nFROM {name}\n",
            "parameters": "", "template": "", "details": info,
            "model_info": {"general.architecture": info["family"] or "unknown",
                           "general.basename": name},
            "capabilities": sorted(caps) or CAPABILITIES.get(service, []),
            "modified_at": row.updated_at,
        }).encode())

    async def embeddings(self, scope: Scope, receive: Receive, send: Send,
                         obj: dict[str, Any]) -> None:
        """`{model, prompt}` → `{embedding}`, through the ordinary Ollama embed door."""
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise errors.GatewayError(errors.BAD_REQUEST, "'prompt' must be a string "
                                      "(or use POST /api/embed with 'input')")
        named = obj.get("model")
        model = named if isinstance(named, str) else None
        chosen: dict[str, Any] = {"model": model} if model else {}
        request: dict[str, Any] = {"input": prompt, **chosen,
                                   **{k: obj[k] for k in ("options", "keep_alive") if k in obj}}
        door = Door("ollama", "embed", "POST", "/api/embed")
        self.doors.gateway.check_service("embed")
        calls = self.doors.calls
        body = json.dumps(request).encode()
        aog, aog_obj = calls.to_aog(door, body, request, model, False)
        routes = self.doors.gateway.routes("embed", aog_obj)

        async def reply(data: bytes, ctype: bytes, served_by: Headers) -> None:
            answer = json.loads(data)
            vectors = answer.get("embeddings") if isinstance(answer, dict) else None
            vector = vectors[0] if isinstance(vectors, list) and vectors else []
            await send_json(send, 200, json.dumps({"embedding": vector}).encode(),
                            extra=served_by)

        await calls.dispatch(door, routes, aog, model, False, receive, send, reply=reply)
