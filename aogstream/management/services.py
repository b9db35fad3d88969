"""Services: list them, change their hybrid policy, install them, and export or import
them as AOG's `.aog` documents.

Why installing lives here and not with providers or plugins: making a service usable
walks every provider it has. A local one gets its plugin's engine checked, installed
and started and its default model pulled (through `ModelPulls`); a remote one gets its
credentials set and checked live (through `Providers`). The service is marked available
only when every step held.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aogstream import AOG_VERSION, errors, status
from aogstream import manifest as m
from aogstream.errors import (
    BAD_REQUEST,
    SERVICE_INSTALL_ENGINE,
    SERVICE_NOT_FOUND,
    SERVICE_POLICY,
    SERVICE_PULL_MODEL,
    SERVICE_START_ENGINE,
    SERVICE_UNSUPPORTED,
    GatewayError,
)
from aogstream.gateway import Gateway
from aogstream.host.process import PluginSupervisor
from aogstream.management.model_pulls import ModelPulls, PullOutcome
from aogstream.management.providers import Providers
from aogstream.management.shared import GatewayAccess, names, need
from aogstream.store import HYBRID_POLICIES, ModelRow, ProviderRow, Service
from aogstream.store.base import SERVICE_AVAILABLE, SOURCES, ModelStatus


class Services(GatewayAccess):
    """The service operations of one running gateway."""

    def __init__(self, gateway: Gateway, providers: Providers, pulls: ModelPulls) -> None:
        super().__init__(gateway)
        self.providers = providers
        self.pulls = pulls

    async def list_services(self, service_name: str = "") -> list[dict[str, Any]]:
        services = [await self.service_row(service_name)] if service_name else \
            await self.db(self.store.services)
        providers = await self.db(self.store.providers)
        return [status.service_public(self.gw, s, providers) for s in services]

    async def edit_service(self, service_name: str, hybrid_policy: str) -> dict[str, Any]:
        need(service_name, "service_name", BAD_REQUEST)
        if hybrid_policy not in HYBRID_POLICIES:
            raise GatewayError(SERVICE_POLICY, f"hybrid_policy {hybrid_policy!r} is not one of "
                                               f"{', '.join(HYBRID_POLICIES)}")
        svc = await self.service_row(service_name)
        svc.hybrid_policy = hybrid_policy
        await self.db(self.store.put_service, svc)
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
        need(service_name, "service_name", BAD_REQUEST)
        source = service_source or "local"
        if source not in SOURCES:
            raise GatewayError(BAD_REQUEST, f"service_source {source!r} is not one of "
                                            f"{', '.join(SOURCES)}")
        svc = await self.service_row(service_name)
        if source == "remote":
            result = await self._install_remote(svc, provider_name, api_flavor, auth_type,
                                                auth_key, url, method, desc)
        else:
            result = await self._install_local(svc, provider_name, api_flavor, model_name,
                                               skip_model)
        svc = await self.service_row(service_name)
        svc.status = SERVICE_AVAILABLE
        await self.db(self.store.put_service, svc)
        await self.gw.reload()
        return {"service": svc.public(), **result}

    async def _install_local(self, svc: Service, provider_name: str, api_flavor: str,
                             model_name: str, skip_model: bool) -> dict[str, Any]:
        rows = [p for p in await self.db(self.store.providers, service_name=svc.service_name,
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
                               f"local plugins serving it: {names(serving)}")
        done: list[dict[str, Any]] = []
        for row in rows:
            plugin = self.plugin_of(row)
            assert plugin is not None
            done.append(await self._ensure_local(plugin, row, svc.service_name, model_name,
                                                 skip_model))
        return {"providers": done}

    async def _ensure_local(self, plugin: PluginSupervisor, row: ProviderRow, service: str,
                            model_name: str, skip_model: bool) -> dict[str, Any]:
        client = await self.client_of(plugin)
        steps: list[str] = []
        try:
            installed = await self.call(plugin, "CheckEngine",
                                         lambda: client.check_engine(timeout=30))
        except GatewayError as exc:
            if exc.bcode != errors.PLUGIN_NOT_IMPLEMENTED:
                raise
            installed = None  # a plugin without engine management: nothing to prepare
        if installed is False:
            steps.append("install_engine")
            try:
                await self.call(plugin, "InstallEngine",
                                 lambda: client.install_engine(timeout=None))
            except GatewayError as exc:
                raise GatewayError(SERVICE_INSTALL_ENGINE, exc.message) from None
        if installed is not None:
            steps.append("start_engine")
            try:
                await self.call(plugin, "StartEngine",
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
            have = await self.db(self.store.models, provider_name=row.provider_name,
                                  model_name=model)
            manages = True
            try:
                await self.call(plugin, "ListModels", lambda: client.list_models(timeout=30))
            except GatewayError as exc:
                if exc.bcode != errors.PLUGIN_NOT_IMPLEMENTED:
                    raise
                manages = False  # the plugin looks after its models itself
            if manages and not any(r.status == ModelStatus.DOWNLOADED for r in have):
                job = await self.pulls.start_pull(row.provider_name, model, service,
                                                  background=True)
                await job.done.wait()
                if job.outcome != PullOutcome.SUCCESS:
                    how = "was canceled" if job.outcome == PullOutcome.CANCELED else "failed"
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
        rows = await self.db(self.store.providers, service_name=svc.service_name,
                              service_source="remote")
        created = False
        if provider_name:
            row = next((p for p in rows if p.provider_name == provider_name), None)
            if row is None and api_flavor:
                # AOG's install creates the provider from the request
                await self.providers.create_provider({
                    "service_name": svc.service_name, "service_source": "remote",
                    "api_flavor": api_flavor, "provider_name": provider_name,
                    "auth_type": auth_type or "none", "auth_key": auth_key, "url": url,
                    "method": method, "desc": desc})
                row = await self.provider_row(provider_name)
                created = True
            elif row is None:
                raise GatewayError(SERVICE_NOT_FOUND,
                                   f"remote provider {provider_name!r} of service "
                                   f"{svc.service_name!r} does not exist; remote providers: "
                                   f"{names([p.provider_name for p in rows])} (or give "
                                   f"api_flavor to create it)")
            elif auth_key or auth_type:
                changes: dict[str, Any] = {"provider_name": provider_name}
                if auth_key:
                    changes["auth_key"] = auth_key
                if auth_type:
                    changes["auth_type"] = auth_type
                await self.providers.update_provider(changes)
                row = await self.provider_row(provider_name)
        else:
            cands = [p for p in rows if not api_flavor or p.flavor == api_flavor]
            if not cands:
                raise GatewayError(SERVICE_NOT_FOUND,
                                   f"service {svc.service_name!r} has no remote provider; add "
                                   f"one with POST /service_provider (remote providers: none)")
            row = next((p for p in cands if p.auth_key or p.auth_type == "none"), cands[0])
        try:
            await self.providers.check_remote(row)
        except GatewayError:
            if created:  # a provider whose credentials were refused is not left behind
                await self.providers.delete_provider(row.provider_name)
            raise
        return {"providers": [{"provider_name": row.provider_name, "plugin": row.flavor,
                               "steps": ["set_auth", "validate_auth"]}]}


    # ---- export / import (.aog files) ----

    async def export(self, service_name: str = "", provider_name: str = "",
                     model_name: str = "") -> dict[str, Any]:
        """AOG's `.aog` document. Credentials are never exported."""
        if service_name:
            await self.service_row(service_name)
        if provider_name:
            await self.provider_row(provider_name)
        services = await self.db(self.store.services)
        providers = await self.db(self.store.providers)
        models = await self.db(self.store.models)
        if service_name:
            services = [s for s in services if s.service_name == service_name]
            providers = [p for p in providers if p.service_name == service_name]
        if provider_name:
            providers = [p for p in providers if p.provider_name == provider_name]
        held: dict[str, list[ModelRow]] = {}
        for r in models:
            if r.status == ModelStatus.DOWNLOADED:
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
            raise GatewayError(BAD_REQUEST, "services and service_providers must be JSON "
                                            "objects keyed by name (an exported .aog file)")
        if not services and not entries:
            raise GatewayError(BAD_REQUEST, "nothing to import: the document has neither "
                                            "services nor service_providers")
        known = {s.service_name: s for s in await self.db(self.store.services)}

        def known_service(name: Any, where: str) -> str:
            if not isinstance(name, str) or name not in known:
                raise GatewayError(SERVICE_UNSUPPORTED,
                                   f"{where}: service {name!r} does not exist here; known "
                                   f"services: {names(set(known))}")
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
                raise GatewayError(BAD_REQUEST, f"{where} must be an object")
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
            planned.append(self.providers.checked_fields(fields, where, creating=True,
                                                         bcode=BAD_REQUEST, need_key=False))
        created, updated, to_pull = [], [], []
        for fields in planned:
            existing = await self.db(self.store.get_provider, fields["provider_name"])
            if existing is None:
                await self.providers.create_provider(fields, checked=True)
                created.append(fields["provider_name"])
            elif existing.is_plugin:  # the plugin's manifest owns the rest
                if fields.get("auth_key"):
                    await self.providers.update_provider({"provider_name": fields["provider_name"],
                                                "auth_key": fields["auth_key"]}, checked=True)
                    updated.append(fields["provider_name"])
            else:
                await self.providers.update_provider(fields, checked=True)
                updated.append(fields["provider_name"])
            if fields["service_source"] == "local":
                have = {r.model_name for r in await self.db(
                    self.store.models, provider_name=fields["provider_name"])
                    if r.status == ModelStatus.DOWNLOADED}
                to_pull += [{"provider_name": fields["provider_name"], "model_name": mn,
                             "service_name": fields["service_name"]}
                            for mn in fields.get("models") or [] if mn not in have]
        for name, policy in policies.items():
            svc = known[name]
            svc.hybrid_policy = policy
            await self.db(self.store.put_service, svc)
        await self.gw.reload()
        return {"services": sorted(policies), "created": created, "updated": updated,
                "models_to_pull": to_pull}
