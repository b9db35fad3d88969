"""A provider that is a function, for unit tests of the gateway and the doors.

Like httpx's `MockTransport`: `FunctionProvider(name, handler)` serves every call in
this process by awaiting `handler(inv)`, which reads `inv.request` (or
`inv.incoming()` in bidi), `await inv.emit(...)`s its answer, or raises
`errors.GatewayError`, exactly as a plugin's provider does. No process and no gRPC:
a `Gateway` built without a gRPC loop routes to it after `add_provider` and
`register`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aogstream import errors
from aogstream import manifest as m
from aogstream.invocation import Invocation, PluginState

Handler = Callable[[Invocation], Awaitable[None]]


def service_manifest(name: str, services: Sequence[str], *, type: str = m.PLUGIN_TYPE_LOCAL,
                     models: Sequence[str] = (), timeout: int = 0) -> m.PluginManifest:
    """What a plugin.yaml offering `services` (streaming, AOG's own flavor) would say."""
    return m.PluginManifest(
        provider=m.ProviderInfo(name=name, type=type),
        services=[m.ServiceDef(service_name=s, protocol="HTTP", expose_protocol="HTTP",
                               config_ref=f"aog:{s}", support_models=list(models),
                               timeout=timeout,
                               capabilities=m.ServiceCapabilities(support_streaming=True))
                  for s in services])


class FunctionProvider:
    """A `Provider` whose calls `handler` answers; set `state` to stand for one that is down."""

    kind = "function"

    def __init__(self, name: str, handler: Handler, *, services: Sequence[str] = ("chat",),
                 type: str = m.PLUGIN_TYPE_LOCAL, models: Sequence[str] = (),
                 timeout: int = 0) -> None:
        self.name = name
        self.handler = handler
        self.manifest = service_manifest(name, services, type=type, models=models,
                                         timeout=timeout)
        self.state: str = PluginState.RUNNING
        self.calls = 0  # how many invocations reached it

    async def serve(self, inv: Invocation) -> None:
        self.calls += 1
        await self.health()
        await self.handler(inv)

    async def health(self, timeout: float | None = 5.0) -> None:
        if self.state != PluginState.RUNNING:
            raise errors.GatewayError(errors.PLUGIN_NOT_RUNNING,
                                      f"provider {self.name} is {self.state}")

    async def models(self, timeout: float | None = 30.0) -> list[m.ModelInfo]:
        return [m.ModelInfo(name=n, model=n) for svc in self.manifest.services
                for n in svc.support_models]
