"""Ollama's model management, `POST /api/pull` and `DELETE /api/delete`, on top of the
gateway's own model pulls (`management.model_pulls`), so a pull started here is the same
job `/aog/v0.2/model` reports and a second client joins it.

`/api/pull` streams NDJSON progress by default (`"stream": false` waits and answers one
`{"status": "success"}`): `pulling manifest`, the plugin's own progress lines (already
Ollama's `{status, digest, total, completed}`), then `success`; a failure is a last
`{"error": ...}` line. The model is pulled for the service whose provider declares it
(chat first, then embed, then generate). Ollama's clients name the model `model` or
`name` (ollama-js); both are read.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Blueprint, Response, request

from aogstream import errors
from aogstream.gateway import Gateway
from aogstream.http.pull_stream import pull_stream_response
from aogstream.management.model_pulls import ModelPulls, PullOutcome
from aogstream.store.base import ModelStatus

PULL_SERVICES = ("chat", "embed", "generate")


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status,
                    mimetype="application/json")


async def _body() -> dict[str, Any]:
    raw = await request.get_data()
    try:
        obj = json.loads(raw or b"{}")
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise errors.GatewayError(errors.BAD_REQUEST,
                                  'the body must be a JSON object: {"model": "<name>"}')
    return obj


def _model(obj: dict[str, Any]) -> str:
    name = obj.get("model") or obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise errors.GatewayError(errors.BAD_REQUEST, "'model' must name the model")
    return name.strip()


_MANIFEST = b'{"status":"pulling manifest"}\n'


def _ndjson_event(event: dict[str, Any]) -> bytes | None:
    """A pull event as Ollama's progress line; its own `pulling manifest` is already sent
    first, and a failure or cancel is Ollama's `{"error": ...}`."""
    status = event.get("status")
    if status == "pulling manifest":
        return None
    if status in ("error", "canceled"):
        out: dict[str, Any] = {"error": event.get("data") or status}
    else:
        out = {k: v for k, v in event.items() if k in ("status", "digest", "total", "completed")}
    return json.dumps(out, ensure_ascii=False).encode() + b"\n"


def ollama_models_blueprint(gateway: Gateway, pulls: ModelPulls) -> Blueprint:
    """The two routes, bound to the gateway's one set of model pulls."""
    bp = Blueprint("ollama_models", __name__)

    @bp.errorhandler(errors.GatewayError)
    async def failed(err: errors.GatewayError) -> Response:
        return _error(err.status, err.message)

    async def service_for(model: str) -> str:
        """The service whose provider declares the model (chat when none does)."""
        providers = await trio.to_thread.run_sync(gateway.store.providers)
        for svc in PULL_SERVICES:
            if any(p.service_name == svc and model in p.models for p in providers):
                return svc
        return PULL_SERVICES[0]

    @bp.post("/api/pull")
    async def pull() -> Response:
        obj = await _body()
        model = _model(obj)
        stream = obj.get("stream") is not False
        downloaded = any(name == model for (_, name) in gateway.downloaded_models())
        job = None if downloaded else await pulls.start_pull(
            "", model, await service_for(model), "local", background=not stream)
        if not stream:
            if job is not None:
                await job.done.wait()
                if job.outcome != PullOutcome.SUCCESS:
                    return _error(500, job.error or job.cancel_reason or "the pull failed")
            return Response(json.dumps({"status": "success"}), mimetype="application/json")
        if job is None:
            return Response(_MANIFEST + b'{"status":"success"}\n',
                            mimetype="application/x-ndjson")
        return pull_stream_response(job, _ndjson_event, "application/x-ndjson", _MANIFEST)

    @bp.delete("/api/delete")
    async def delete() -> Response:
        model = _model(await _body())
        rows = [r for (_, name), rs in gateway.downloaded_models().items() if name == model
                for r in rs if r.status == ModelStatus.DOWNLOADED]
        if not rows:
            return _error(404, f"model '{model}' not found")
        for row in rows:
            await pulls.delete_model(row.provider_name, model, row.service_name)
        return Response(b"", status=200)

    return bp
