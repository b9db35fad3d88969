"""CLIProxyAPI's management API for native plugins (spec §5), in the primary's Quart app.

- `GET /v0/management/plugins`: every discovered, configured or loaded plugin;
- `DELETE /v0/management/plugins/{id}`: unload (drain, `shutdown()`), delete its file,
  drop `plugins.configs.<id>`;
- `PATCH /v0/management/plugins/{id}/enabled` `{"enabled": bool}`;
- `GET|PUT|PATCH /v0/management/plugins/{id}/config`: the plugin's config subtree
  (PUT replaces it, PATCH merges shallowly and a `null` deletes a key);
- the routes plugins register (`management.register`) under `/v0/management/...` and
  their GET resources under `/v0/resource/plugins/<id>/...`, answered by the plugin's
  `management.handle`.

Bodies and status codes are CPA's (errors `{"error": <code>, "message": <text>}`).
Every write goes to `<data dir>/config.yaml` and is applied before the answer
(reconfigure in place, load, or drain and shut down), and the after-request hook of
the app waits for the worker processes to apply it too, so the next request sees it
on any worker. Where CPA answers a file's full path this answers it relative to its
plugin folder (answers never carry this machine's folders).

Who may call: the request guard (`http.guard`) requires the management key on every
`/v0/management/...` request, on loopback too, and refuses cross-site requests;
resources are open without the key, as in CPA (they are pages a browser opens), but
cross-site requests to them are refused as well.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from aogstream.gateway import Gateway
from aogstream.host.native import gojson as gj
from aogstream.host.native import management as nm
from aogstream.host.native.configfile import (
    ConfigFileError,
    load_doc,
    plugin_configs,
    save_doc,
)
from aogstream.host.native.loader import ID_RE, NativePlugins

log = logging.getLogger("aogstream.native")

BASE = "/v0/management"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CPA_HEADERS = {"X-CPA-SUPPORT-PLUGIN": "1"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
              "te", "trailer", "proxy-connection"}


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status,
                    content_type="application/json", headers=CPA_HEADERS)


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return _json({"error": code, "message": message, **extra}, status)


def _esc(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else "", quote=True)


def _relative(path: Path, roots: list[Path]) -> str:
    """A plugin file as its path inside its plugin folder (e.g. linux/amd64/x.so)."""
    for root in roots:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            continue
    return path.name


def register_native_management(app: QuartTrio, gateway: Gateway) -> None:
    """Add the routes of the module docstring to `app`."""

    def native() -> NativePlugins:
        return gateway.native  # type: ignore[no-any-return]

    async def read_json_object() -> dict[str, Any] | None:
        raw = await request.get_data()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def edit(change: Any) -> str:
        """Load config.yaml, `change(configs)` it, save, apply; "" or why it failed."""
        data_dir = gateway.config.data_dir
        try:
            doc = await trio.to_thread.run_sync(load_doc, data_dir)
            change(plugin_configs(doc))
            await trio.to_thread.run_sync(save_doc, data_dir, doc)
        except ConfigFileError as exc:
            return str(exc)
        await native().apply()
        return ""

    def save_failed(why: str) -> Response:
        return _json({"error": f"failed to save config: {why}"}, 500)

    def bad_id(pid: str) -> Response | None:
        if ID_RE.match(pid):
            return None
        return _error(400, "invalid_plugin_id",
                      "a plugin ID is letters, digits, '.', '_' or '-' (1-128 characters, "
                      "starting with a letter or digit)")

    @app.get(f"{BASE}/plugins")
    async def list_plugins() -> Response:
        nat = native()
        cfg = nat.config
        roots = ([cfg.dir] if cfg.dir else []) + gateway.plugin_search_dirs()
        try:
            doc = await trio.to_thread.run_sync(load_doc, gateway.config.data_dir)
        except ConfigFileError:
            doc = {}
        plugins_doc = doc.get("plugins") if isinstance(doc.get("plugins"), dict) else {}
        raw_dir = plugins_doc.get("dir") if isinstance(plugins_doc, dict) else ""
        out = []
        for pid in sorted(set(nat.found) | set(cfg.configs) | set(nat.plugins)):
            if not ID_RE.match(pid):
                continue
            plugin = nat.plugins.get(pid)
            found = nat.found.get(pid)
            path = found.path if found else plugin.path if plugin else None
            registered = plugin is not None and plugin.state == "running"
            enabled = cfg.plugin_enabled(pid)
            meta = plugin.metadata if registered and plugin else None
            fields = [{"name": _esc(gj.text(f, "Name")), "type": _esc(gj.text(f, "Type")),
                       "enum_values": [_esc(v) for v in (gj.field(f, "EnumValues") or [])
                                       if isinstance(v, str)],
                       "description": _esc(gj.text(f, "Description"))}
                      for f in (gj.field(meta, "ConfigFields") or [] if meta else [])
                      if isinstance(f, dict)]
            supports_oauth = bool(registered and plugin
                                  and gj.boolean(plugin.capabilities, "auth_provider"))
            oauth_provider = ""
            if supports_oauth and plugin:
                try:
                    oauth_provider = gj.text(await plugin.call_raw("auth.identifier", {}),
                                             "identifier").lower()
                except Exception as exc:  # noqa: BLE001 - listed without it
                    log.warning("native plugin %s: auth.identifier failed: %s", pid, exc)
            out.append({
                "id": _esc(pid),
                "path": _esc(_relative(path, roots)) if path else "",
                "configured": pid in cfg.configs,
                "registered": registered,
                "enabled": enabled,
                "effective_enabled": cfg.enabled and enabled and registered,
                "supports_oauth": supports_oauth,
                "oauth_provider": _esc(oauth_provider),
                "logo": _esc(gj.text(meta, "Logo")) if meta else "",
                "config_fields": fields,
                "menus": [{k: _esc(v) for k, v in e.items()} for e in nm.menus(plugin)]
                if registered and plugin else [],
                "metadata": {
                    "name": _esc(gj.text(meta, "Name")),
                    "version": _esc(gj.text(meta, "Version")),
                    "author": _esc(gj.text(meta, "Author")),
                    "github_repository": _esc(gj.text(meta, "GitHubRepository")),
                    "logo": _esc(gj.text(meta, "Logo")), "config_fields": fields,
                } if meta else None,
            })
        return _json({"plugins_enabled": cfg.enabled,
                      "plugins_dir": raw_dir if isinstance(raw_dir, str) else "",
                      "plugins": out})

    @app.delete(f"{BASE}/plugins/<pid>")
    async def delete_plugin(pid: str) -> Response:
        if (bad := bad_id(pid)) is not None:
            return bad
        nat = native()
        found = nat.found.get(pid)
        configured = pid in nat.config.configs
        if found is None and not configured and pid not in nat.plugins:
            return _error(404, "plugin_not_found", f"no plugin {pid} is installed or "
                                                    f"configured")
        if not await nat.unload(pid):
            return _error(409, "plugin_delete_requires_restart",
                          f"plugin {pid} still had calls running after the drain; restart "
                          f"the gateway to delete it", restart_required=True)
        roots = ([nat.config.dir] if nat.config.dir else []) + gateway.plugin_search_dirs()
        rel = _relative(found.path, roots) if found else ""
        file_deleted = False
        if found is not None:
            try:
                await trio.to_thread.run_sync(found.path.unlink)
                file_deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                return _error(500, "plugin_delete_failed",
                              f"cannot delete the plugin file: {exc.strerror}")
        removed = False

        def drop(configs: dict[str, Any]) -> None:
            nonlocal removed
            removed = configs.pop(pid, None) is not None or pid in configs

        if configured:
            failed = await edit(drop)
            if failed:
                return _error(500, "config_save_failed",
                              f"config.yaml was not saved: {failed}",
                              file_deleted=file_deleted, path=rel)
            removed = True
        else:
            await nat.apply()
        return _json({"status": "deleted", "id": pid, "path": rel,
                      "file_deleted": file_deleted, "configured_removed": removed,
                      "restart_required": False})

    @app.patch(f"{BASE}/plugins/<pid>/enabled")
    async def set_enabled(pid: str) -> Response:
        if (bad := bad_id(pid)) is not None:
            return bad
        body = await read_json_object()
        if body is None or not isinstance(body.get("enabled"), bool):
            return _error(400, "invalid_body", 'send a JSON object {"enabled": true|false}')
        enabled = body["enabled"]

        def change(configs: dict[str, Any]) -> None:
            sub = configs.get(pid)
            if not isinstance(sub, dict):
                sub = configs[pid] = {}
            sub["enabled"] = enabled

        failed = await edit(change)
        return save_failed(failed) if failed else _json({"status": "ok"})

    @app.get(f"{BASE}/plugins/<pid>/config")
    async def get_config(pid: str) -> Response:
        if (bad := bad_id(pid)) is not None:
            return bad
        nat = native()
        sub = nat.config.configs.get(pid)
        if isinstance(sub, dict):
            return _json(sub)
        if pid in nat.config.configs or pid in nat.found or pid in nat.plugins:
            return _json({})
        return _error(404, "plugin_not_found", f"no plugin {pid} is installed or configured")

    @app.route(f"{BASE}/plugins/<pid>/config", methods=["PUT", "PATCH"])
    async def put_config(pid: str) -> Response:
        if (bad := bad_id(pid)) is not None:
            return bad
        body = await read_json_object()
        if body is None:
            return _error(400, "invalid_body", "the config must be a JSON object")
        merge = request.method == "PATCH"
        if "enabled" in body and body["enabled"] is not None \
                and not isinstance(body["enabled"], bool):
            return _error(400, "invalid_config", "'enabled' must be true or false")
        if "priority" in body and body["priority"] is not None and (
                not isinstance(body["priority"], int) or isinstance(body["priority"], bool)):
            return _error(400, "invalid_config", "'priority' must be an integer")

        def change(configs: dict[str, Any]) -> None:
            if merge:
                sub = configs.get(pid)
                sub = dict(sub) if isinstance(sub, dict) else {}
                for k, v in body.items():
                    if v is None:
                        sub.pop(k, None)
                    else:
                        sub[k] = v
                configs[pid] = sub
            else:
                configs[pid] = body

        failed = await edit(change)
        return save_failed(failed) if failed else _json({"status": "ok"})

    async def dispatch(plugin: Any, path: str, body: bytes | None) -> Response:
        query: dict[str, list[str]] = {}
        for k, v in request.args.items(multi=True):
            query.setdefault(k, []).append(v)
        try:
            status, headers, out = await nm.handle(
                plugin, request.method if body is not None else "GET", path,
                list(request.headers.items()), query, body)
        except Exception as exc:  # noqa: BLE001 - the plugin failed: CPA's 502
            log.error("native plugin %s: management.handle %s %s failed: %s", plugin.id,
                      request.method, path, exc)
            return Response("plugin management handler failed", status=502,
                            content_type="text/plain; charset=utf-8", headers=CPA_HEADERS)
        resp = Response(out, status=status, headers=CPA_HEADERS)
        resp.headers.pop("Content-Type", None)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP:
                resp.headers.add(k, v)
        if "Content-Type" not in resp.headers:
            resp.headers["Content-Type"] = "application/octet-stream"
        return resp

    @app.route(f"{BASE}/<path:rest>", methods=METHODS)
    async def plugin_route(rest: str) -> Response:
        path = request.path.rstrip("/")
        method = request.method
        for pid in sorted(native().plugins, key=lambda p: (-native().plugins[p].priority, p)):
            plugin = native().plugins[pid]
            if plugin.state == "running" and (method, path) in plugin.routes:
                return await dispatch(plugin, path, await request.get_data())
        return _error(404, "not_found", f"no management route {method} {path}")

    @app.get(f"{nm.RESOURCE_BASE}/<pid>/<path:rest>")
    async def plugin_resource(pid: str, rest: str) -> Response:
        plugin = native().plugins.get(pid)
        path = request.path.rstrip("/")
        if plugin is None or plugin.state != "running" or path not in plugin.resources:
            return _error(404, "not_found", f"no plugin resource {path}")
        return await dispatch(plugin, path, None)
