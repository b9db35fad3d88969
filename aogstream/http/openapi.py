"""The OpenAPI description of the HTTP API, generated from the routes that exist.

Three kinds of route serve HTTP, and each is read where it is defined, so a route added
anywhere is described without editing this file:

- the Quart routes (management, AOG's compatibility routes, CLIProxyAPI's management
  API, health, the observability routes): the app's URL map, with a summary from the
  view's docstring or its name;
- the service invocations, raw ASGI in `http.hot`: `/aog/v0.2/services/{service}` (and
  the plugin guide's `/v0.2/services/{service}`), which also accept WebSocket upgrades;
- the front doors of every flavor, from the flavor templates' `endpoints` lists, as
  `http.front_doors` reads them (bare `/v1/...`, `/api/...`, `/v3/...` paths where a
  template installs them, and `/aog/v0.2/api_flavors/<flavor>/...` for every flavor).

`SUMMARIES` adds a person's words to the operations a newcomer looks for first. The
test `tests/test_openapi.py` checks the description against the running gateway both
ways: every route the app serves is described, and every described path is served.
"""

from __future__ import annotations

import re
from typing import Any

from aogstream import SPEC_VERSION, __version__
from aogstream.convert import PIVOT
from aogstream.http import agent_doors, ollama_extras, rerank_door
from aogstream.http.front_doors import API_FLAVORS_PREFIX
from aogstream.http.hot import GUIDE_PREFIX, PREFIX, HotRoutes

OPENAPI_VERSION = "3.1.0"
QUART_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# the operations a newcomer looks for first, in a person's words
SUMMARIES = {
    f"POST {PREFIX}{{service}}": "Invoke a service (chat, generate, embed, "
    "text-to-speech, speech-to-text, ...): JSON answer, or a stream with `\"stream\": true` "
    "(SSE, or NDJSON with `Accept: application/x-ndjson`)",
    f"GET {PREFIX}{{service}}": "Invoke a service with its fields in the query string; "
    "WebSocket services (speech-to-text-ws, ...) are opened by a WebSocket upgrade here",
    f"POST {GUIDE_PREFIX}{{service}}": "AOG's plugin-guide test call: "
    "`{\"provider\", \"service\", \"data\"}`",
    "GET /metrics": "Prometheus metrics of every serving process",
    "GET /aogstream/v1/requests": "The most recent requests of every serving process "
    "(`?limit=N`), newest first",
    "GET /openapi.json": "This description",
    "GET /docs": "A page that renders this description",
    "GET /": "The web console (an HTML page; its files are under /console/)",
    "GET /console/{name}": "A file of the web console (index.html, console.js, console.css, "
    "mic-worklet.js)",
    "GET /health": "Whether the gateway is up",
    "GET /version": "The gateway's version and the AOG spec it speaks",
}
_QUART_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def _template(rule: str) -> str:
    """A Quart rule as a route template (`<path:rest>` → `{rest:path}`)."""
    return _QUART_PARAM.sub(lambda m: f"{{{m[2]}:path}}" if m[1] == "path"
                            else f"{{{m[2]}}}", rule)


def _openapi_path(template: str) -> str:
    return re.sub(r"\{(\w+):path\}", r"{\1}", template)


def _humanize(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def operations(app: HotRoutes) -> list[dict[str, Any]]:
    """Every HTTP operation the app serves: method, template, summary, tag."""
    ops: list[dict[str, Any]] = []

    def add(method: str, template: str, summary: str, tag: str, **extra: Any) -> None:
        key = f"{method} {_openapi_path(template)}"
        ops.append({"method": method, "template": template,
                    "summary": SUMMARIES.get(key, summary), "tag": tag, **extra})

    for method in ("POST", "GET"):
        add(method, f"{PREFIX}{{service}}", "Invoke a service", "services",
            service_route=True)
    add("POST", f"{GUIDE_PREFIX}{{service}}", "Invoke a service", "services",
        service_route=True)
    for method, template, flavor, service in _front_doors(app):
        add(method, template, f"{flavor}: {service}", f"front doors: {flavor}",
            service=service)
    # doors no flavor template names: their own modules, reached before the templates
    for template, summary, service in (
            (agent_doors.RESPONSES, "OpenAI Responses API", "chat"),
            (agent_doors.MESSAGES, "Anthropic Messages API", "chat"),
            (agent_doors.COUNT_TOKENS, "Anthropic Messages: count tokens", "chat"),
            (rerank_door.RERANK_PATH, "Rerank documents (Jina/Cohere style)", "rerank")):
        add("POST", template, summary, "front doors: agents and rerank", service=service)
    for template, method in ollama_extras.METHODS.items():
        add(method, template, f"ollama: {template.rsplit('/', 1)[-1]}", "front doors: ollama")
    quart: Any = app.fallback
    url_map = getattr(quart, "url_map", None)
    if url_map is not None:
        for rule in url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            view = quart.view_functions.get(rule.endpoint)
            doc = (getattr(view, "__doc__", None) or "").strip().split("\n\n")[0]
            summary = " ".join(doc.split()) or _humanize(rule.endpoint.rsplit(".", 1)[-1])
            tag = _tag(rule.rule)
            for method in sorted(set(rule.methods or ()) & set(QUART_METHODS)):
                add(method, _template(rule.rule), summary, tag)
    seen: set[tuple[str, str]] = set()
    unique = []
    for op in ops:  # a hot route shadows a Quart rule of the same path (services/models)
        key = (op["method"], _openapi_path(op["template"]))
        if key not in seen:
            seen.add(key)
            unique.append(op)
    return unique


def _tag(rule: str) -> str:
    if rule.startswith("/v0/"):
        return "native plugins (CLIProxyAPI)"
    if "/control_panel" in rule or "/engine/" in rule:
        return "AOG compatibility"
    if rule in ("/metrics", "/openapi.json") or rule.startswith(("/aogstream/", "/docs")):
        return "observability"
    if rule in ("/", "/health", "/version") or rule.endswith(("/health", "/version")) \
            or rule.startswith("/console/"):
        return "gateway"
    return "management"


def _front_doors(app: HotRoutes) -> list[tuple[str, str, str, str]]:
    """(method, template, flavor, service) of every front door `FrontDoors` opens from
    the flavor templates (bare paths where a template installs raw routes;
    `GET <listing>/{model}` beside an OpenAI-like model listing)."""
    out: list[tuple[str, str, str, str]] = []
    for door, raw in app.front_doors.template_doors():
        paths = [f"{API_FLAVORS_PREFIX}{door.flavor}{door.path}"] + ([door.path] if raw else [])
        for p in paths:
            out.append((door.method, p, door.flavor, door.service))
            if door.service == "models" and door.method == "GET" and \
                    door.flavor not in ("ollama", PIVOT):
                out.append((door.method, p + "/{model}", door.flavor, door.service))
    return out


def route_templates(app: HotRoutes) -> list[str]:
    """The route templates the request log and metrics label requests with."""
    return sorted({op["template"] for op in operations(app)})


def spec(app: HotRoutes) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(app):
        path = _openapi_path(op["template"])
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string"}}
                  for name in re.findall(r"\{(\w+)\}", path)]
        method = op["method"].lower()
        operation: dict[str, Any] = {
            "summary": op["summary"], "tags": [op["tag"]],
            "operationId": f"{method}{re.sub(r'[^A-Za-z0-9]+', '_', path)}".rstrip("_"),
            "responses": _responses(op),
        }
        if params:
            operation["parameters"] = params
        if method in ("post", "put", "patch"):
            operation["requestBody"] = {"required": False, "content": {
                "application/json": {"schema": {"type": "object"}}}}
        if op.get("service_route"):
            operation["description"] = (
                "The body is the service's request in AOG's shape (e.g. chat: "
                "`{\"model\": ..., \"messages\": [...], \"stream\": true}`). The answer "
                "names who served it in `x-aogstream-provider` and `x-aogstream-plugin`.")
        elif op.get("service"):
            operation["description"] = (
                f"The `{op['service']}` service in this flavor's own request and answer "
                f"shape (its client libraries work unchanged).")
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "aogstream", "version": __version__, "description": (
            "A streaming AI gateway that speaks AOG's wire protocols. Service calls: "
            f"{PREFIX}{{service}}; the flavors' own APIs under /v1, /api, /v3 and "
            f"{API_FLAVORS_PREFIX}{{flavor}}; management under /aog/{SPEC_VERSION}.")},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {
            "managementKey": {"type": "apiKey", "in": "header", "name": "X-Management-Key"},
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": dict(sorted(paths.items())),
    }


def _responses(op: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "Success",
                          "content": {"application/json": {"schema": {"type": "object"}}}}
    if op.get("service_route") or op.get("service") in ("chat", "generate"):
        ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        ok["content"]["application/x-ndjson"] = {"schema": {"type": "string"}}
    if op["template"] == "/metrics":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif op["template"].startswith("/docs") or op["template"] == "/":
        ok["content"] = {"text/html": {"schema": {"type": "string"}}}
    elif op["template"].startswith("/console/"):
        ok["content"] = {"text/html": {"schema": {"type": "string"}},
                         "text/javascript": {"schema": {"type": "string"}},
                         "text/css": {"schema": {"type": "string"}}}
    return {"200": ok, "4XX": {"description": "The request was wrong; the body says what "
                                              "and how to fix it"}}

