"""What every part of management shares: the gateway, its store off the event loop, and
lookups whose errors name what exists.

Why a base class: a management call usually touches three things at once (the store,
a plugin process over gRPC, the in-memory routing table) and must leave them agreeing.
Store calls block, so they run in a worker thread (`db`); after each write the part
rebuilds the routing table (`gateway.reload()`). Each part (services, providers, model
pulls, plugins) needs the same lookups with the same helpful errors, so they live here
once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from aogstream import errors, safejson
from aogstream import manifest as m
from aogstream.errors import (
    PLUGIN_INVALID,
    PLUGIN_NOT_FOUND,
    PLUGIN_NOT_RUNNING,
    PROVIDER_NOT_FOUND,
    SERVICE_NOT_FOUND,
    Bcode,
    GatewayError,
)
from aogstream.gateway import Gateway
from aogstream.host.client import PluginClient
from aogstream.host.process import PluginSupervisor
from aogstream.invocation import PluginState
from aogstream.rpc.bridge import RpcFailure
from aogstream.store import ProviderRow, Service

T = TypeVar("T")

READY_WAIT_S = 10.0  # how long a call waits for a plugin that is (re)starting


def names(items: list[str] | set[str]) -> str:
    """Known names for an error message ("none" when there are none)."""
    return ", ".join(sorted(items)) or "none"


def need(value: str, field: str, bcode: Bcode) -> str:
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


class GatewayAccess:
    """One running gateway as management sees it (one per part, per process)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.store = gateway.store

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking store call, off the event loop."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    @property
    def installed_plugins_dir(self) -> Path:
        return self.gw.config.data_dir / "plugins"

    # ---- lookups with helpful errors ----

    async def service_row(self, name: str, bcode: Bcode = SERVICE_NOT_FOUND) -> Service:
        svc = await self.db(self.store.get_service, name)
        if svc is None:
            known = [s.service_name for s in await self.db(self.store.services)]
            raise GatewayError(bcode, f"service {name!r} does not exist; known services: "
                                      f"{names(known)}")
        return svc

    async def provider_row(self, name: str, bcode: Bcode = PROVIDER_NOT_FOUND
                           ) -> ProviderRow:
        row = await self.db(self.store.get_provider, name)
        if row is None:
            known = [p.provider_name for p in await self.db(self.store.providers)]
            raise GatewayError(bcode, f"service provider {name!r} does not exist; known "
                                      f"providers: {names(known)}")
        return row

    def loaded_plugin(self, name: str) -> PluginSupervisor:
        if not name:
            raise GatewayError(PLUGIN_INVALID, "name is required (the plugin's name)")
        plugin = self.gw.plugins.get(name)
        if plugin is None:
            raise GatewayError(PLUGIN_NOT_FOUND, f"plugin {name!r} is not loaded; loaded "
                                                 f"plugins: {names(set(self.gw.plugins))}")
        return plugin

    def plugin_of(self, provider: ProviderRow) -> PluginSupervisor | None:
        """The plugin process behind a provider row (its flavor names the plugin)."""
        return self.gw.plugins.get(provider.flavor)

    async def client_of(self, plugin: PluginSupervisor) -> PluginClient:
        """The plugin's connection, waiting a little for one that is (re)starting."""
        if plugin.state in (PluginState.STARTING, PluginState.RESTARTING):
            await plugin.wait_ready(min(READY_WAIT_S, self.gw.config.plugin_start_timeout))
        if plugin.client is None or plugin.state != PluginState.RUNNING:
            enabled = await self.db(self.store.plugin_enabled, plugin.name)
            if not enabled:
                hint = "it is disabled; enable it with POST /plugin/enable"
            else:
                hint = "start it with POST /plugin/load" + (
                    f" (last error: {plugin.last_error})" if plugin.last_error else "")
            raise GatewayError(PLUGIN_NOT_RUNNING,
                               f"plugin {plugin.name} is not running ({plugin.state}); {hint}")
        return plugin.client

    async def call(self, plugin: PluginSupervisor, what: str,
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
