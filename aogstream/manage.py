"""Management of a running gateway: services, providers, models and plugins.

The HTTP management routes (`aogstream.http.manage`) are a thin layer over `Manager`,
so everything here takes plain, already-typed arguments and raises `GatewayError`s
with AOG's business codes and a message that names what was wrong and what exists.

Why the work is done here and not in the store: a management call usually touches
three things at once (the SQLite store, a plugin process over gRPC, the in-memory
routing table), and must leave them agreeing. Store calls block, so they run in a
worker thread; after each write the routing table is rebuilt (`gateway.reload()`).

Model pulls run as jobs in the gateway's nursery, not in the HTTP request: a pull
outlives a client that only asked for it in the background (`POST /model`), several
clients may watch one pull, and `/model/stream/cancel` can reach it from another
request. A job's store row goes downloading → downloaded | failed; a canceled pull
leaves no row behind (unless the model was already downloaded before).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from aogstream import AOG_VERSION, errors, safejson, status
from aogstream import manifest as m
from aogstream.errors import Bcode, GatewayError
from aogstream.gateway import Gateway, provider_name_for
from aogstream.host.client import PluginClient
from aogstream.host.process import PluginSupervisor
from aogstream.management import archives
from aogstream.rpc.bridge import RpcFailure
from aogstream.store import HYBRID_POLICIES, ModelRow, ProviderRow, Service
from aogstream.store.base import AUTH_TYPES, SERVICE_AVAILABLE, SOURCES

log = logging.getLogger(__name__)
T = TypeVar("T")

# ---- AOG's business codes, per family (internal/utils/bcode) -------------------------

SERVICE_OK = Bcode(200, 10000)
SERVICE_BAD = Bcode(400, 10001)
SERVICE_INSTALL_ENGINE = Bcode(500, 10003)
SERVICE_START_ENGINE = Bcode(500, 10004)
SERVICE_PULL_MODEL = Bcode(500, 10006)
SERVICE_PROVIDER_EXISTS = Bcode(409, 10009)
SERVICE_NOT_FOUND = Bcode(404, 10011)
SERVICE_VERSION = Bcode(422, 10014)
SERVICE_UNSUPPORTED = Bcode(400, 10015)
SERVICE_POLICY = Bcode(400, 10016)
SERVICE_AUTH_TYPE = Bcode(400, 10018)

PROVIDER_OK = Bcode(200, 20000)
PROVIDER_BAD = Bcode(400, 20001)
PROVIDER_NOT_FOUND = Bcode(404, 20002)  # AOG: "provider invalid"
PROVIDER_UNAVAILABLE = Bcode(400, 20003)
PROVIDER_AUTH_LOST = Bcode(400, 20006)
PROVIDER_BAD_URL = Bcode(400, 20007)
PROVIDER_CANNOT_DELETE = Bcode(400, 20008)

MODEL_OK = Bcode(200, 30000)
MODEL_BAD = Bcode(400, 30001)
MODEL_BUSY = Bcode(409, 30002)
MODEL_NOT_FOUND = Bcode(404, 30003)
MODEL_ENGINE_DELETE = Bcode(500, 30006)

PLUGIN_OK = Bcode(200, 100000)
PLUGIN_NOT_FOUND = Bcode(404, 100001)
PLUGIN_LOAD_FAILED = Bcode(500, 100002)
PLUGIN_NOT_RUNNING = Bcode(503, 100003)
PLUGIN_INVALID = Bcode(400, 100004)
PLUGIN_CONFLICT = Bcode(409, 100004)
PLUGIN_AUTH_FAILED = Bcode(401, 100102)

SUCCESS_MESSAGES = {
    SERVICE_OK.code: "service interface call success",
    PROVIDER_OK.code: "service provider interface call success",
    MODEL_OK.code: "model interface call success",
    PLUGIN_OK.code: "Plugin operation success",
}

PLUGIN_STATUS = {"running": m.PLUGIN_STATUS_RUNNING}  # everything else: stopped (2)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "WS")
UNSUPPORTED_CODES = {m.ERR_CODE_UNIMPLEMENTED, 501, m.ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED,
                     m.ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED}
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # a folder name any file system takes
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")  # as plugins store them
READY_WAIT_S = 10.0  # how long a call waits for a plugin that is (re)starting


def model_name_for_url(url: str) -> str:
    """The name of a model pulled from `url`: its file name without extensions
    (`https://host/voices/en_US-joe.onnx?dl=1` → `en_US-joe`), as the local plugins store
    a URL's model."""
    stem = re.sub(r"(\.[A-Za-z0-9]+)+$", "",
                  urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not MODEL_NAME.match(stem):
        raise GatewayError(MODEL_BAD, f"cannot name a model after {url!r}: its file name "
                                      f"{stem!r} is not a model name (letters, digits and "
                                      f". _ : + -); give a URL that ends in the model's file")
    return stem


def _names(items: list[str] | set[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def _need(value: str, field: str, bcode: Bcode) -> str:
    if not value:
        raise GatewayError(bcode, f"{field} is required")
    return value


def json_object_text(value: Any, field: str, bcode: Bcode) -> str:
    """A JSON object given as text (AOG's way) or as an object, as canonical text."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise GatewayError(bcode, f"{field} must be a JSON object (or a string holding one)")
    try:
        parsed = safejson.loads(value, field)
    except safejson.JSONInputError as exc:
        raise GatewayError(bcode, str(exc)) from None
    if not isinstance(parsed, dict):
        raise GatewayError(bcode, f"{field} must be a JSON object, e.g. "
                                  '{"api_key": "..."}')
    return json.dumps(parsed, ensure_ascii=False)


def credentials_of(auth_key: str) -> dict[str, str]:
    """The stored `auth_key` JSON as the string map SetAuth takes."""
    try:
        data = json.loads(auth_key) if auth_key else {}
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _human_size(size: int) -> str:
    if size <= 0:
        return ""
    units = ["B", "KB", "MB", "GB", "TB"]
    i = min(int(math.log(size, 1024)), len(units) - 1)
    return f"{size / 1024 ** i:.1f} {units[i]}"


# ---- model pulls ------------------------------------------------------------------------


class _PullFailed(Exception):
    """A pull ended without success (the message is shown to the user)."""


@attrs.define(eq=False)
class PullJob:
    """One model pull in flight, watched by zero or more progress streams."""

    provider: ProviderRow
    model_name: str
    service_name: str
    background: bool
    was_downloaded: bool = False
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    outcome: str = ""  # success | error | canceled
    error: str = ""
    cancel_reason: str = ""
    source: str = ""  # the URL a model named after it is pulled from
    watchers: list[trio.MemorySendChannel[dict[str, Any]]] = attrs.Factory(list)

    @property
    def key(self) -> tuple[str, str]:
        return self.provider.provider_name, self.model_name

    def watch(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        send, recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        if self.done.is_set():
            send.close()
        else:
            self.watchers.append(send)
        return recv

    def unwatch(self, recv: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        """A watcher left. A pull only a stream asked for is not worth finishing when
        nobody watches it any more (the client disconnected)."""
        recv.close()
        self.watchers = [w for w in self.watchers if not _closed(w)]
        if not self.watchers and not self.background and not self.done.is_set():
            self.cancel("the client that asked for it went away")

    def publish(self, event: dict[str, Any]) -> None:
        for w in list(self.watchers):
            try:
                w.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.watchers.remove(w)

    def cancel(self, reason: str) -> None:
        if not self.cancel_reason:
            self.cancel_reason = reason
        self.scope.cancel()

    def finish(self) -> None:
        for w in self.watchers:
            w.close()
        self.watchers.clear()
        self.done.set()


def _closed(send: trio.MemorySendChannel[Any]) -> bool:
    try:
        return send.statistics().open_receive_channels == 0
    except trio.ClosedResourceError:
        return True


# ---- the manager ------------------------------------------------------------------------


class Manager:
    """Management operations of one running gateway (one per process)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.store = gateway.store
        self._jobs: dict[tuple[str, str], PullJob] = {}
        # a pull that was running when the gateway last stopped did not finish
        for row in self.store.models():
            if row.status == "downloading":
                row.status = "failed"
                self.store.put_model(row)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking store call, off the event loop."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    @property
    def installed_plugins_dir(self) -> Path:
        return self.gw.config.data_dir / "plugins"

    # ---- lookups with helpful errors ----

    async def _service(self, name: str, bcode: Bcode = SERVICE_NOT_FOUND) -> Service:
        svc = await self._db(self.store.get_service, name)
        if svc is None:
            known = [s.service_name for s in await self._db(self.store.services)]
            raise GatewayError(bcode, f"service {name!r} does not exist; known services: "
                                      f"{_names(known)}")
        return svc

    async def _provider(self, name: str, bcode: Bcode = PROVIDER_NOT_FOUND) -> ProviderRow:
        row = await self._db(self.store.get_provider, name)
        if row is None:
            known = [p.provider_name for p in await self._db(self.store.providers)]
            raise GatewayError(bcode, f"service provider {name!r} does not exist; known "
                                      f"providers: {_names(known)}")
        return row

    def _plugin(self, name: str) -> PluginSupervisor:
        if not name:
            raise GatewayError(PLUGIN_INVALID, "name is required (the plugin's name)")
        plugin = self.gw.plugins.get(name)
        if plugin is None:
            raise GatewayError(PLUGIN_NOT_FOUND, f"plugin {name!r} is not loaded; loaded "
                                                 f"plugins: {_names(set(self.gw.plugins))}")
        return plugin

    def plugin_of(self, provider: ProviderRow) -> PluginSupervisor | None:
        """The plugin process behind a provider row (its flavor names the plugin)."""
        return self.gw.plugins.get(provider.flavor)

    async def _client(self, plugin: PluginSupervisor) -> PluginClient:
        """The plugin's connection, waiting a little for one that is (re)starting."""
        if plugin.state in ("starting", "restarting"):
            await plugin.wait_ready(min(READY_WAIT_S, self.gw.config.plugin_start_timeout))
        if plugin.client is None or plugin.state != "running":
            enabled = await self._db(self.store.plugin_enabled, plugin.name)
            if not enabled:
                hint = "it is disabled; enable it with POST /plugin/enable"
            else:
                hint = "start it with POST /plugin/load" + (
                    f" (last error: {plugin.last_error})" if plugin.last_error else "")
            raise GatewayError(PLUGIN_NOT_RUNNING,
                               f"plugin {plugin.name} is not running ({plugin.state}); {hint}")
        return plugin.client

    async def _call(self, plugin: PluginSupervisor, what: str,
                    fn: Callable[[], Awaitable[T]]) -> T:
        """A plugin rpc whose failure becomes a GatewayError naming plugin and step."""
        try:
            return await fn()
        except m.PluginError as exc:
            err = errors.from_plugin_code(exc.code, exc.message, plugin.name)
            raise GatewayError(err.bcode, f"{what}: {err.message}") from None
        except RpcFailure as exc:
            raise GatewayError(errors.PLUGIN_UNAVAILABLE,
                               f"{what}: plugin {plugin.name} failed: "
                               f"{exc.details or exc.code}") from None

    # ================================ services ================================

    async def list_services(self, service_name: str = "") -> list[dict[str, Any]]:
        services = [await self._service(service_name)] if service_name else \
            await self._db(self.store.services)
        providers = await self._db(self.store.providers)
        return [status.service_public(self.gw, s, providers) for s in services]

    async def edit_service(self, service_name: str, hybrid_policy: str) -> dict[str, Any]:
        _need(service_name, "service_name", SERVICE_BAD)
        if hybrid_policy not in HYBRID_POLICIES:
            raise GatewayError(SERVICE_POLICY, f"hybrid_policy {hybrid_policy!r} is not one of "
                                               f"{', '.join(HYBRID_POLICIES)}")
        svc = await self._service(service_name)
        svc.hybrid_policy = hybrid_policy
        await self._db(self.store.put_service, svc)
        await self.gw.reload()
        return svc.public()

    async def install_service(
        self, service_name: str, *, service_source: str = "local", provider_name: str = "",
        api_flavor: str = "", auth_type: str = "", auth_key: str = "", model_name: str = "",
        skip_model: bool = False, url: str = "", method: str = "", desc: str = "",
    ) -> dict[str, Any]:
        """Make a service usable. Local: each local plugin provider gets its engine
        checked, installed when missing and started, and the default (or named) model
        pulled. Remote: the provider's credentials are set on its plugin and checked
        with a live ValidateAuth."""
        _need(service_name, "service_name", SERVICE_BAD)
        source = service_source or "local"
        if source not in SOURCES:
            raise GatewayError(SERVICE_BAD, f"service_source {source!r} is not one of "
                                            f"{', '.join(SOURCES)}")
        svc = await self._service(service_name)
        if source == "remote":
            result = await self._install_remote(svc, provider_name, api_flavor, auth_type,
                                                auth_key, url, method, desc)
        else:
            result = await self._install_local(svc, provider_name, api_flavor, model_name,
                                               skip_model)
        svc = await self._service(service_name)
        svc.status = SERVICE_AVAILABLE
        await self._db(self.store.put_service, svc)
        await self.gw.reload()
        return {"service": svc.public(), **result}

    async def _install_local(self, svc: Service, provider_name: str, api_flavor: str,
                             model_name: str, skip_model: bool) -> dict[str, Any]:
        rows = [p for p in await self._db(self.store.providers, service_name=svc.service_name,
                                          service_source="local")
                if self.plugin_of(p) is not None]
        if provider_name:
            rows = [p for p in rows if p.provider_name == provider_name]
        if api_flavor:
            rows = [p for p in rows if p.flavor == api_flavor]
        if not rows:
            serving = sorted(p.name for p in self.gw.plugins.values()
                             if p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL
                             and svc.service_name in p.manifest.list_service_names())
            which = " matching " + ", ".join(
                f"{k}={v!r}" for k, v in (("provider_name", provider_name),
                                          ("api_flavor", api_flavor)) if v) \
                if provider_name or api_flavor else ""
            raise GatewayError(SERVICE_NOT_FOUND,
                               f"service {svc.service_name!r} has no local provider{which}; "
                               f"local plugins serving it: {_names(serving)}")
        done: list[dict[str, Any]] = []
        for row in rows:
            plugin = self.plugin_of(row)
            assert plugin is not None
            done.append(await self._ensure_local(plugin, row, svc.service_name, model_name,
                                                 skip_model))
        return {"providers": done}

    async def _ensure_local(self, plugin: PluginSupervisor, row: ProviderRow, service: str,
                            model_name: str, skip_model: bool) -> dict[str, Any]:
        client = await self._client(plugin)
        steps: list[str] = []
        try:
            installed = await self._call(plugin, "CheckEngine",
                                         lambda: client.check_engine(timeout=30))
        except GatewayError as exc:
            if exc.bcode != errors.PLUGIN_NOT_IMPLEMENTED:
                raise
            installed = None  # a plugin without engine management: nothing to prepare
        if installed is False:
            steps.append("install_engine")
            try:
                await self._call(plugin, "InstallEngine",
                                 lambda: client.install_engine(timeout=None))
            except GatewayError as exc:
                raise GatewayError(SERVICE_INSTALL_ENGINE, exc.message) from None
        if installed is not None:
            steps.append("start_engine")
            try:
                await self._call(plugin, "StartEngine",
                                 lambda: client.start_engine(
                                     "daemon", timeout=self.gw.config.plugin_start_timeout))
            except GatewayError as exc:
                if exc.bcode != errors.PLUGIN_NOT_IMPLEMENTED:
                    raise GatewayError(SERVICE_START_ENGINE, exc.message) from None
        model = model_name
        if not model:
            with contextlib.suppress(m.ServiceNotFoundError):
                model = plugin.manifest.get_service_by_name(service).default_model
        pulled = ""
        if model and not skip_model and installed is not None:
            have = await self._db(self.store.models, provider_name=row.provider_name,
                                  model_name=model)
            manages = True
            try:
                await self._call(plugin, "ListModels", lambda: client.list_models(timeout=30))
            except GatewayError as exc:
                if exc.bcode != errors.PLUGIN_NOT_IMPLEMENTED:
                    raise
                manages = False  # the plugin looks after its models itself
            if manages and not any(r.status == "downloaded" for r in have):
                job = await self.start_pull(row.provider_name, model, service, background=True)
                await job.done.wait()
                if job.outcome != "success":
                    how = "was canceled" if job.outcome == "canceled" else "failed"
                    raise GatewayError(SERVICE_PULL_MODEL,
                                       f"pulling {model!r} on {row.provider_name} {how}: "
                                       f"{job.error or job.cancel_reason}")
                steps.append("pull_model")
                pulled = model
        return {"provider_name": row.provider_name, "plugin": plugin.name, "steps": steps,
                "model": model, "pulled": pulled}

    async def _install_remote(self, svc: Service, provider_name: str, api_flavor: str,
                              auth_type: str, auth_key: str, url: str, method: str,
                              desc: str) -> dict[str, Any]:
        rows = await self._db(self.store.providers, service_name=svc.service_name,
                              service_source="remote")
        created = False
        if provider_name:
            row = next((p for p in rows if p.provider_name == provider_name), None)
            if row is None and api_flavor:
                # AOG's install creates the provider from the request
                await self.create_provider({
                    "service_name": svc.service_name, "service_source": "remote",
                    "api_flavor": api_flavor, "provider_name": provider_name,
                    "auth_type": auth_type or "none", "auth_key": auth_key, "url": url,
                    "method": method, "desc": desc})
                row = await self._provider(provider_name)
                created = True
            elif row is None:
                raise GatewayError(SERVICE_NOT_FOUND,
                                   f"remote provider {provider_name!r} of service "
                                   f"{svc.service_name!r} does not exist; remote providers: "
                                   f"{_names([p.provider_name for p in rows])} (or give "
                                   f"api_flavor to create it)")
            elif auth_key or auth_type:
                changes: dict[str, Any] = {"provider_name": provider_name}
                if auth_key:
                    changes["auth_key"] = auth_key
                if auth_type:
                    changes["auth_type"] = auth_type
                await self.update_provider(changes)
                row = await self._provider(provider_name)
        else:
            cands = [p for p in rows if not api_flavor or p.flavor == api_flavor]
            if not cands:
                raise GatewayError(SERVICE_NOT_FOUND,
                                   f"service {svc.service_name!r} has no remote provider; add "
                                   f"one with POST /service_provider (remote providers: none)")
            row = next((p for p in cands if p.auth_key or p.auth_type == "none"), cands[0])
        try:
            await self.check_remote(row)
        except GatewayError:
            if created:  # a provider whose credentials were refused is not left behind
                await self.delete_provider(row.provider_name)
            raise
        return {"providers": [{"provider_name": row.provider_name, "plugin": row.flavor,
                               "steps": ["set_auth", "validate_auth"]}]}

    async def check_remote(self, row: ProviderRow) -> None:
        """The live credential check: SetAuth then ValidateAuth on the provider's plugin."""
        plugin = self.plugin_of(row)
        if plugin is None:
            raise GatewayError(PROVIDER_UNAVAILABLE,
                               f"provider {row.provider_name}: its api_flavor {row.flavor!r} "
                               f"is not a loaded plugin, so its credentials cannot be checked; "
                               f"loaded plugins: {_names(set(self.gw.plugins))}")
        if row.auth_type != "none" and not row.auth_key:
            raise GatewayError(PROVIDER_AUTH_LOST,
                               f"provider {row.provider_name} has no credentials (auth_type "
                               f"{row.auth_type}); set them with PUT /service_provider "
                               f"{{\"provider_name\": ..., \"auth_key\": \"{{...}}\"}}")
        client = await self._client(plugin)
        creds = credentials_of(row.auth_key)
        for what, call in (("SetAuth", lambda: client.set_auth(row.auth_type, creds)),
                           ("ValidateAuth", lambda: client.validate_auth())):
            try:
                await call()
            except m.PluginError as exc:
                if exc.code in UNSUPPORTED_CODES:
                    continue  # a plugin that cannot check: the first call will tell
                raise GatewayError(PLUGIN_AUTH_FAILED,
                                   f"provider {row.provider_name}: plugin {plugin.name} "
                                   f"rejected the credentials ({what}): {exc.message}") from None
            except RpcFailure as exc:
                raise GatewayError(errors.PLUGIN_UNAVAILABLE,
                                   f"provider {row.provider_name}: {what} on plugin "
                                   f"{plugin.name} failed: {exc.details or exc.code}") from None

    # ---- export / import (.aog files) ----

    async def export(self, service_name: str = "", provider_name: str = "",
                     model_name: str = "") -> dict[str, Any]:
        """AOG's `.aog` document. Credentials are never exported."""
        if service_name:
            await self._service(service_name)
        if provider_name:
            await self._provider(provider_name)
        services = await self._db(self.store.services)
        providers = await self._db(self.store.providers)
        models = await self._db(self.store.models)
        if service_name:
            services = [s for s in services if s.service_name == service_name]
            providers = [p for p in providers if p.service_name == service_name]
        if provider_name:
            providers = [p for p in providers if p.provider_name == provider_name]
        held: dict[str, list[ModelRow]] = {}
        for r in models:
            if r.status == "downloaded":
                held.setdefault(r.provider_name, []).append(r)
        entries: dict[str, Any] = {}
        for p in providers:
            names = [r.model_name for r in held.get(p.provider_name, [])]
            if model_name:
                if model_name not in names:
                    continue
                names = [model_name]
            entries[p.provider_name] = {
                "service_name": p.service_name, "service_source": p.service_source,
                "desc": p.desc, "api_flavor": p.flavor, "method": p.method, "url": p.url,
                "auth_type": p.auth_type, "models": names}
        defaults = {r.provider_name for r in models if r.is_default}
        out_services: dict[str, Any] = {}
        for s in services:
            mine = [p for p in providers if p.service_name == s.service_name
                    and p.provider_name in entries]
            if (provider_name or model_name) and not mine:
                continue
            pick: dict[str, str] = {}
            for source in SOURCES:
                side = sorted((p for p in mine if p.service_source == source),
                              key=lambda p: p.provider_name not in defaults)
                pick[source] = side[0].provider_name if side else ""
            out_services[s.service_name] = {"service_providers": pick,
                                            "hybrid_policy": s.hybrid_policy}
        return {"version": AOG_VERSION, "services": out_services, "service_providers": entries}

    async def import_(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Apply a `.aog` document: hybrid policies, and providers (created or updated;
        stored credentials are kept unless the document carries new ones)."""
        services = doc.get("services") or {}
        entries = doc.get("service_providers") or {}
        if not isinstance(services, dict) or not isinstance(entries, dict):
            raise GatewayError(SERVICE_BAD, "services and service_providers must be JSON "
                                            "objects keyed by name (an exported .aog file)")
        if not services and not entries:
            raise GatewayError(SERVICE_BAD, "nothing to import: the document has neither "
                                            "services nor service_providers")
        known = {s.service_name: s for s in await self._db(self.store.services)}

        def known_service(name: Any, where: str) -> str:
            if not isinstance(name, str) or name not in known:
                raise GatewayError(SERVICE_UNSUPPORTED,
                                   f"{where}: service {name!r} does not exist here; known "
                                   f"services: {_names(set(known))}")
            return name

        policies: dict[str, str] = {}
        for name, entry in services.items():
            known_service(name, f"services.{name}")
            policy = entry.get("hybrid_policy", "") if isinstance(entry, dict) else ""
            if policy and policy not in HYBRID_POLICIES:
                raise GatewayError(SERVICE_POLICY,
                                   f"services.{name}.hybrid_policy {policy!r} is not one of "
                                   f"{', '.join(HYBRID_POLICIES)}")
            if policy:
                policies[name] = policy
        planned: list[dict[str, Any]] = []
        for pname, entry in entries.items():
            where = f"service_providers.{pname}"
            if not isinstance(entry, dict):
                raise GatewayError(SERVICE_BAD, f"{where} must be an object")
            fields = {"provider_name": pname,
                      "service_name": known_service(entry.get("service_name"),
                                                    f"{where}.service_name"),
                      "service_source": entry.get("service_source") or "local",
                      "api_flavor": entry.get("api_flavor") or "",
                      "desc": entry.get("desc") or "", "method": entry.get("method") or "POST",
                      "url": entry.get("url") or "",
                      "auth_type": entry.get("auth_type") or "none",
                      "models": entry.get("models") or []}
            if entry.get("auth_key"):
                fields["auth_key"] = entry["auth_key"]
            planned.append(self._checked_provider_fields(fields, where, creating=True,
                                                         bcode=SERVICE_BAD, need_key=False))
        created, updated, to_pull = [], [], []
        for fields in planned:
            existing = await self._db(self.store.get_provider, fields["provider_name"])
            if existing is None:
                await self.create_provider(fields, checked=True)
                created.append(fields["provider_name"])
            elif existing.is_plugin:  # the plugin's manifest owns the rest
                if fields.get("auth_key"):
                    await self.update_provider({"provider_name": fields["provider_name"],
                                                "auth_key": fields["auth_key"]}, checked=True)
                    updated.append(fields["provider_name"])
            else:
                await self.update_provider(fields, checked=True)
                updated.append(fields["provider_name"])
            if fields["service_source"] == "local":
                have = {r.model_name for r in await self._db(
                    self.store.models, provider_name=fields["provider_name"])
                    if r.status == "downloaded"}
                to_pull += [{"provider_name": fields["provider_name"], "model_name": mn,
                             "service_name": fields["service_name"]}
                            for mn in fields.get("models") or [] if mn not in have]
        for name, policy in policies.items():
            svc = known[name]
            svc.hybrid_policy = policy
            await self._db(self.store.put_service, svc)
        await self.gw.reload()
        return {"services": sorted(policies), "created": created, "updated": updated,
                "models_to_pull": to_pull}

    # ================================ providers ================================

    async def list_providers(self, service_name: str = "", service_source: str = "",
                             provider_name: str = "", api_flavor: str = ""
                             ) -> list[dict[str, Any]]:
        rows = await self._db(lambda: self.store.providers(
            service_name=service_name, service_source=service_source,
            provider_name=provider_name, flavor=api_flavor))
        return [status.provider_public(self.gw, p) for p in rows]

    async def provider_detail(self, service_name: str = "", service_source: str = "",
                              provider_name: str = "", api_flavor: str = ""
                              ) -> list[dict[str, Any]]:
        """Providers with their model rows (a named provider that does not exist is a 404)."""
        if provider_name:
            await self._provider(provider_name)
        out = await self.list_providers(service_name, service_source, provider_name,
                                        api_flavor)
        for item in out:
            item["model_rows"] = [r.public() for r in await self._db(
                self.store.models, provider_name=item["provider_name"])]
            plugin = self.gw.plugins.get(item["flavor"])
            item["plugin_state"] = plugin.state if plugin is not None else ""
        return out

    def _checked_provider_fields(self, f: dict[str, Any], where: str, *, creating: bool,
                                 bcode: Bcode = PROVIDER_BAD, need_key: bool = True
                                 ) -> dict[str, Any]:
        """Validate provider fields (those present); returns them normalised."""
        out: dict[str, Any] = {}
        prefix = f"{where}." if where else ""
        if creating:
            for key in ("service_name", "service_source", "api_flavor", "provider_name"):
                if not f.get(key):
                    raise GatewayError(bcode, f"{prefix}{key} is required")
        for key in ("provider_name", "service_name", "api_flavor", "desc"):
            if key in f and f[key] is not None:
                if not isinstance(f[key], str):
                    raise GatewayError(bcode, f"{prefix}{key} must be a string")
                out[key] = f[key].strip()
        if len(out.get("provider_name", "")) > 200:
            raise GatewayError(bcode, f"{prefix}provider_name is longer than 200 characters")
        if f.get("service_source"):
            if f["service_source"] not in SOURCES:
                raise GatewayError(bcode, f"{prefix}service_source {f['service_source']!r} "
                                          f"is not one of {', '.join(SOURCES)}")
            out["service_source"] = f["service_source"]
        if f.get("auth_type"):
            if f["auth_type"] not in AUTH_TYPES:
                raise GatewayError(SERVICE_AUTH_TYPE if bcode is SERVICE_BAD else bcode,
                                   f"{prefix}auth_type {f['auth_type']!r} is not one of "
                                   f"{', '.join(AUTH_TYPES)}")
            out["auth_type"] = f["auth_type"]
        if f.get("method"):
            method = str(f["method"]).upper()
            if method not in METHODS:
                raise GatewayError(bcode, f"{prefix}method {f['method']!r} is not one of "
                                          f"{', '.join(METHODS)}")
            out["method"] = method
        if f.get("url"):
            url = str(f["url"]).strip()
            if not re.match(r"^(https?|wss?)://[^\s/]+", url):
                raise GatewayError(PROVIDER_BAD_URL if bcode is PROVIDER_BAD else bcode,
                                   f"{prefix}url {url!r} is not an http(s):// or ws(s):// URL")
            out["url"] = url
        elif "url" in f and f["url"] is not None:
            out["url"] = ""
        if f.get("auth_key"):
            out["auth_key"] = json_object_text(f["auth_key"], f"{prefix}auth_key", bcode)
        for key in ("extra_headers", "extra_json_body", "properties"):
            if f.get(key):
                out[key] = json_object_text(f[key], f"{prefix}{key}", bcode)
        if f.get("models") is not None:
            models = f["models"]
            if isinstance(models, str):
                models = [x for x in (s.strip() for s in models.split(",")) if x]
            if not isinstance(models, list) or not all(isinstance(x, str) and x
                                                       for x in models):
                raise GatewayError(bcode, f"{prefix}models must be a list of model names")
            out["models"] = list(dict.fromkeys(models))
        if creating and need_key and out.get("auth_type", "none") != "none" and \
                not out.get("auth_key"):
            raise GatewayError(PROVIDER_AUTH_LOST if bcode is PROVIDER_BAD else bcode,
                               f"{prefix}auth_key is required when auth_type is "
                               f"{out['auth_type']} (a JSON object, e.g. "
                               '{"api_key": "..."})')
        return out

    async def create_provider(self, f: dict[str, Any], *, checked: bool = False
                              ) -> dict[str, Any]:
        """A custom provider. Remote ones have their models at once (nothing to pull)."""
        f = f if checked else self._checked_provider_fields(f, "", creating=True)
        name = f["provider_name"]
        if await self._db(self.store.get_provider, name) is not None:
            raise GatewayError(SERVICE_PROVIDER_EXISTS,
                               f"service provider {name!r} already exists; change it with "
                               f"PUT /service_provider or delete it first")
        await self._service(f["service_name"], SERVICE_UNSUPPORTED)
        row = ProviderRow(provider_name=name, service_name=f["service_name"],
                       service_source=f["service_source"], flavor=f["api_flavor"],
                       desc=f.get("desc", ""), method=f.get("method", "POST"),
                       url=f.get("url", ""), auth_type=f.get("auth_type", "none"),
                       auth_key=f.get("auth_key", ""),
                       extra_headers=f.get("extra_headers", "{}"),
                       extra_json_body=f.get("extra_json_body", "{}"),
                       properties=f.get("properties", "{}"), models=f.get("models", []),
                       scope="custom")
        await self._db(self._write_provider, row)
        await self.gw.reload()
        return row.public()

    async def update_provider(self, f: dict[str, Any], *, checked: bool = False
                              ) -> dict[str, Any]:
        """Change only the given fields; an empty or absent auth_key keeps the stored one."""
        f = f if checked else self._checked_provider_fields(f, "", creating=False)
        name = _need(f.get("provider_name", ""), "provider_name", PROVIDER_BAD)
        row = await self._provider(name)
        if row.is_plugin:
            for key, have in (("service_name", row.service_name),
                              ("service_source", row.service_source),
                              ("api_flavor", row.flavor)):
                if f.get(key) and f[key] != have:
                    raise GatewayError(PROVIDER_BAD,
                                       f"{key} of {name} comes from plugin {row.flavor}'s "
                                       f"manifest and cannot be changed (it is {have!r})")
        if f.get("service_name") and f["service_name"] != row.service_name:
            await self._service(f["service_name"], SERVICE_UNSUPPORTED)
        simple = {"service_name": "service_name", "service_source": "service_source",
                  "api_flavor": "flavor", "desc": "desc", "method": "method", "url": "url",
                  "auth_type": "auth_type", "auth_key": "auth_key",
                  "extra_headers": "extra_headers", "extra_json_body": "extra_json_body",
                  "properties": "properties", "models": "models"}
        for key, attr in simple.items():
            if key in f and (f[key] or key in ("desc", "url")) and \
                    (key != "auth_key" or f[key]):
                setattr(row, attr, f[key])
        if row.auth_type == "none" and "auth_type" in f:
            row.auth_key = ""  # switching credentials off forgets them
        await self._db(self._write_provider, row)
        await self.gw.reload()
        return row.public()

    def _write_provider(self, row: ProviderRow) -> None:
        """Store a provider; a remote one's models exist as soon as it does."""
        self.store.put_provider(row)
        if row.service_source != "remote":
            return
        rows = {r.model_name: r for r in self.store.models(provider_name=row.provider_name)}
        has_default = any(r.is_default for r in self.store.models(service_name=row.service_name))
        for model in row.models:
            if model not in rows:
                self.store.put_model(ModelRow(model, row.provider_name, row.service_name,
                                              "remote", is_default=not has_default))
                has_default = True
        for model, r in rows.items():
            if model not in row.models and r.status == "downloaded":
                self.store.delete_model(row.provider_name, model)

    async def delete_provider(self, provider_name: str) -> None:
        row = await self._provider(_need(provider_name, "provider_name", PROVIDER_BAD))
        if row.scope in ("plugin", "system"):
            what = f"plugin {row.flavor}" if row.is_plugin else "the gateway"
            raise GatewayError(PROVIDER_CANNOT_DELETE,
                               f"service provider {row.provider_name} belongs to {what} and "
                               f"would come back on the next start; disable or delete the "
                               f"plugin instead")
        for job in [j for k, j in self._jobs.items() if k[0] == provider_name]:
            job.cancel(f"provider {provider_name} was deleted")
        await self._db(self.store.delete_provider, provider_name)
        await self.gw.reload()

    # ================================ models ================================

    async def list_models(self, provider_name: str = "", model_name: str = "",
                          service_name: str = "") -> list[dict[str, Any]]:
        rows = await self._db(lambda: self.store.models(
            provider_name=provider_name, model_name=model_name, service_name=service_name))
        providers = {p.provider_name: p for p in await self._db(self.store.providers)}
        return [status.model_public(self.gw, r, providers) for r in rows]

    async def _pull_provider(self, provider_name: str, model_name: str, service_name: str,
                             service_source: str) -> ProviderRow:
        """The provider a pull goes to: the named one, else the service's provider that
        declares the model (local first unless service_source says remote)."""
        if provider_name:
            row = await self._provider(provider_name, MODEL_NOT_FOUND)
            if service_name and service_name != row.service_name:
                raise GatewayError(MODEL_BAD, f"provider {provider_name} serves "
                                              f"{row.service_name!r}, not {service_name!r}")
            return row
        if not service_name:
            raise GatewayError(MODEL_BAD, "provider_name (or service_name) is required")
        await self._service(service_name, MODEL_NOT_FOUND)
        rows = await self._db(self.store.providers, service_name=service_name)
        if service_source:
            rows = [r for r in rows if r.service_source == service_source]
        rows.sort(key=lambda r: (r.service_source != (service_source or "local"),
                                 model_name not in r.models, not r.is_plugin))
        if not rows:
            raise GatewayError(MODEL_NOT_FOUND, f"service {service_name!r} has no "
                                                f"{service_source or ''} provider to pull "
                                                f"{model_name!r} with".replace("  ", " "))
        return rows[0]

    async def start_pull(self, provider_name: str, model_name: str, service_name: str = "",
                         service_source: str = "", *, background: bool = True) -> PullJob:
        """Validate and start (or join) a pull; the returned job runs on its own.

        A model named by an http(s) URL is recorded, pulled and later deleted under one
        name, the URL's file name without extensions, which the plugin is told to store
        it under (PullModelRequest.name): the store and the plugin must agree on it."""
        _need(model_name, "model_name", MODEL_BAD)
        source = ""
        if re.match(r"^https?://", model_name):
            source, model_name = model_name, model_name_for_url(model_name)
        row = await self._pull_provider(provider_name, model_name, service_name,
                                        service_source)
        if service_source and service_source != row.service_source:
            raise GatewayError(MODEL_BAD, f"provider {row.provider_name} is "
                                          f"{row.service_source}, not {service_source}")
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:
            job.background = job.background or background
            return job
        plugin = None
        if row.service_source == "local":
            plugin = self.plugin_of(row)
            if plugin is None:
                raise GatewayError(MODEL_BAD, f"provider {row.provider_name} has no plugin "
                                              f"(api_flavor {row.flavor!r} is not a loaded "
                                              f"plugin) to pull {model_name!r} with")
            await self._client(plugin)
        before = await self._db(self.store.models, provider_name=row.provider_name,
                                model_name=model_name)
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:  # another request started it while we were checking
            job.background = job.background or background
            return job
        job = PullJob(row, model_name, row.service_name, background,
                      was_downloaded=any(r.status == "downloaded" for r in before),
                      source=source)
        self._jobs[job.key] = job
        if not job.was_downloaded:
            await self._db(self.store.put_model, ModelRow(
                model_name, row.provider_name, row.service_name, row.service_source,
                status="downloading"))
        self.gw.spawn(self._run_pull, job, plugin)
        return job

    async def _run_pull(self, job: PullJob, plugin: PluginSupervisor | None) -> None:
        try:
            with job.scope:
                if plugin is not None:
                    await self._pull_from(job, plugin)
                job.outcome = "success"
            if job.scope.cancelled_caught:
                job.outcome = "canceled"
        except _PullFailed as exc:
            job.outcome, job.error = "error", str(exc)
        except Exception as exc:  # a pull must always end with an event
            log.exception("pull of %s failed", job.model_name)
            job.outcome, job.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                if not job.outcome:
                    job.outcome = "canceled"
                    job.cancel_reason = job.cancel_reason or "the gateway is stopping"
                await self._finish_pull(job, plugin)

    async def _pull_from(self, job: PullJob, plugin: PluginSupervisor) -> None:
        client = plugin.client
        if client is None:
            raise _PullFailed(f"plugin {plugin.name} is not running")
        req = m.PullModelRequest(model=job.source or job.model_name,
                                 name=job.model_name if job.source else "",
                                 model_type=job.service_name)
        succeeded = False
        try:
            async with client.pull_model_stream(req) as events:
                async for event in events:
                    if "error" in event:
                        raise _PullFailed(f"{plugin.name}: {event['error']}")
                    if event.get("status") == "success":
                        succeeded = True  # announced once the store agrees
                        continue
                    job.publish(event)
        except RpcFailure as exc:
            raise _PullFailed(f"{plugin.name}: {exc.details or exc.code}") from None
        if not succeeded:
            raise _PullFailed(f"{plugin.name} ended the pull of {job.model_name!r} without "
                              f"reporting success")

    async def _finish_pull(self, job: PullJob, plugin: PluginSupervisor | None) -> None:
        """Make the store say what happened, then tell the watchers."""
        size = 0
        if job.outcome == "success" and plugin is not None and plugin.client is not None:
            with contextlib.suppress(Exception), trio.move_on_after(30):
                listed = await plugin.client.list_models(timeout=30)
                size = next((int(mi.size) for mi in listed.models
                             if job.model_name in (mi.name, mi.model)), 0)

        def write() -> None:
            pname = job.provider.provider_name
            rows = self.store.models(provider_name=pname, model_name=job.model_name)
            row = rows[0] if rows else ModelRow(job.model_name, pname, job.service_name,
                                                job.provider.service_source)
            if job.outcome == "success":
                row.status = "downloaded"
                row.size = size or row.size
                if not any(r.is_default and r.status == "downloaded"
                           for r in self.store.models(service_name=job.service_name)):
                    row.is_default = True
                self.store.put_model(row)
            elif job.was_downloaded:
                pass  # the plugin keeps the copy it had
            elif job.outcome == "error":
                row.status = "failed"
                self.store.put_model(row)
            else:
                self.store.delete_model(pname, job.model_name)

        try:
            await self._db(write)
            await self.gw.reload()
        except Exception as exc:  # noqa: BLE001 - e.g. the store closed at shutdown
            log.warning("pull of %s: could not record the outcome: %s", job.model_name, exc)
        finally:
            self._jobs.pop(job.key, None)
            if job.outcome == "success":
                job.publish({"status": "success"})
            elif job.outcome == "error":
                job.publish({"status": "error", "data": job.error})
            else:
                job.publish({"status": "canceled",
                             "data": f"pull of {job.model_name} canceled: {job.cancel_reason}"})
            job.finish()

    def cancel_pull(self, model_name: str) -> list[str]:
        """Cancel every pull of `model_name`; returns the providers they were on."""
        _need(model_name, "model_name", MODEL_BAD)
        hit = [j for j in self._jobs.values() if model_name in (j.model_name, j.source)]
        if not hit:
            busy = sorted({j.model_name for j in self._jobs.values()})
            raise GatewayError(MODEL_NOT_FOUND, f"no pull of {model_name!r} is in progress; "
                                                f"pulls in progress: {_names(busy)}")
        for job in hit:
            job.cancel("canceled by request")
        return [j.provider.provider_name for j in hit]

    async def delete_model(self, provider_name: str, model_name: str,
                           service_name: str = "") -> dict[str, Any]:
        """Delete a model: the plugin's files (DeleteModel) first, then the row."""
        _need(model_name, "model_name", MODEL_BAD)
        row = await self._pull_provider(provider_name, model_name, service_name, "")
        rows = await self._db(self.store.models, provider_name=row.provider_name,
                              model_name=model_name)
        if not rows:
            have = [r.model_name for r in await self._db(
                self.store.models, provider_name=row.provider_name)]
            raise GatewayError(MODEL_NOT_FOUND, f"model {model_name!r} is not on provider "
                                                f"{row.provider_name}; its models: "
                                                f"{_names(have)}")
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:
            raise GatewayError(MODEL_BUSY, f"{model_name!r} is being pulled on "
                                           f"{row.provider_name}; cancel the pull first "
                                           f"(POST /model/stream/cancel)")
        plugin = self.plugin_of(row)
        if row.service_source == "local" and plugin is not None and \
                rows[0].status == "downloaded":
            client = await self._client(plugin)
            try:
                await self._call(plugin, "DeleteModel", lambda: client.delete_model(
                    m.DeleteModelRequest(model=model_name), timeout=60))
            except GatewayError as exc:
                if exc.bcode != errors.MODEL_NOT_FOUND:  # already gone is fine
                    raise GatewayError(MODEL_ENGINE_DELETE, exc.message) from None

        def write() -> None:
            was_default = rows[0].is_default
            self.store.delete_model(row.provider_name, model_name)
            if was_default:  # the service keeps a default when another model is there
                rest = [r for r in self.store.models(service_name=row.service_name)
                        if r.status == "downloaded"]
                if rest:
                    rest[0].is_default = True
                    self.store.put_model(rest[0])

        await self._db(write)
        await self.gw.reload()
        return rows[0].public()

    async def _catalogue(self) -> list[dict[str, Any]]:
        """Every model the loaded plugins offer (their manifests), with its state here."""
        held = {(r.provider_name, r.model_name): r
                for r in await self._db(self.store.models)}
        out = []
        for plugin in self.gw.plugins.values():
            for item in plugin.manifest.support_model_list():
                d = item.to_dict()
                row = held.get((item.service_provider_name, item.name))
                d["status"] = row.status if row is not None else ""
                d["size"] = _human_size(row.size) if row is not None else ""
                d["is_recommended"] = item.is_default == "true"
                d["can_select"] = row is not None and row.status == "downloaded"
                out.append(d)
        return out

    async def recommend(self) -> dict[str, list[dict[str, Any]]]:
        """The models plugins recommend (their services' defaults), by service."""
        out: dict[str, list[dict[str, Any]]] = {}
        for d in await self._catalogue():
            if d["is_recommended"]:
                out.setdefault(d["service_name"], []).append(d)
        return out

    async def support(self, service_name: str = "", flavor: str = "", service_source: str = "",
                      search_name: str = "", page: int = 1, page_size: int = 10
                      ) -> dict[str, Any]:
        if page < 1:
            raise GatewayError(MODEL_BAD, f"page must be 1 or more, got {page}")
        if not 1 <= page_size <= 1000:
            raise GatewayError(MODEL_BAD, f"page_size must be 1..1000, got {page_size}")
        items = [d for d in await self._catalogue()
                 if (not service_name or d["service_name"] == service_name)
                 and (not flavor or flavor in (d["flavor"], d["api_flavor"]))
                 and (not service_source or d["source"] == service_source)
                 and (not search_name or search_name.lower() in d["name"].lower())]
        total = len(items)
        start = (page - 1) * page_size
        return {"data": items[start:start + page_size], "page": page, "page_size": page_size,
                "total": total, "total_page": math.ceil(total / page_size)}

    # ================================ plugins ================================

    def plugin_entry(self, plugin: PluginSupervisor, enabled: bool) -> dict[str, Any]:
        """AOG's plugin list item plus aogstream's details."""
        man = plugin.manifest
        return {
            "name": plugin.name,
            "provider_name": man.provider.display_name or plugin.name,
            "services": man.list_service_names(),
            "status": PLUGIN_STATUS.get(plugin.state, m.PLUGIN_STATUS_STOPPED),
            "version": man.version,
            "description": man.provider.description,
            # aogstream's own details
            "state": plugin.state,
            "pid": plugin.pid,
            "restarts": plugin.restarts,
            "last_error": plugin.last_error,
            "enabled": enabled,
            "type": man.provider.type,
            "plugin_version": man.provider.version,
            "dir": str(man.plugin_dir or ""),
        }

    async def list_plugins(self) -> list[dict[str, Any]]:
        enabled = await self._db(lambda: {n: self.store.plugin_enabled(n)
                                          for n in list(self.gw.plugins)})
        out = [self.plugin_entry(p, enabled.get(p.name, True))
               for p in list(self.gw.plugins.values())]
        root = self.installed_plugins_dir
        if root.is_dir():  # folders on disk that are not loaded (AOG: status 3)
            for sub in sorted(root.iterdir()):
                if sub.is_dir() and not sub.name.startswith(".") and \
                        sub.name not in self.gw.plugins:
                    out.append({"name": sub.name, "provider_name": sub.name, "services": [],
                                "status": m.PLUGIN_STATUS_UNLOAD, "version": "",
                                "description": "", "state": "unloaded", "pid": None,
                                "restarts": 0, "last_error": "", "enabled": True,
                                "type": "", "plugin_version": "", "dir": str(sub)})
        if self.gw.native is not None:  # native plugins (CLIProxyAPI's C ABI)
            out.extend(self.gw.native.entries())
        return out

    async def plugin_info(self, name: str) -> dict[str, Any]:
        plugin = self._plugin(name)
        entry = self.plugin_entry(plugin, await self._db(self.store.plugin_enabled, name))
        entry["manifest"] = plugin.manifest.to_dict()
        entry["providers"] = [p.provider_name for p in await self._db(
            lambda: self.store.providers(flavor=name))]
        return entry

    async def _wait_stopped(self, plugin: PluginSupervisor) -> None:
        # the supervisor marks the plugin stopped a moment after stop() returns; there
        # is no event for it, so poll (bounded)
        with trio.move_on_after(self.gw.config.plugin_stop_grace + 5):
            while plugin.state not in ("stopped", "failed"):  # noqa: ASYNC110
                await trio.sleep(0.02)

    async def _start(self, plugin: PluginSupervisor) -> None:
        """Launch a plugin that is not running and wait (bounded) until it is up."""
        if plugin.state in ("stopped", "failed"):
            await self.gw.launch(plugin)
        if plugin.state != "running":
            await plugin.wait_ready(self.gw.config.plugin_start_timeout)

    async def plugin_stop(self, name: str) -> dict[str, Any]:
        plugin = self._plugin(name)
        self._cancel_plugin_pulls(name, f"plugin {name} was stopped")
        await plugin.stop()
        await self._wait_stopped(plugin)
        return self.plugin_entry(plugin, await self._db(self.store.plugin_enabled, name))

    async def plugin_load(self, name: str) -> dict[str, Any]:
        """Start a known plugin that is stopped, or load `<data dir>/plugins/<name>`."""
        self._safe_name(name)
        plugin = self.gw.plugins.get(name)
        if plugin is None:
            folder = self.installed_plugins_dir / name
            if not (folder / m.MANIFEST_YAML).exists() and \
                    not (folder / m.MANIFEST_JSON).exists():
                raise GatewayError(PLUGIN_NOT_FOUND,
                                   f"plugin {name!r} is neither loaded nor a folder in "
                                   f"{self.installed_plugins_dir}; loaded plugins: "
                                   f"{_names(set(self.gw.plugins))}")
            man = await self._db(_validated_manifest, folder, True)
            plugin = await self._add(man)
        enabled = await self._db(self.store.plugin_enabled, name)
        if not enabled:
            raise GatewayError(PLUGIN_CONFLICT, f"plugin {name} is disabled; enable it with "
                                                f"POST /plugin/enable")
        if plugin.state != "running":
            await self._start(plugin)
            if plugin.state != "running":
                raise GatewayError(PLUGIN_LOAD_FAILED,
                                   f"plugin {name} did not start: "
                                   f"{plugin.last_error or plugin.state}; see the gateway log")
        return self.plugin_entry(plugin, enabled)

    async def _add(self, man: m.PluginManifest) -> PluginSupervisor:
        """Register a new plugin (providers in the store, routes if enabled)."""
        plugin = self.gw.add_plugin(man)
        await self._db(self.gw._register, man)
        if not await self._db(self.store.plugin_enabled, plugin.name):
            self.gw.set_routable(plugin.name, False)
        await self.gw.reload()
        return plugin

    def _safe_name(self, name: str) -> str:
        if not name:
            raise GatewayError(PLUGIN_INVALID, "name is required (the plugin's name)")
        if not SAFE_NAME.match(name) or ".." in name:
            raise GatewayError(PLUGIN_INVALID,
                               f"plugin name {safejson.short(name)} is not a plain folder "
                               "name (up to 128 letters, digits, '.', '_' and '-'; no '..')")
        return name

    def _cancel_plugin_pulls(self, name: str, reason: str) -> None:
        for job in list(self._jobs.values()):
            if job.provider.flavor == name:
                job.cancel(reason)

    async def plugin_enable(self, name: str) -> dict[str, Any]:
        plugin = self._plugin(name)
        await self._db(self.store.set_plugin_enabled, name, True)
        self.gw.set_routable(name, True)
        await self._start(plugin)
        return self.plugin_entry(plugin, True)

    async def plugin_disable(self, name: str) -> dict[str, Any]:
        """Switch a plugin off: stopped now, no routes, and still off after a restart."""
        plugin = self._plugin(name)
        await self._db(self.store.set_plugin_enabled, name, False)
        self.gw.set_routable(name, False)
        self._cancel_plugin_pulls(name, f"plugin {name} was disabled")
        await plugin.stop()
        await self._wait_stopped(plugin)
        return self.plugin_entry(plugin, False)

    async def plugin_delete(self, name: str) -> dict[str, Any]:
        """Stop and forget a plugin; its folder goes only if it was installed here."""
        self._safe_name(name)
        plugin = self.gw.plugins.get(name)
        folder = self.installed_plugins_dir / name
        if plugin is None and not folder.is_dir():
            raise GatewayError(PLUGIN_NOT_FOUND, f"plugin {name!r} is not loaded; loaded "
                                                 f"plugins: {_names(set(self.gw.plugins))}")
        removed_dir = ""
        if plugin is not None:
            self._cancel_plugin_pulls(name, f"plugin {name} was deleted")
            await plugin.stop()
            await self._wait_stopped(plugin)
            self.gw.remove_plugin(name)
            folder = Path(plugin.manifest.plugin_dir or folder)

        def forget() -> None:
            for row in self.store.providers(flavor=name):
                if row.is_plugin:
                    self.store.delete_provider(row.provider_name)
            self.store.set_plugin_enabled(name, True)

        await self._db(forget)
        await self.gw.reload()
        if folder.absolute().parent == self.installed_plugins_dir.absolute() and \
                (folder.is_dir() or folder.is_symlink()):
            await self._db(_remove_tree, folder)
            removed_dir = str(folder)
        return {"name": name, "removed_dir": removed_dir}

    async def plugin_install(self, path: str) -> dict[str, Any]:
        """Install a plugin folder or archive into `<data dir>/plugins/<name>`, after
        checking it (manifest, this platform's executable, safe names and paths), then
        register and start it."""
        if not path:
            raise GatewayError(PLUGIN_INVALID, "path is required (a plugin folder or a "
                                               ".tar.gz/.zip archive)")
        src = Path(path)
        if not src.is_absolute():
            # a request never names the server's home or working folder: `~` and
            # relative paths would resolve against whoever runs the gateway
            raise GatewayError(PLUGIN_INVALID, f"path {path!r} is not absolute; give the "
                                               "absolute path of a plugin folder or archive "
                                               "on the gateway's machine (~ is not expanded)")
        root = self.installed_plugins_dir
        dest = await self._db(_install_files, src, root, set(self.gw.plugins))
        man = await self._db(_validated_manifest, dest, True)
        plugin = await self._add(man)
        enabled = await self._db(self.store.plugin_enabled, plugin.name)
        if enabled:
            await self._start(plugin)
            if plugin.state != "running":
                raise GatewayError(PLUGIN_LOAD_FAILED,
                                   f"plugin {plugin.name} was installed in {dest} but did not "
                                   f"start: {plugin.last_error or plugin.state}; fix it and "
                                   f"POST /plugin/load, or DELETE /plugin/delete")
        return self.plugin_entry(plugin, enabled)


# ---- plugin files (blocking; run in a worker thread) -------------------------------------


def _bad(message: str) -> GatewayError:
    return GatewayError(PLUGIN_INVALID, message)


def _validated_manifest(folder: Path, dir_match: bool, shown: str = "") -> m.PluginManifest:
    """The folder's manifest, with this platform's executable present inside it."""
    try:
        man = m.load_manifest(folder, require_dir_match=dir_match)
    except m.ManifestError as exc:
        text = str(exc).replace(str(folder), shown) if shown else str(exc)
        raise _bad(f"not a valid plugin: {text}") from None
    try:
        exe = man.executable_path()
    except m.PlatformNotSupportedError as exc:
        raise _bad(f"plugin {man.provider.name} has no executable for this platform: "
                   f"{exc.field}: {exc.reason}") from None
    goos, goarch = m.current_platform()
    entry = f"platforms.{goos}_{goarch}.executable"
    rel = man.platforms[f"{goos}_{goarch}"].executable
    if not exe.is_file():
        raise _bad(f"plugin {man.provider.name}: the executable {rel!r} ({entry}) is "
                   f"missing from {shown or folder}")
    if not exe.resolve().is_relative_to(folder.resolve()):
        raise _bad(f"plugin {man.provider.name}: the executable {rel!r} ({entry}) points "
                   f"outside the plugin folder")
    return man


def _check_links(folder: Path, shown: str) -> None:
    """Refuse symlinks that lead out of the plugin folder (a copy would follow them)."""
    real = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink() and not p.resolve().is_relative_to(real):
                raise _bad(f"{shown}: {p.relative_to(folder)} is a link to "
                           f"{os.readlink(p)}, outside the plugin folder")


def _extract(archive: Path, into: Path) -> None:
    """Unpack by hand, every member checked first (see management/archives.py for why)."""
    try:
        archives.extract(archive, into)
    except archives.ArchiveError as exc:
        raise _bad(str(exc)) from None


def _archive_root(into: Path, shown: str) -> Path:
    """The plugin folder inside an unpacked archive: its top level, or its one folder."""
    if (into / m.MANIFEST_YAML).exists() or (into / m.MANIFEST_JSON).exists():
        return into
    subs = [p for p in into.iterdir() if p.name not in ("__MACOSX",)
            and not p.name.startswith(".")]
    if len(subs) == 1 and subs[0].is_dir():
        return subs[0]
    raise _bad(f"archive {shown} has no {m.MANIFEST_YAML} at its top level or in a single "
               f"top-level folder")


def _install_files(src: Path, root: Path, loaded: set[str]) -> Path:
    """Check `src` (folder or archive) and put it at `<root>/<name>`; returns that path."""
    if not src.exists():
        raise _bad(f"path {str(src)!r} does not exist (give the absolute path of a plugin "
                   f"folder or of a .tar.gz/.zip archive)")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=root))
    try:
        if src.is_dir():
            folder, shown = src, str(src)
        elif archives.is_archive(src):
            _extract(src, staging / "unpacked")
            shown = src.name
            folder = _archive_root(staging / "unpacked", shown)
        else:
            raise _bad(f"{src.name} is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive")
        man = _validated_manifest(folder, False, shown if folder != src else "")
        name = man.provider.name
        dest = root / name
        if name in loaded:
            raise GatewayError(PLUGIN_CONFLICT, f"a plugin named {name!r} is already loaded; "
                                                f"delete it first (DELETE /plugin/delete)")
        if dest.exists() or dest.is_symlink():
            raise GatewayError(PLUGIN_CONFLICT, f"{dest} already exists; load it with POST "
                                                f"/plugin/load or delete it first")
        _check_links(folder, shown)
        if folder == src:
            staged = staging / name
            shutil.copytree(src, staged, symlinks=False,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            staged = folder
        staged.rename(dest)  # appears complete or not at all
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_tree(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
        return
    # rename first so a concurrent discovery never sees half a plugin
    trash = folder.with_name(f".deleting-{folder.name}-{os.getpid()}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


__all__ = ["Manager", "PullJob", "provider_name_for"]
