"""The core: which provider serves a service, in which mode, under which deadline.

North adapters ask the Gateway for a Route and open an invocation on it; they never
see a process or a gRPC call. Until the store and flavors land, a service is served
by the first discovered plugin whose manifest declares it, and request bodies pass to
the plugin unchanged (the plugin's `config_ref` flavor decides its native format).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.config import Config
from aogstream.host.process import ProcessPlugin, discover
from aogstream.invocation import Invocation, Mode, TimeoutPolicy, open_invocation
from aogstream.rpc.bridge import GrpcLoop

log = logging.getLogger(__name__)


@attrs.frozen
class Route:
    """A service resolved to the plugin that serves it."""

    service: str
    plugin: ProcessPlugin
    definition: m.ServiceDef

    def mode_for(self, want_stream: bool) -> Mode:
        """Stream only when asked and declared (AOG keeps stream mode only then)."""
        if want_stream and self.definition.supports_streaming():
            return Mode.STREAM
        return Mode.UNARY


class Gateway:
    """Plugins, routing and the timeout policy of one gateway process."""

    def __init__(self, config: Config, grpc_loop: GrpcLoop) -> None:
        self.config = config
        self.grpc_loop = grpc_loop
        self.policy = TimeoutPolicy(config.unary_timeout, config.stream_timeout)
        self.plugins: dict[str, ProcessPlugin] = {}
        self.problems: list[str] = []
        self._services: dict[str, list[tuple[ProcessPlugin, m.ServiceDef]]] = {}

    async def start(self, nursery: trio.Nursery) -> None:
        """Discover plugins and launch them all concurrently; returns once each has
        either come up or failed its first attempt (failures keep retrying)."""
        manifests, self.problems = discover(self.config.plugin_dirs)
        for man in manifests:
            plugin = ProcessPlugin(man, self.config, self.grpc_loop)
            self.plugins[plugin.name] = plugin
            for svc in man.services:
                self._services.setdefault(svc.service_name, []).append((plugin, svc))
        async with trio.open_nursery() as starting:
            for plugin in self.plugins.values():
                starting.start_soon(_start_in, nursery, plugin)
        log.info("plugins: %s", ", ".join(f"{p.name}={p.state}" for p in self.plugins.values())
                 or "none found")

    async def stop(self) -> None:
        async with trio.open_nursery() as n:
            for plugin in self.plugins.values():
                n.start_soon(plugin.stop)

    def services(self) -> list[str]:
        return sorted(self._services)

    def route(self, service: str) -> Route:
        """The plugin for `service`, preferring one that is running."""
        candidates = self._services.get(service)
        if not candidates:
            known = ", ".join(self.services()) or "none (no plugins loaded)"
            raise errors.GatewayError(
                errors.SERVICE_NOT_FOUND,
                f"service {service!r} is not provided by any plugin; available services: {known}",
            )
        for plugin, svc in candidates:
            if plugin.state == "running":
                return Route(service, plugin, svc)
        plugin, svc = candidates[0]
        return Route(service, plugin, svc)

    @asynccontextmanager
    async def invoke(
        self,
        route: Route,
        mode: Mode,
        request: bytes,
        *,
        auth_info: str = "",
        metadata: dict[str, str] | None = None,
    ) -> AsyncIterator[Invocation]:
        """Open an invocation of `route` in `mode` with AOG's deadline for it."""
        timeout = self.policy.for_call(mode, route.definition.timeout)
        async with open_invocation(
            route.plugin, route.service, mode, request, timeout=timeout,
            auth_info=auth_info, metadata=metadata,
        ) as inv:
            yield inv


async def _start_in(nursery: trio.Nursery, plugin: ProcessPlugin) -> None:
    await nursery.start(plugin.supervise)
