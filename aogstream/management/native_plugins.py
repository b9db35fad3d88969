"""CLIProxyAPI's management API for native plugins (spec §5.2, §5.3): what each route
does, apart from HTTP (`http.native_management` adapts it).

Every answer is `Answer` (status, JSON body) with CPA's bodies and codes (errors
`{"error": <code>, "message": <text>}`); a plugin's own route or resource answers
`Raw` (status, headers, bytes) from its `management.handle`. Every write goes to
`<data dir>/config.yaml` and is applied before the answer (reconfigure in place, load,
or drain and shut down). Where CPA answers a file's full path this answers it relative
to its plugin folder (answers never carry this machine's folders).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from aogstream import errors
from aogstream.gateway import Gateway
from aogstream.host.native import auth_import
from aogstream.host.native import gojson as gj
from aogstream.host.native import management as nm
from aogstream.host.native.auths import AuthError, auth_name, redact
from aogstream.host.native.configfile import (
    ConfigFileError,
    load_doc,
    plugin_configs,
    save_doc,
)
from aogstream.host.native.discovery import ID_RE
from aogstream.host.native.loader import NativePlugins
from aogstream.host.native.plugin import HOST_SUMMARY

log = logging.getLogger("aogstream.native")

RESOURCE_BASE = nm.RESOURCE_BASE


@attrs.frozen
class Answer:
    """A JSON answer."""

    status: int
    body: Any


@attrs.frozen
class Raw:
    """A plugin's own answer (`management.handle`)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_type: str = ""


def _error(status: int, code: str, message: str, **extra: Any) -> Answer:
    return Answer(status, {"error": code, "message": message, **extra})


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


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class NativePluginsApi:
    """The routes' logic over one gateway's native plugins."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def native(self) -> NativePlugins:
        native: NativePlugins = self.gateway.native  # untyped there (set after start)
        return native

    def _roots(self) -> list[Path]:
        cfg = self.native.config
        return ([cfg.dir] if cfg.dir else []) + self.gateway.plugin_search_dirs()

    async def _edit(self, change: Any) -> str:
        """Load config.yaml, `change(configs)` it, save, apply; "" or why it failed."""
        data_dir = self.gateway.config.data_dir
        try:
            doc = await trio.to_thread.run_sync(load_doc, data_dir)
            change(plugin_configs(doc))
            await trio.to_thread.run_sync(save_doc, data_dir, doc)
        except ConfigFileError as exc:
            return str(exc)
        await self.native.apply()
        return ""

    @staticmethod
    def bad_id(pid: str) -> Answer | None:
        if ID_RE.match(pid):
            return None
        return _error(400, "invalid_plugin_id",
                      "a plugin ID is letters, digits, '.', '_' or '-' (1-128 characters, "
                      "starting with a letter or digit)")

    async def plugins(self) -> Answer:
        """GET /v0/management/plugins."""
        nat = self.native
        cfg = nat.config
        roots = self._roots()
        try:
            doc = await trio.to_thread.run_sync(load_doc, self.gateway.config.data_dir)
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
                # aogstream's own: why it does not serve (a crash loop, a bad config),
                # and its isolation (`plugins.configs.<id>.isolation`)
                "state": plugin.state if plugin else "disabled",
                "last_error": _esc(plugin.last_error) if plugin else "",
                "isolation": plugin.isolation if plugin else cfg.isolation(pid)[0],
                "restarts": plugin.restarts if plugin else 0,
            })
        return Answer(200, {"plugins_enabled": cfg.enabled,
                            "plugins_dir": raw_dir if isinstance(raw_dir, str) else "",
                            "plugins": out})

    async def delete(self, pid: str) -> Answer:
        """DELETE /v0/management/plugins/{id}."""
        if (bad := self.bad_id(pid)) is not None:
            return bad
        nat = self.native
        found = nat.found.get(pid)
        configured = pid in nat.config.configs
        if found is None and not configured and pid not in nat.plugins:
            return _error(404, "plugin_not_found",
                          f"no plugin {pid} is installed or configured")
        if not await nat.unload(pid):
            return _error(409, "plugin_delete_requires_restart",
                          f"plugin {pid} still had calls running after the drain; restart "
                          f"the gateway to delete it", restart_required=True)
        rel = _relative(found.path, self._roots()) if found else ""
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
        if configured:
            failed = await self._edit(lambda configs: configs.pop(pid, None))
            if failed:
                return _error(500, "config_save_failed",
                              f"config.yaml was not saved: {failed}",
                              file_deleted=file_deleted, path=rel)
        else:
            await nat.apply()
        return Answer(200, {"status": "deleted", "id": pid, "path": rel,
                            "file_deleted": file_deleted, "configured_removed": configured,
                            "restart_required": False})

    async def set_enabled(self, pid: str, raw: bytes) -> Answer:
        """PATCH /v0/management/plugins/{id}/enabled."""
        if (bad := self.bad_id(pid)) is not None:
            return bad
        body = _json_object(raw)
        if body is None or not isinstance(body.get("enabled"), bool):
            return _error(400, "invalid_body", 'send a JSON object {"enabled": true|false}')
        enabled = body["enabled"]

        def change(configs: dict[str, Any]) -> None:
            sub = configs.get(pid)
            if not isinstance(sub, dict):
                sub = configs[pid] = {}
            sub["enabled"] = enabled

        return self._saved(await self._edit(change))

    @staticmethod
    def _saved(failed: str) -> Answer:
        if failed:
            return Answer(500, {"error": f"failed to save config: {failed}"})
        return Answer(200, {"status": "ok"})

    async def get_config(self, pid: str) -> Answer:
        """GET /v0/management/plugins/{id}/config."""
        if (bad := self.bad_id(pid)) is not None:
            return bad
        nat = self.native
        sub = nat.config.configs.get(pid)
        if isinstance(sub, dict):
            return Answer(200, sub)
        if pid in nat.config.configs or pid in nat.found or pid in nat.plugins:
            return Answer(200, {})
        return _error(404, "plugin_not_found", f"no plugin {pid} is installed or configured")

    async def put_config(self, pid: str, raw: bytes, *, merge: bool) -> Answer:
        """PUT (replace) or PATCH (shallow merge, null deletes) of a plugin's config."""
        if (bad := self.bad_id(pid)) is not None:
            return bad
        body = _json_object(raw)
        if body is None:
            return _error(400, "invalid_body", "the config must be a JSON object")
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

        return self._saved(await self._edit(change))

    async def _dispatch(self, plugin: Any, method: str, path: str,
                        headers: list[tuple[str, str]], query: dict[str, list[str]],
                        body: bytes | None) -> Raw:
        try:
            status, out_headers, out = await nm.handle(plugin, method, path, headers, query,
                                                       body)
        except Exception as exc:  # noqa: BLE001 - the plugin failed: CPA's 502
            log.error("native plugin %s: management.handle %s %s failed: %s", plugin.id,
                      method, path, exc)
            return Raw(502, [], b"plugin management handler failed",
                       "text/plain; charset=utf-8")
        return Raw(status, out_headers, out)

    async def route(self, method: str, path: str, headers: list[tuple[str, str]],
                    query: dict[str, list[str]], body: bytes) -> Raw | Answer:
        """A route a plugin registered under /v0/management (exact method and path)."""
        path = path.rstrip("/")
        plugins = self.native.plugins
        for pid in sorted(plugins, key=lambda p: (-plugins[p].priority, p)):
            plugin = plugins[pid]
            if plugin.state == "running" and (method, path) in plugin.routes:
                return await self._dispatch(plugin, method, path, headers, query, body)
        return _error(404, "not_found", f"no management route {method} {path}")

    async def auth_url(self, provider: str, base_url: str) -> Answer | None:
        """`/v0/management/<provider>-auth-url`: a login with the auth provider whose
        `auth.identifier` is `provider` (highest priority, then ID); None when no
        plugin offers it (the request is then an ordinary plugin route)."""
        native = self.native
        found = [p for p in native.plugins.values()
                 if p.state == "running" and p.auth_identifier == provider]
        if not found:
            return None
        plugin = min(found, key=lambda p: (-p.priority, p.id))
        try:
            return Answer(200, await native.logins.start(plugin, provider, base_url,
                                                         HOST_SUMMARY))
        except errors.GatewayError as err:
            return Answer(502, {"status": "error", "error": err.message})
        except AuthError as exc:
            return Answer(502, {"status": "error", "error": str(exc)})

    async def auth_status(self, state: str) -> Answer:
        """`GET /v0/management/get-auth-status?state=`: `wait`, `ok` (the credential is
        saved) or `error`."""
        native = self.native
        login = native.logins.login(state) if state else None
        if login is None:
            return Answer(404, {"status": "error", "error": "unknown or expired login "
                                "state; start the login again with "
                                "/v0/management/<provider>-auth-url"})
        plugin = native.plugins.get(login.plugin)
        if plugin is None or plugin.state != "running":
            return Answer(503, {"status": "error",
                                "error": f"native plugin {login.plugin} is not running"})
        try:
            answer = await native.logins.poll(plugin, state, HOST_SUMMARY, native.auths)
            if answer.get("status") == "ok":  # its per-auth models route before the answer
                await native.check_auths()
            return Answer(200, answer)
        except errors.GatewayError as err:
            return Answer(502, {"status": "error", "error": err.message})
        except (AuthError, OSError) as exc:
            return Answer(500, {"status": "error",
                                "error": f"saving the credential failed: {exc}"})

    async def resource(self, pid: str, path: str, headers: list[tuple[str, str]],
                       query: dict[str, list[str]]) -> Raw | Answer:
        """A plugin's GET resource under /v0/resource/plugins/<id>."""
        plugin = self.native.plugins.get(pid)
        path = path.rstrip("/")
        if plugin is None or plugin.state != "running" or path not in plugin.resources:
            return _error(404, "not_found", f"no plugin resource {path}")
        return await self._dispatch(plugin, "GET", path, headers, query, None)

    async def upload_auth(self, name: str, raw: bytes, provider: str) -> Answer:
        """`POST /v0/management/auth-files`: an auth file, parsed by the plugins'
        `auth.parse` (`host.native.auth_import`), saved as record(s); its per-auth
        models are routed before the answer. Never answers the credential."""
        if not name:
            return Answer(400, {"error": "invalid name", "message": (
                "upload the file as the multipart field 'file', or send its JSON as "
                "the body with ?name=<file name>.json")})
        native = self.native
        try:
            await auth_import.import_auth(list(native.plugins.values()), native.auths,
                                          name, raw, provider)
        except AuthError as exc:
            return Answer(400, {"error": "invalid auth file", "message": str(exc)})
        except OSError as exc:
            return Answer(500, {"error": f"failed to save auth file: {exc.strerror}"})
        await native.check_auths()
        return Answer(200, {"status": "ok"})

    async def delete_auth(self, name: str) -> Answer:
        """`DELETE /v0/management/auth-files?name=`: remove a record; the models it
        brought (`model.for_auth`) stop routing before the answer."""
        native = self.native
        try:
            rec = native.auths.get(auth_name(name))
            await trio.to_thread.run_sync(
                lambda: (native.auths.dir / rec.name).unlink(missing_ok=True))
        except AuthError:
            return Answer(404, {"error": "file not found",
                                "message": f"no auth file {name!r}"})
        except OSError as exc:
            return Answer(500, {"error": f"failed to remove auth file: {exc.strerror}"})
        await native.check_auths()
        return Answer(200, {"status": "ok"})

    async def api_call(self, raw: bytes) -> Answer:
        """`POST /v0/management/api-call`: one HTTP request made by the executor of
        the plugin that owns the record `auth_index`, with its credential
        (`executor.http_request`); CPA's body (`auth_index`, `method`, `url`,
        `header`, `data`) and answer (`status_code`, `header`, `body`)."""
        body = _json_object(raw)
        header = body.get("header") if body is not None else None
        if body is None or (header is not None and not (
                isinstance(header, dict) and all(isinstance(v, str) for v in header.values()))):
            return Answer(400, {"error": "invalid body"})
        method = str(body.get("method") or "").strip().upper()
        if not method:
            return Answer(400, {"error": "missing method"})
        url = str(body.get("url") or "").strip()
        if not url:
            return Answer(400, {"error": "missing url"})
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return Answer(400, {"error": "invalid url"})
        index = next((v.strip() for v in (body.get("auth_index"), body.get("authIndex"),
                                          body.get("AuthIndex"))
                      if isinstance(v, str) and v.strip()), "")
        if not index:
            return Answer(400, {"error": "missing auth_index", "message": (
                "name the credential to call with: auth_index is a record ID from "
                "host.auth.list (the auth file's name without .json)")})
        native = self.native
        try:
            rec = native.auths.get(index)
        except AuthError:
            return Answer(404, {"error": "auth not found",
                                "message": f"no auth record {index!r}"})
        plugin = auth_import.executor_of(native.plugins.values(), rec)
        if plugin is None:
            return Answer(400, {"error": "no executor", "message": (
                f"no running native plugin executor serves provider {rec.provider!r}")})
        data = body.get("data")
        try:
            status, headers, out = await auth_import.http_request(
                plugin, native.auths, rec, method, url,
                {str(k): [v] for k, v in (header or {}).items()},
                data.encode() if isinstance(data, str) and data else None)
        except Exception as exc:  # noqa: BLE001 - the plugin failed: CPA's 502
            why = redact(getattr(exc, "message", "") or str(exc), rec)
            log.warning("native plugin %s: executor.http_request for auth %s failed: %s",
                        plugin.id, rec.id, why)
            return Answer(502, {"error": "request failed", "message": why})
        return Answer(200, {"status_code": status, "header": headers,
                            "body": out.decode("utf-8", "replace")})
