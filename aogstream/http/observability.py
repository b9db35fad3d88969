"""The observability routes: `/metrics`, recent requests, `/openapi.json` and `/docs`.

They are management routes for the request guard (the management key when one is
required, never open to other origins). With several serving processes a worker
forwards them to the primary, which reads every process's metrics files and request
rings (`observe.run`), so any process answers for all of them.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from aogstream.gateway import Gateway
from aogstream.http.hot import HotRoutes
from aogstream.http.openapi import spec
from aogstream.observe import run as observe_run

# the page's files (name → content type); nothing else is served from the folder
DOC_FILES = {"docs.html": "text/html; charset=utf-8", "docs.js": "text/javascript",
             "docs.css": "text/css"}
DEFAULT_LIMIT = 50


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status,
                    mimetype="application/json")


def _static(name: str) -> Response:
    data = resources.files("aogstream.http").joinpath("static", name).read_bytes()
    return Response(data, status=200, content_type=DOC_FILES[name],
                    headers={"Cache-Control": "no-cache"})


def register_observability(app: QuartTrio, hot: HotRoutes) -> None:
    """Add the routes to `app`, the Quart app behind `hot`."""
    described: dict[str, Any] = {}

    @app.get(observe_run.METRICS_PATH)
    async def metrics() -> Response:
        """Prometheus metrics of every serving process (text format 0.0.4)."""
        observer = observe_run.current()
        if observer is None or observer.metrics is None:
            why = ("metrics are off (AOGSTREAM_METRICS=off); start the gateway without it"
                   if observer is not None else "this gateway process does not count metrics")
            return _json(404, {"error": why})
        from aogstream.observe.metrics import CONTENT_TYPE

        body = await trio.to_thread.run_sync(observer.exposition, observer.live_facts())
        return Response(body, status=200, content_type=CONTENT_TYPE)

    @app.get(observe_run.REQUESTS_PATH)
    async def recent_requests() -> Response:
        """The most recent requests of every serving process, newest first."""
        observer = observe_run.current()
        raw = request.args.get("limit", str(DEFAULT_LIMIT)).strip()
        most = observe_run.MAX_HISTORY
        if not raw.isdigit() or not 1 <= int(raw) <= most:
            return _json(400, {"error": f"limit={raw[:20]!r} is not a whole number from 1 "
                                        f"to {most}; e.g. ?limit=50"})
        if observer is None:
            return _json(200, {"requests": [], "history": 0})
        found = await trio.to_thread.run_sync(observer.recent, int(raw))
        return _json(200, {"requests": found, "history": observer.settings.history})

    @app.get("/openapi.json")
    async def openapi() -> Response:
        """This gateway's HTTP API as OpenAPI 3.1."""
        if not described:
            described.update(spec(hot))
        return _json(200, described)

    @app.get("/docs")
    async def docs() -> Response:
        """A page that renders /openapi.json (no network needed beyond the gateway)."""
        return _static("docs.html")

    @app.get("/docs/<name>")
    async def docs_file(name: str) -> Response:
        """The page's script and style."""
        if name not in DOC_FILES:
            return _json(404, {"error": f"no file {name[:60]!r} here; the page is at /docs"})
        return _static(name)


def plugin_facts(gateway: Gateway) -> list[tuple[str, str, int | None]]:
    """(name, state, restarts) of every plugin, for the metrics' live collector;
    restarts only for the process plugins this process supervises."""
    out = []
    for name, provider in list(gateway.providers.items()):
        sup = gateway.plugins.get(name)
        out.append((name, str(provider.state), sup.restarts if sup is not None else None))
    return out
