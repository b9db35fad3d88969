"""CLIProxyAPI's management API for native plugins (spec §5), in the primary's Quart app.

- `GET /v0/management/plugins`: every discovered, configured or loaded plugin;
- `DELETE /v0/management/plugins/{id}`: unload (drain, `shutdown()`), delete its file,
  drop `plugins.configs.<id>`;
- `PATCH /v0/management/plugins/{id}/enabled` `{"enabled": bool}`;
- `GET|PUT|PATCH /v0/management/plugins/{id}/config`: the plugin's config subtree
  (PUT replaces it, PATCH merges shallowly and a `null` deletes a key);
- the routes plugins register (`management.register`) under `/v0/management/...` and
  their GET resources under `/v0/resource/plugins/<id>/...`, answered by the plugin's
  `management.handle`;
- plugin logins (`host.native.auths`, through `management.native_plugins`):
  `/v0/management/<provider>-auth-url` starts one with the auth provider of that key
  (`{"status":"ok","url","state"}`), and
  `GET /v0/management/get-auth-status?state=` polls it (`wait`, `ok` once the
  credential is saved, or `error`).

What each does is `management.native_plugins`; this module only speaks HTTP. Every
answer carries `X-CPA-SUPPORT-PLUGIN: 1`, and the app's after-request hook waits for
the worker processes to apply a change, so the next request sees it on any worker.

Who may call: the request guard (`http.guard`) requires the management key on every
`/v0/management/...` request, on loopback too, and refuses cross-site requests;
resources are open without the key, as in CPA (they are pages a browser opens), but
cross-site requests to them are refused as well.
"""

from __future__ import annotations

import json
import re

from quart import Response, request
from quart_trio import QuartTrio

from aogstream.gateway import Gateway
from aogstream.management.native_plugins import RESOURCE_BASE, Answer, NativePluginsApi, Raw

BASE = "/v0/management"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CPA_HEADERS = {"X-CPA-SUPPORT-PLUGIN": "1"}
AUTH_URL = re.compile(r"([a-z0-9-]+)-auth-url")  # CPA: /v0/management/<provider>-auth-url
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
              "te", "trailer", "proxy-connection"}


def _respond(answer: Answer | Raw) -> Response:
    if isinstance(answer, Answer):
        return Response(json.dumps(answer.body, default=str), status=answer.status,
                        content_type="application/json", headers=CPA_HEADERS)
    resp = Response(answer.body, status=answer.status, headers=CPA_HEADERS)
    resp.headers.pop("Content-Type", None)
    for k, v in answer.headers:
        if k.lower() not in HOP_BY_HOP:
            resp.headers.add(k, v)
    if "Content-Type" not in resp.headers:
        resp.headers["Content-Type"] = answer.content_type or "application/octet-stream"
    return resp


def _query() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.args.items(multi=True):
        out.setdefault(k, []).append(v)
    return out


async def _body() -> bytes:
    """The request body as bytes (quart types `get_data` as bytes only when every
    argument is spelled out)."""
    return await request.get_data(cache=True, as_text=False, parse_form_data=False)


def register_native_management(app: QuartTrio, gateway: Gateway) -> None:
    """Add the routes of the module docstring to `app`."""
    api = NativePluginsApi(gateway)

    @app.get(f"{BASE}/plugins")
    async def list_plugins() -> Response:
        return _respond(await api.plugins())

    @app.delete(f"{BASE}/plugins/<pid>")
    async def delete_plugin(pid: str) -> Response:
        return _respond(await api.delete(pid))

    @app.patch(f"{BASE}/plugins/<pid>/enabled")
    async def set_enabled(pid: str) -> Response:
        return _respond(await api.set_enabled(pid, await _body()))

    @app.get(f"{BASE}/plugins/<pid>/config")
    async def get_config(pid: str) -> Response:
        return _respond(await api.get_config(pid))

    @app.route(f"{BASE}/plugins/<pid>/config", methods=["PUT", "PATCH"])
    async def put_config(pid: str) -> Response:
        return _respond(await api.put_config(pid, await _body(),
                                             merge=request.method == "PATCH"))

    @app.get(f"{BASE}/get-auth-status")
    async def auth_status() -> Response:
        return _respond(await api.auth_status(request.args.get("state", "")))

    @app.post(f"{BASE}/auth-files")
    async def upload_auth() -> Response:
        name, raw = request.args.get("name", ""), b""
        if request.mimetype == "multipart/form-data":
            upload = (await request.files).get("file")
            if upload is not None:
                name, raw = upload.filename or "", upload.read()
        else:
            raw = await _body()
        return _respond(await api.upload_auth(name, raw, request.args.get("provider", "")))

    @app.delete(f"{BASE}/auth-files")
    async def delete_auth() -> Response:
        return _respond(await api.delete_auth(request.args.get("name", "")))

    @app.post(f"{BASE}/api-call")
    async def api_call() -> Response:
        return _respond(await api.api_call(await _body()))

    @app.route(f"{BASE}/<path:rest>", methods=METHODS)
    async def plugin_route(rest: str) -> Response:
        login = AUTH_URL.fullmatch(rest)
        if login is not None:
            base = f"{request.scheme}://{request.host}{BASE}/oauth-callback"
            started = await api.auth_url(login[1], base)
            if started is not None:
                return _respond(started)
        return _respond(await api.route(request.method, request.path,
                                        list(request.headers.items()), _query(),
                                        await _body()))

    @app.get(f"{RESOURCE_BASE}/<pid>/<path:rest>")
    async def plugin_resource(pid: str, rest: str) -> Response:
        return _respond(await api.resource(pid, request.path,
                                           list(request.headers.items()), _query()))
