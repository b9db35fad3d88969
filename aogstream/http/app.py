"""The Quart app: everything that is not a service invocation (health, version, the
management routes of `http.manage`). Service routes are served by `hot.HotRoutes` in
front of it."""

from __future__ import annotations

from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from quart import Response, jsonify
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from aogstream import AOG_VERSION, SPEC_VERSION, __version__
from aogstream.asgi_types import ASGIApp
from aogstream.gateway import Gateway
from aogstream.http.aog_compat import register_aog_compat
from aogstream.http.console import register_console
from aogstream.http.hot import HotRoutes
from aogstream.http.manage import register_management
from aogstream.http.native_management import register_native_management
from aogstream.http.observability import register_observability

BASE = f"/aog/{SPEC_VERSION}"


class ShieldedFinalSend(TrioASGIHTTPConnection):
    """Shield the final body send: without it quart-trio's disconnect watcher aborts
    hypercorn's end-of-response bookkeeping and the connection never closes."""

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        # typed as quart-trio's own signature (hypercorn's event TypedDicts): an override
        async def shielded(message: ASGISendEvent) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await super().__call__(receive, shielded)


def envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"business_code": code, "message": message}
    if data is not None:
        out["data"] = data
    return out


def build_app(gateway: Gateway) -> HotRoutes:
    """The ASGI application: hot routes first, Quart for the rest."""
    app = QuartTrio("aogstream")
    app.asgi_http_class = ShieldedFinalSend
    app.config["MAX_CONTENT_LENGTH"] = gateway.config.max_body_bytes
    # the same body deadline as the hot routes' (Quart's default is 60 s; None: none)
    app.config["BODY_TIMEOUT"] = gateway.config.body_timeout

    register_console(app)  # the web console at / (static files under /console/)

    @app.get("/health")
    @app.get(f"{BASE}/health")
    async def health() -> Any:
        return jsonify(envelope(80000, "health interface call success", {"status": "UP"}))

    @app.get("/version")
    @app.get(f"{BASE}/version")
    async def version() -> Any:
        return jsonify(envelope(70000, "version interface call success", {
            "version": AOG_VERSION, "spec_version": SPEC_VERSION, "aogstream": __version__,
        }))

    # service, service_provider, model and plugin management (plugin/list among them)
    register_management(app, gateway)
    # AOG's engine, model-list and control panel routes its SDKs and CLI read
    register_aog_compat(app, gateway)
    # CLIProxyAPI's management API for native plugins (/v0/management, /v0/resource)
    register_native_management(app, gateway)

    @app.after_request
    async def workers_caught_up(response: Response) -> Response:
        # with several workers, what this answer reports (a plugin running, a model
        # pulled, a policy set) must hold on whichever worker serves the next request
        await gateway.sync_workers()
        return response

    @app.errorhandler(404)
    async def not_found(_e: Any) -> Any:
        return jsonify(envelope(404, "no such route; service calls live under "
                                f"{BASE}/services/<service>")), 404

    # Quart types its ASGI events as hypercorn's TypedDicts, the routes as plain mappings:
    # the same dicts at run time, two spellings to the type checker
    hot = HotRoutes(gateway, cast(ASGIApp, app))
    register_observability(app, hot)  # /metrics, recent requests, /openapi.json, /docs
    return hot
