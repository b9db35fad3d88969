"""AOG's routes that its clients read besides the services: engine health and version,
the model list of `GET /aog/v0.2/services/models`, and the control panel.

Why these exist: AOG's Node SDK decides whether a gateway runs from `GET /health`
*and* `GET /engine/health` (both must answer 2xx, else `AOGInit()` tries to download
and start AOG); its C# SDK lists models with `GET /aog/v0.2/services/models`; AOG's
control panel (a web page of its own, not shipped here) reads `/control_panel/*`.

"Engines" here are the local plugins: each one runs (or fails to run) an engine of
its own, which is what AOG's `/engine/health` reports for ollama and openvino.
Remote plugins have no engine and are not listed. Answers use AOG's envelope
`{business_code, message, data}` as AOG does on these routes.
"""

from __future__ import annotations

import time
from typing import Any, cast

import trio
from quart import jsonify, request
from quart_trio import QuartTrio

from aogstream import AOG_VERSION, SPEC_VERSION, __version__, errors
from aogstream import manifest as m
from aogstream.gateway import Gateway
from aogstream.invocation import PluginState
from aogstream.store.base import ModelStatus

BASE = f"/aog/{SPEC_VERSION}"
UP, DOWN, NOT_FOUND = "UP", "DOWN", "NOT_FOUND"


def _envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"business_code": code, "message": message}
    if data is not None:
        out["data"] = data
    return out


def _asked_engines(gateway: Gateway) -> tuple[dict[str, Any], list[str]]:
    """The local plugins, and the names asked for in `engine_name` (a repeated or
    comma-separated query parameter; none asked: all of them)."""
    engines = {name: p for name, p in gateway.plugins.items()
               if p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL}
    asked = [n.strip() for v in request.args.getlist("engine_name") for n in v.split(",")
             if n.strip()]
    return engines, asked or sorted(engines)


def engine_health(gateway: Gateway) -> dict[str, str]:
    engines, asked = _asked_engines(gateway)
    return {name: (NOT_FOUND if name not in engines
                   else UP if engines[name].state == PluginState.RUNNING else DOWN)
            for name in asked}


def _rfc3339(stamp: str) -> str:
    return stamp if isinstance(stamp, str) and stamp.endswith("Z") else \
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def model_list(gateway: Gateway) -> dict[str, Any]:
    """`GET /aog/v0.2/services/models` when no plugin serves `models` itself: the
    downloaded models, in AOG's (Ollama-like) shape `{"models": [...]}`."""
    out = []
    for row in gateway.store.models():
        if row.status != ModelStatus.DOWNLOADED:
            continue
        out.append({"name": row.model_name, "model": row.model_name,
                    "modified_at": _rfc3339(row.updated_at), "size": row.size, "digest": "",
                    "details": {"format": "", "family": "", "families": [],
                                "parameter_size": "", "quantization_level": ""},
                    "service_name": row.service_name, "provider_name": row.provider_name,
                    "service_source": row.service_source, "is_default": row.is_default})
    return {"models": out}


def register_aog_compat(app: QuartTrio, gateway: Gateway) -> None:
    """Wire AOG's engine, model-list and control panel routes into the app."""

    @app.get("/engine/health")
    @app.get(f"{BASE}/engine/health")
    async def engine_health_route() -> Any:
        return jsonify(_envelope(80000, "engine health check success",
                                 engine_health(gateway)))

    @app.get("/engine/version")
    @app.get(f"{BASE}/engine/version")
    async def engine_version_route() -> Any:
        engines, asked = _asked_engines(gateway)
        return jsonify(_envelope(70000, "engine version interface call success", {
            name: (engines[name].manifest.provider.version or "") if name in engines
            else NOT_FOUND for name in asked}))

    @app.get(f"{BASE}/services/models")
    async def services_models() -> Any:
        return jsonify(model_list(gateway))

    # ---- the control panel's API ----

    @app.get(f"{BASE}/control_panel/about")
    async def about() -> Any:
        return jsonify(_envelope(90000, "control panel interface call success", {
            "version": AOG_VERSION, "spec_version": SPEC_VERSION, "aogstream": __version__,
            "name": "aogstream", "description": "AIPC Open Gateway compatible gateway"}))

    @app.get(f"{BASE}/control_panel/dashboard")
    async def dashboard() -> Any:
        services = [s.public() for s in gateway.store.services()]
        models = gateway.store.models()
        return jsonify(_envelope(90000, "control panel interface call success", {
            "services": services,
            "engines": engine_health(gateway),
            "model_count": sum(1 for r in models if r.status == ModelStatus.DOWNLOADED),
            "plugin_count": len(gateway.plugins)}))

    @app.get(f"{BASE}/control_panel/modellist")
    async def modellist() -> Any:
        rows = [r.public() for r in gateway.store.models()]
        return jsonify(_envelope(90000, "control panel interface call success", rows))

    @app.post(f"{BASE}/control_panel/set_default")
    async def set_default() -> Any:
        """Make a downloaded model the default of its service (the one a request
        without `model` gets), as AOG's control panel does."""
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _bad("send a JSON object {provider_name, model_name, service_name}")
        names = {k: body.get(k) for k in ("provider_name", "model_name", "service_name")}
        missing = [k for k, v in names.items() if not isinstance(v, str) or not v]
        if missing:
            return _bad(f"{', '.join(missing)} required (strings)")
        is_default = body.get("is_default", True)
        if isinstance(is_default, str):
            is_default = is_default.lower() in ("true", "1", "yes")

        def write() -> str:
            rows = gateway.store.models(service_name=cast(str, names["service_name"]))
            mine = [r for r in rows if r.provider_name == names["provider_name"]
                    and r.model_name == names["model_name"] and r.status == ModelStatus.DOWNLOADED]
            if not mine:
                have = sorted(f"{r.provider_name}/{r.model_name}" for r in rows
                              if r.status == ModelStatus.DOWNLOADED)
                return (f"no downloaded model {names['model_name']!r} of provider "
                        f"{names['provider_name']!r} for {names['service_name']!r}; "
                        f"downloaded: {', '.join(have) or 'none'}")
            for r in rows:
                if r is mine[0]:
                    want = bool(is_default)
                elif is_default:
                    want = False  # one default per service
                else:
                    continue
                if r.is_default != want:
                    r.is_default = want
                    gateway.store.put_model(r)
            return ""

        problem = await trio.to_thread.run_sync(write)
        if problem:
            return jsonify(_envelope(errors.MODEL_NOT_FOUND.code, problem)), 404
        await gateway.reload()
        return jsonify(_envelope(90000, "control panel interface call success"))

    @app.route(f"{BASE}/control_panel/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
    async def control_panel_other(rest: str) -> Any:
        hint = (f"nothing: stored keys are never returned; PUT {BASE}/service_provider with "
                "auth_key sets one" if rest == "modelkey" else
                f"GET {BASE}/control_panel/about, /dashboard or /modellist, or POST "
                f"{BASE}/control_panel/set_default")
        return jsonify(_envelope(404, f"{BASE}/control_panel/{rest} is not served by this "
                                 f"gateway; use {hint}")), 404


def _bad(message: str) -> Any:
    return jsonify(_envelope(90001, message)), 400
