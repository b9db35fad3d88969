"""Service providers: list, show, create, change and delete them, and check a remote
one's credentials live.

Why the field checks are one method (`checked_fields`): a provider arrives from the
API (`POST`/`PUT /service_provider`), from a service install that creates one, and from
an imported `.aog` document; all three must refuse the same bad values with the same
messages, each under its own business code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aogstream import errors, status
from aogstream import manifest as m
from aogstream.errors import (
    BAD_REQUEST,
    PLUGIN_AUTH_FAILED,
    PROVIDER_AUTH_LOST,
    PROVIDER_BAD,
    PROVIDER_BAD_URL,
    PROVIDER_CANNOT_DELETE,
    PROVIDER_UNAVAILABLE,
    SERVICE_AUTH_TYPE,
    SERVICE_PROVIDER_EXISTS,
    SERVICE_UNSUPPORTED,
    Bcode,
    GatewayError,
)
from aogstream.gateway import Gateway
from aogstream.management.model_pulls import ModelPulls
from aogstream.management.shared import (
    GatewayAccess,
    credentials_of,
    json_object_text,
    names,
    need,
)
from aogstream.rpc.bridge import RpcFailure
from aogstream.store import ModelRow, ProviderRow
from aogstream.store.base import AUTH_TYPES, SOURCES, ModelStatus

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "WS")
# what a plugin answers SetAuth/ValidateAuth with when it cannot check credentials
UNSUPPORTED_CODES = {m.ERR_CODE_UNIMPLEMENTED, 501, m.ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED,
                     m.ERR_CODE_SERVICE_BIDIRECTIONAL_NOT_SUPPORTED}


class Providers(GatewayAccess):
    """The service-provider operations of one running gateway."""

    def __init__(self, gateway: Gateway, pulls: ModelPulls) -> None:
        super().__init__(gateway)
        self.pulls = pulls

    async def list_providers(self, service_name: str = "", service_source: str = "",
                             provider_name: str = "", api_flavor: str = ""
                             ) -> list[dict[str, Any]]:
        rows = await self.db(lambda: self.store.providers(
            service_name=service_name, service_source=service_source,
            provider_name=provider_name, flavor=api_flavor))
        return [status.provider_public(self.gw, p) for p in rows]

    async def provider_detail(self, service_name: str = "", service_source: str = "",
                              provider_name: str = "", api_flavor: str = ""
                              ) -> list[dict[str, Any]]:
        """Providers with their model rows (a named provider that does not exist is a 404)."""
        if provider_name:
            await self.provider_row(provider_name)
        out = await self.list_providers(service_name, service_source, provider_name,
                                        api_flavor)
        for item in out:
            item["model_rows"] = [r.public() for r in await self.db(
                self.store.models, provider_name=item["provider_name"])]
            plugin = self.gw.plugins.get(item["flavor"])
            item["plugin_state"] = plugin.state if plugin is not None else ""
        return out

    def checked_fields(self, f: dict[str, Any], where: str, *, creating: bool,
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
                raise GatewayError(SERVICE_AUTH_TYPE if bcode is BAD_REQUEST else bcode,
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
        f = f if checked else self.checked_fields(f, "", creating=True)
        name = f["provider_name"]
        if await self.db(self.store.get_provider, name) is not None:
            raise GatewayError(SERVICE_PROVIDER_EXISTS,
                               f"service provider {name!r} already exists; change it with "
                               f"PUT /service_provider or delete it first")
        await self.service_row(f["service_name"], SERVICE_UNSUPPORTED)
        row = ProviderRow(provider_name=name, service_name=f["service_name"],
                       service_source=f["service_source"], flavor=f["api_flavor"],
                       desc=f.get("desc", ""), method=f.get("method", "POST"),
                       url=f.get("url", ""), auth_type=f.get("auth_type", "none"),
                       auth_key=f.get("auth_key", ""),
                       extra_headers=f.get("extra_headers", "{}"),
                       extra_json_body=f.get("extra_json_body", "{}"),
                       properties=f.get("properties", "{}"), models=f.get("models", []),
                       scope="custom")
        await self.db(self._write_provider, row)
        await self.gw.reload()
        return row.public()

    async def update_provider(self, f: dict[str, Any], *, checked: bool = False
                              ) -> dict[str, Any]:
        """Change only the given fields; an empty or absent auth_key keeps the stored one."""
        f = f if checked else self.checked_fields(f, "", creating=False)
        name = need(f.get("provider_name", ""), "provider_name", PROVIDER_BAD)
        row = await self.provider_row(name)
        if row.is_plugin:
            for key, have in (("service_name", row.service_name),
                              ("service_source", row.service_source),
                              ("api_flavor", row.flavor)):
                if f.get(key) and f[key] != have:
                    raise GatewayError(PROVIDER_BAD,
                                       f"{key} of {name} comes from plugin {row.flavor}'s "
                                       f"manifest and cannot be changed (it is {have!r})")
        if f.get("service_name") and f["service_name"] != row.service_name:
            await self.service_row(f["service_name"], SERVICE_UNSUPPORTED)
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
        await self.db(self._write_provider, row)
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
            if model not in row.models and r.status == ModelStatus.DOWNLOADED:
                self.store.delete_model(row.provider_name, model)

    async def delete_provider(self, provider_name: str) -> None:
        row = await self.provider_row(need(provider_name, "provider_name", PROVIDER_BAD))
        if row.scope in ("plugin", "system"):
            what = f"plugin {row.flavor}" if row.is_plugin else "the gateway"
            raise GatewayError(PROVIDER_CANNOT_DELETE,
                               f"service provider {row.provider_name} belongs to {what} and "
                               f"would come back on the next start; disable or delete the "
                               f"plugin instead")
        self.pulls.cancel_where(lambda job: job.provider.provider_name == provider_name,
                                f"provider {provider_name} was deleted")
        await self.db(self.store.delete_provider, provider_name)
        await self.gw.reload()

    async def check_remote(self, row: ProviderRow) -> None:
        """The live credential check: SetAuth then ValidateAuth on the provider's plugin."""
        plugin = self.plugin_of(row)
        if plugin is None:
            raise GatewayError(PROVIDER_UNAVAILABLE,
                               f"provider {row.provider_name}: its api_flavor {row.flavor!r} "
                               f"is not a loaded plugin, so its credentials cannot be checked; "
                               f"loaded plugins: {names(set(self.gw.plugins))}")
        if row.auth_type != "none" and not row.auth_key:
            raise GatewayError(PROVIDER_AUTH_LOST,
                               f"provider {row.provider_name} has no credentials (auth_type "
                               f"{row.auth_type}); set them with PUT /service_provider "
                               f"{{\"provider_name\": ..., \"auth_key\": \"{{...}}\"}}")
        client = await self.client_of(plugin)
        creds = credentials_of(row.auth_key)
        steps: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
            ("SetAuth", lambda: client.set_auth(row.auth_type, creds)),
            ("ValidateAuth", lambda: client.validate_auth()))
        for what, call in steps:
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
