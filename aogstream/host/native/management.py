"""Routes and resources a native plugin serves through the management API (spec §5.3).

`management.register` answers `routes[]` ({Method, Path, Menu, Description}) and
`resources[]` ({Path, Menu, Description}); `refresh` normalizes them as CPA does:

- a route's method is upper-cased (GET when empty); its path gets a leading `/`, loses
  a leading `/v0/management` and a trailing `/`, and is served at
  `/v0/management<path>` (exact match, no patterns: `:`, `*` and whitespace are
  refused); a route that collides with the host's own (`/v0/management/plugins...`) or
  with a plugin of higher priority (loaded before) is skipped, with a log line;
- a resource (or, legacy, a GET route with a non-empty `Menu`) is a GET-only page at
  `/v0/resource/plugins/<plugin id><path>`: a relative path goes under that prefix;
  the full forms `/v0/resource/plugins/<id>/x` and `/plugins/<id>/x` are accepted for
  the plugin's own ID; `..`, `:`, `*` and whitespace are refused.

`handle` sends one request to `management.handle` (`Method`, `Path`, `Headers`,
`Query`, `Body`; `Body` null for resources) and returns the plugin's status, headers
and body (`StatusCode` 0 means 200).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from aogstream.host.native import gojson as gj

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")

BASE = "/v0/management"
RESOURCE_BASE = "/v0/resource/plugins"
# the host's own management routes, which no plugin may take
HOST_ROUTES = re.compile(r"^/v0/management/plugins(/.*)?$")
_BAD = re.compile(r"[:*\s]")
_METHOD = re.compile(r"^[A-Z]+$")
# request headers a plugin never sees: the keys that authenticated the request
PRIVATE_HEADERS = frozenset({"authorization", "x-management-key", "x-api-key", "cookie"})


def route_path(path: str) -> str | None:
    """A route's full path, or None when CPA would refuse it."""
    path = path.strip()
    if not path.startswith("/"):
        path = "/" + path
    if path == BASE or path.startswith(BASE + "/"):
        path = path[len(BASE):]
    path = path.rstrip("/")
    if not path or _BAD.search(path):
        return None
    return BASE + path


def resource_path(plugin_id: str, path: str) -> str | None:
    """A resource's full path under `/v0/resource/plugins/<plugin_id>`, or None."""
    path = path.strip()
    if not path or _BAD.search(path) or ".." in path.split("/"):
        return None
    own = f"{RESOURCE_BASE}/{plugin_id}"
    legacy = f"/plugins/{plugin_id}"
    if path == own or path.startswith(own + "/"):
        full = path
    elif path == legacy or path.startswith(legacy + "/"):
        full = RESOURCE_BASE + path[len("/plugins"):]
    elif path.startswith((RESOURCE_BASE + "/", "/plugins/")):
        return None  # another plugin's prefix
    else:
        full = f"{own}/{path.lstrip('/')}"
    full = full.rstrip("/")
    return full if full != own else None


def _entry(item: Any) -> dict[str, str]:
    return {"menu": gj.text(item, "Menu"), "description": gj.text(item, "Description")}


async def refresh(plugin: NativePlugin, taken: set[tuple[str, str]]) -> None:
    """Ask the plugin for its routes and resources (`management.register`) and keep
    those that are valid and free; `taken` holds the (method, path) pairs of plugins
    of higher priority and gets this plugin's. A failure leaves it with none."""
    plugin.routes, plugin.resources = {}, {}
    if not gj.boolean(plugin.capabilities, "management_api"):
        return
    from aogstream.host.native.plugin import metadata_object

    try:
        reply = await plugin.call_raw("management.register", {
            "Plugin": metadata_object(plugin.metadata), "BasePath": BASE,
            "ResourceBasePath": f"{RESOURCE_BASE}/{plugin.id}"})
    except Exception as exc:  # noqa: BLE001 - a plugin's failure: logged, no routes
        log.error("native plugin %s: management.register failed: %s", plugin.id, exc)
        return
    routes = gj.field(reply, "routes", []) or []
    resources = list(gj.field(reply, "resources", []) or [])
    for item in routes if isinstance(routes, list) else []:
        if not isinstance(item, dict):
            continue
        method = (gj.text(item, "Method").strip() or "GET").upper()
        path = route_path(gj.text(item, "Path"))
        if path is None or not _METHOD.match(method):
            log.warning("native plugin %s: management route %r %r refused (exact paths "
                        "only, no ':', '*' or spaces)", plugin.id, gj.text(item, "Method"),
                        gj.text(item, "Path"))
            continue
        if method == "GET" and gj.text(item, "Menu"):
            resources.append(item)  # legacy: a GET route with a menu is a resource
            continue
        if HOST_ROUTES.match(path) or (method, path) in taken:
            log.warning("native plugin %s: management route %s %s is already taken; "
                        "skipped", plugin.id, method, path)
            continue
        taken.add((method, path))
        plugin.routes[(method, path)] = _entry(item)
    for item in resources if isinstance(resources, list) else []:
        if not isinstance(item, dict):
            continue
        path = resource_path(plugin.id, gj.text(item, "Path"))
        if path is None:
            log.warning("native plugin %s: resource %r refused", plugin.id,
                        gj.text(item, "Path"))
            continue
        plugin.resources[path] = _entry(item)


def menus(plugin: NativePlugin) -> list[dict[str, str]]:
    """The `menus` of GET /v0/management/plugins: resources with a menu entry."""
    return [{"path": path, "menu": e["menu"], "description": e["description"]}
            for path, e in sorted(plugin.resources.items()) if e["menu"]]


async def handle(plugin: NativePlugin, method: str, path: str,
                 headers: list[tuple[str, str]], query: dict[str, list[str]],
                 body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request through `management.handle`: (status, headers, body). Raises what
    `NativePlugin.call_raw` raises."""
    hmap: dict[str, list[str]] = {}
    for k, v in headers:
        if k.lower() not in PRIVATE_HEADERS:
            hmap.setdefault("-".join(p.capitalize() for p in k.split("-")), []).append(v)
    scope = plugin.host.open_scope(plugin.id, uuid.uuid4().hex[:16])
    try:
        reply = await plugin.call_raw("management.handle", {
            "Method": method, "Path": path, "Headers": gj.header_map(hmap),
            "Query": gj.header_map(query), "Body": body, "host_callback_id": scope.id})
    finally:
        plugin.host.close_scope(scope)
    status = gj.integer(reply, "StatusCode") or 200
    if not 100 <= status <= 599:
        raise gj.ReplyError(f"StatusCode {status} is not an HTTP status")
    out: list[tuple[str, str]] = []
    raw_headers = gj.field(reply, "Headers") or {}
    if isinstance(raw_headers, dict):
        for k, vs in raw_headers.items():
            for v in vs if isinstance(vs, list) else [vs]:
                if isinstance(v, str) and "\n" not in v and "\r" not in v:
                    out.append((str(k), v))
    return status, out, gj.data(reply, "Body")
