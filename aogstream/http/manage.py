"""The management routes under `/aog/v0.2`: service, service_provider, model, plugin.

A thin HTTP layer over the parts of `aogstream.management`: it reads the request fields,
checks their types and answers in AOG's envelope `{business_code, message, data}`.

Fields come from the query string and from a JSON body alike (the body wins), for
every method, GET included: AOG's own CLI sends JSON bodies on GET while gin binds
GET requests from the query string, so clients of both kinds exist.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestTimeout

from aogstream import SPEC_VERSION, errors, safejson
from aogstream.errors import (
    BAD_REQUEST,
    MODEL_BAD,
    MODEL_OK,
    PLUGIN_INVALID,
    PLUGIN_OK,
    PROVIDER_BAD,
    PROVIDER_OK,
    SERVICE_OK,
    Bcode,
    GatewayError,
    without_paths,
)
from aogstream.gateway import Gateway
from aogstream.http.ollama_models import ollama_models_blueprint
from aogstream.http.pull_stream import pull_stream_response
from aogstream.management.catalogue import ModelCatalogue
from aogstream.management.model_pulls import ModelPulls, PullJob
from aogstream.management.plugins import Plugins
from aogstream.management.providers import Providers
from aogstream.management.services import Services
from aogstream.management.shared import json_object_text
from aogstream.store import StoreError
from aogstream.store.base import ModelStatus

log = logging.getLogger(__name__)
BASE = f"/aog/{SPEC_VERSION}"


class Fields:
    """Request fields with type checks whose errors name the field."""

    def __init__(self, data: dict[str, Any], bad: Bcode) -> None:
        self.data = data
        self.bad = bad

    def __contains__(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def text(self, key: str, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise GatewayError(self.bad, f"{key} is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise GatewayError(self.bad, f"{key} must be a string, not "
                                         f"{type(value).__name__}")
        return str(value).strip()

    def flag(self, key: str) -> bool:
        value = self.data.get(key)
        if value is None or value == "":
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise GatewayError(self.bad, f"{key} must be true or false, got {value!r}")

    def number(self, key: str, default: int) -> int:
        value = self.data.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise GatewayError(self.bad, f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise GatewayError(self.bad, f"{key} must be an integer, got {value!r}") from None

    def raw(self, *keys: str) -> dict[str, Any]:
        """The given keys that are present, untouched (the manager checks them)."""
        return {k: self.data[k] for k in keys if k in self}


async def read_fields(bad: Bcode) -> Fields:
    data: dict[str, Any] = {k: request.args.getlist(k)[-1] for k in request.args}
    try:
        raw = await request.get_data()
    except RequestTimeout:  # BODY_TIMEOUT: the same answer as the hot routes give
        raise GatewayError(errors.BODY_TIMEOUT,
                           f"the request body did not arrive in time (the limit is "
                           f"{request.body_timeout:g} s, AOGSTREAM_BODY_TIMEOUT); send the "
                           "whole body without pausing") from None
    if raw.strip():
        try:
            data.update(safejson.loads_object(raw))
        except safejson.JSONInputError as exc:
            raise GatewayError(bad, str(exc)) from None
    return Fields(data, bad)


def ok(bcode: Bcode, data: Any = None, message: str = "") -> Response:
    body: dict[str, Any] = {"business_code": bcode.code,
                            "message": message or errors.SUCCESS_MESSAGES[bcode.code]}
    if data is not None:
        body["data"] = data
    return Response(json.dumps(body, ensure_ascii=False), status=200,
                    mimetype="application/json")


def failure(err: GatewayError) -> Response:
    return Response(err.body(), status=err.status, mimetype="application/json")


PROVIDER_KEYS = ("service_name", "service_source", "api_flavor", "provider_name", "desc",
                 "method", "url", "auth_type", "auth_key", "models", "extra_headers",
                 "extra_json_body", "properties")


def _sse_event(event: dict[str, Any]) -> bytes:
    """A pull event as one SSE `data:` frame."""
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def management_blueprint(gateway: Gateway, pulls: ModelPulls | None = None) -> Blueprint:
    """The routes, bound to one gateway's management parts."""
    pulls = pulls or ModelPulls(gateway)
    providers = Providers(gateway, pulls)
    services = Services(gateway, providers, pulls)
    catalogue = ModelCatalogue(gateway)
    plugins = Plugins(gateway, pulls)
    bp = Blueprint("management", __name__, url_prefix=BASE)

    @bp.errorhandler(GatewayError)
    async def gateway_error(err: GatewayError) -> Response:
        return failure(err)

    # ---- service ----

    @bp.get("/service")
    async def get_services() -> Response:
        f = await read_fields(BAD_REQUEST)
        return ok(SERVICE_OK, await services.list_services(f.text("service_name")))

    @bp.put("/service")
    async def edit_service() -> Response:
        f = await read_fields(BAD_REQUEST)
        data = await services.edit_service(f.text("service_name", required=True),
                                           f.text("hybrid_policy", required=True))
        return ok(SERVICE_OK, data)

    @bp.post("/service/install")
    async def install_service() -> Response:
        f = await read_fields(BAD_REQUEST)
        auth_key = f.data.get("auth_key") or ""
        if auth_key:
            auth_key = json_object_text(auth_key, "auth_key", BAD_REQUEST)
        data = await services.install_service(
            f.text("service_name", required=True), service_source=f.text("service_source"),
            provider_name=f.text("provider_name"), api_flavor=f.text("api_flavor"),
            auth_type=f.text("auth_type"), auth_key=auth_key, model_name=f.text("model_name"),
            skip_model=f.flag("skip_model"), url=f.text("url"), method=f.text("method"),
            desc=f.text("desc"))
        return ok(SERVICE_OK, data)

    @bp.post("/service/export")
    async def export_services() -> Response:
        f = await read_fields(BAD_REQUEST)
        data = await services.export(f.text("service_name"), f.text("provider_name"),
                                     f.text("model_name"))
        # the `.aog` document bare, as AOG answers it (`aog export` writes the body to
        # the file as it comes; errors still come in the envelope)
        return Response(json.dumps(data, ensure_ascii=False), status=200,
                        mimetype="application/json")

    @bp.post("/service/import")
    async def import_services() -> Response:
        f = await read_fields(BAD_REQUEST)
        return ok(SERVICE_OK, await services.import_(f.data))

    # ---- service_provider ----

    def provider_filters(f: Fields) -> dict[str, str]:
        return {k: f.text(k) for k in ("service_name", "service_source", "provider_name",
                                       "api_flavor")}

    @bp.get("/service_provider")
    async def get_providers() -> Response:
        f = await read_fields(PROVIDER_BAD)
        return ok(PROVIDER_OK, await providers.list_providers(**provider_filters(f)))

    @bp.get("/service_provider/detail")
    async def provider_detail() -> Response:
        f = await read_fields(PROVIDER_BAD)
        return ok(PROVIDER_OK, await providers.provider_detail(**provider_filters(f)))

    @bp.post("/service_provider")
    async def create_provider() -> Response:
        f = await read_fields(PROVIDER_BAD)
        return ok(PROVIDER_OK, await providers.create_provider(f.raw(*PROVIDER_KEYS)))

    @bp.put("/service_provider")
    async def update_provider() -> Response:
        f = await read_fields(PROVIDER_BAD)
        f.text("provider_name", required=True)
        return ok(PROVIDER_OK, await providers.update_provider(f.raw(*PROVIDER_KEYS)))

    @bp.delete("/service_provider")
    async def delete_provider() -> Response:
        f = await read_fields(PROVIDER_BAD)
        await providers.delete_provider(f.text("provider_name", required=True))
        return ok(PROVIDER_OK)

    # ---- model ----

    @bp.get("/model")
    async def get_models() -> Response:
        f = await read_fields(MODEL_BAD)
        return ok(MODEL_OK, await pulls.list_models(
            f.text("provider_name"), f.text("model_name"), f.text("service_name")))

    async def pull_job(f: Fields, background: bool) -> PullJob:
        return await pulls.start_pull(f.text("provider_name"),
                                      f.text("model_name", required=True),
                                      f.text("service_name"), f.text("service_source"),
                                      background=background)

    @bp.post("/model")
    async def pull_model() -> Response:
        job = await pull_job(await read_fields(MODEL_BAD), True)
        return ok(MODEL_OK, {"provider_name": job.provider.provider_name,
                             "model_name": job.model_name,
                             "status": ModelStatus.DOWNLOADING},
                  f"pulling {job.model_name} in the background; GET /model shows its status")

    @bp.post("/model/stream")
    async def pull_model_stream() -> Response:
        job = await pull_job(await read_fields(MODEL_BAD), False)
        return pull_stream_response(job, _sse_event, "text/event-stream")

    @bp.post("/model/stream/cancel")
    async def cancel_pull() -> Response:
        f = await read_fields(MODEL_BAD)
        canceled_on = pulls.cancel_pull(f.text("model_name", required=True))
        return ok(MODEL_OK, {"providers": canceled_on})

    @bp.delete("/model")
    async def delete_model() -> Response:
        f = await read_fields(MODEL_BAD)
        data = await pulls.delete_model(f.text("provider_name"),
                                        f.text("model_name", required=True),
                                        f.text("service_name"))
        return ok(MODEL_OK, data)

    @bp.get("/model/recommend")
    async def recommend() -> Response:
        await read_fields(MODEL_BAD)
        return ok(MODEL_OK, await catalogue.recommend())

    @bp.get("/model/support")
    async def support() -> Response:
        f = await read_fields(MODEL_BAD)
        return ok(MODEL_OK, await catalogue.support(
            service_name=f.text("service_name"), flavor=f.text("flavor"),
            service_source=f.text("service_source"), search_name=f.text("search_name"),
            page=f.number("page", 1), page_size=f.number("page_size", 10)))

    # ---- plugin ----

    @bp.get("/plugin/list")
    async def plugin_list() -> Response:
        return ok(PLUGIN_OK, await plugins.list_plugins())

    async def plugin_name() -> str:
        return (await read_fields(PLUGIN_INVALID)).text("name", required=True)

    @bp.get("/plugin/info")
    async def plugin_info() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_info(await plugin_name()))

    @bp.post("/plugin/load")
    async def plugin_load() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_load(await plugin_name()))

    @bp.post("/plugin/stop")
    async def plugin_stop() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_stop(await plugin_name()))

    @bp.delete("/plugin/delete")
    async def plugin_delete() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_delete(await plugin_name()))

    @bp.post("/plugin/install")
    async def plugin_install() -> Response:
        f = await read_fields(PLUGIN_INVALID)
        return ok(PLUGIN_OK, await plugins.plugin_install(f.text("path", required=True)))

    @bp.post("/plugin/enable")
    async def plugin_enable() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_enable(await plugin_name()))

    @bp.post("/plugin/disable")
    async def plugin_disable() -> Response:
        return ok(PLUGIN_OK, await plugins.plugin_disable(await plugin_name()))

    return bp


def register_management(app: QuartTrio, gateway: Gateway) -> None:
    """Wire the management routes into the app, with JSON answers for wrong methods
    and unexpected failures (never an HTML error page)."""
    pulls = ModelPulls(gateway)
    app.register_blueprint(management_blueprint(gateway, pulls))
    app.register_blueprint(ollama_models_blueprint(gateway, pulls))  # /api/pull, /api/delete

    @app.errorhandler(405)
    async def method_not_allowed(exc: Any) -> Response:
        allowed = sorted(m for m in (getattr(exc, "valid_methods", None) or ())
                         if m not in ("HEAD", "OPTIONS"))
        hint = f"; use {', '.join(allowed)}" if allowed else ""
        return failure(GatewayError(errors.METHOD_NOT_ALLOWED,
                                    f"{request.method} is not allowed on {request.path}{hint}"))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        if isinstance(exc, GatewayError):
            return failure(exc)
        if isinstance(exc, HTTPException):
            code = exc.code or 500
            return failure(GatewayError(Bcode(code, code), exc.description or exc.name))
        detail = without_paths(safejson.short(str(exc), 300))
        if isinstance(exc, StoreError):  # e.g. the shared PostgreSQL server is down
            log.warning("management call %s %s: the store failed: %s", request.method,
                        request.path, detail)
            return failure(GatewayError(errors.STORE_UNAVAILABLE, f"the gateway's database "
                                        f"cannot be used now ({detail}); retry when it "
                                        "is back"))
        log.exception("management call %s %s failed", request.method, request.path)
        return failure(GatewayError(errors.PLUGIN_INTERNAL, f"internal error: "
                                    f"{type(exc).__name__}: {detail}; see the gateway log"))
