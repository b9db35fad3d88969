"""The core: which provider serves a service, in which mode, under which deadline.

North adapters ask the Gateway for Routes and open an invocation on one; they never
see a process or a gRPC call. A Route holds an `invocation.Provider` (a process
plugin's connection, later a native plugin, a function in unit tests), never the
class that keeps it alive. Which provider serves a request comes from the store
(providers, downloaded models, the service's hybrid policy), kept in memory; request
bodies pass to the plugin unchanged (the plugin's `config_ref` flavor decides its
native format).

The process plugins this process launches (`plugins`, each a `PluginSupervisor`)
are the gateway's too, for their lifecycle only: routing sees their providers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.config import Config
from aogstream.host.process import PluginSupervisor, discover
from aogstream.invocation import (
    Invocation,
    Mode,
    PluginState,
    Provider,
    TimeoutPolicy,
    open_invocation,
)
from aogstream.observe import record as observed
from aogstream.rpc.bridge import GrpcLoop
from aogstream.store import (
    HYBRID_POLICIES,
    ModelRow,
    ProviderRow,
    Service,
    Store,
    StoreError,
    open_store,
)
from aogstream.store.base import ModelStatus

log = logging.getLogger(__name__)
STORE_RETRY_S = 1.0  # how often the primary retries a routing rebuild the store refused


@attrs.frozen
class Route:
    """A service resolved to the provider that serves it (`provider`, a plugin) and the
    store's provider row that chose it (`provider_name`, `auth_info`, `source`)."""

    service: str
    provider: Provider
    definition: m.ServiceDef
    provider_name: str = ""
    auth_info: str = ""  # the provider's credentials, for this plugin's calls only
    source: str = "local"

    def mode_for(self, want_stream: bool) -> Mode:
        """Stream only when asked and declared (AOG keeps stream mode only then)."""
        if want_stream and self.definition.supports_streaming():
            return Mode.STREAM
        return Mode.UNARY


def may_fall_back(err: errors.GatewayError) -> bool:
    """Provider trouble (down, crashed, timed out, 5xx) moves on to the next provider;
    a mistake in the request (4xx) would fail everywhere, so it is answered at once."""
    return err.status >= 500


def provider_name_for(plugin: m.PluginManifest, service: str) -> str:
    """AOG's naming of plugin provider rows: `<type>_<plugin>_<service>`."""
    return f"{plugin.provider.type}_{plugin.provider.name}_{service}"


class Gateway:
    """Providers, the store, routing and the timeout policy of one gateway process.

    Routing reads an in-memory table (`_table`), rebuilt from the store after every
    write (`reload()`), so no request touches the database. `providers` are what
    routes hold (every kind, by name); `plugins` are the process plugins this process
    supervises (the primary's; a worker's plugins are attached by `aogstream.serving`).
    The gateway can run without any process: `add_provider` a provider and route.
    """

    def __init__(self, config: Config, grpc_loop: GrpcLoop | None = None,
                 store: Store | None = None) -> None:
        """`grpc_loop` None: a gateway of in-process providers only (unit tests), which
        routes to plugins but cannot launch them."""
        self.config = config
        self.grpc_loop = grpc_loop
        self.policy = TimeoutPolicy(config.unary_timeout, config.stream_timeout)
        self.plugins: dict[str, PluginSupervisor] = {}
        self.providers: dict[str, Provider] = {}
        self.problems: list[str] = []
        self._services: dict[str, list[tuple[Provider, m.ServiceDef]]] = {}
        self.store: Store = store if store is not None else open_store(config)
        self._table: dict[str, list[ProviderRow]] = {}
        self._models: dict[tuple[str, str], list[ModelRow]] = {}
        self._policies: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._rebuild_retrying = False
        # Multi-worker serving (`aogstream.serving`): `store_gen` counts routing-table
        # rebuilds, `on_change` is told (from any thread) that plugins or tables changed,
        # and `workers_sync` returns once every worker process has caught up.
        self.store_gen = 0
        self.on_change: Callable[[], None] | None = None
        self.workers_sync: Callable[[], Awaitable[None]] | None = None
        # Host services for plugins (`host.llm_service`): the extra environment each
        # plugin process is launched with (set by the serving process before `start`).
        self.plugin_launch_env: Callable[[str], dict[str, str]] | None = None
        # native plugins (CLIProxyAPI's C ABI, in process): `host.native.NativePlugins`
        self.native: Any = None

    async def start(self, nursery: trio.Nursery) -> None:
        """Discover plugins, register their providers, and launch the enabled ones
        concurrently; returns once each has either come up or failed its first attempt
        (failures keep retrying)."""
        self._nursery = nursery
        manifests, self.problems = discover(self.plugin_search_dirs())
        for man in manifests:
            self.add_plugin(man)
        await self.start_native(primary=True)  # it writes the store rows; workers follow
        self.spawn(self.native.watch)  # config.yaml edits apply without a restart
        self.spawn(self.native.background)  # credential refreshes, off the request path
        await trio.to_thread.run_sync(self.native.prune_store)
        await self.register()
        if hasattr(self.store, "wait_change"):  # a store shared with other hosts
            self.spawn(self._follow_store)
        async with trio.open_nursery() as starting:
            for plugin in self.plugins.values():
                if self.store.plugin_enabled(plugin.name):
                    starting.start_soon(self._launch, plugin)
                else:  # disabled: listed, never started, serves nothing
                    self.set_routable(plugin.name, False)
        log.info("providers: %s", ", ".join(
            f"{p.name}={p.state}" for p in self.providers.values()) or "none found")

    async def start_native(self, *, primary: bool = False) -> None:
        """Load the native plugins `<data dir>/config.yaml` enables and route to them
        (every serving process loads its own: they run in process); `primary`: this
        process writes what the others follow."""
        from aogstream.host.native.loader import NativePlugins

        self.native = NativePlugins(self)
        self.native.primary = primary
        await self.native.start()

    def add_plugin(self, man: m.PluginManifest) -> PluginSupervisor:
        """Supervise the process plugin of `man` (launched by `start` or `launch`) and
        route to its provider."""
        plugin = PluginSupervisor(man, self.config, self.grpc_loop)  # type: ignore[arg-type]
        plugin.on_running = self._plugin_running
        plugin.on_change = self.notify
        plugin.launch_env = self._launch_env
        self.plugins[plugin.name] = plugin
        self.add_provider(plugin.provider)
        return plugin

    def _launch_env(self, name: str) -> dict[str, str]:
        return self.plugin_launch_env(name) if self.plugin_launch_env is not None else {}

    def add_provider(self, provider: Provider) -> None:
        """Route the services of `provider.manifest` to `provider` (its owner keeps it
        alive); its store rows are written by `start`, or `register` after it."""
        self.providers[provider.name] = provider
        for svc in provider.manifest.services:
            self._services.setdefault(svc.service_name, []).append((provider, svc))
        self.notify()

    def remove_provider(self, name: str) -> None:
        """No more routes to the provider `name` (its owner stops it)."""
        self.set_routable(name, False)
        self.providers.pop(name, None)
        self.notify()

    def notify(self) -> None:
        """Plugins or routing changed: let the worker processes know (thread-safe)."""
        if self.on_change is not None:
            self.on_change()

    async def sync_workers(self) -> None:
        """Return once every worker process routes by what this process knows, so a
        management call's answer is true on whichever worker serves the next request."""
        if self.workers_sync is not None:
            await self.workers_sync()

    def plugin_search_dirs(self) -> list[Path]:
        """The configured plugin folders plus `<data dir>/plugins`, where `plugin install`
        puts plugins: an installed plugin must come back after a restart even when the
        gateway was started with explicit `--plugin-dir`s."""
        dirs = [Path(d) for d in self.config.plugin_dirs]
        installed = self.config.data_dir / "plugins"
        if all(d.absolute() != installed.absolute() for d in dirs):
            dirs.append(installed)
        return dirs

    def remove_plugin(self, name: str) -> None:
        self.remove_provider(name)
        self.plugins.pop(name, None)

    def set_routable(self, name: str, routable: bool) -> None:
        """Give or take away a plugin's services in routing; a disabled plugin stays
        listed (and can be enabled again) but no request reaches it."""
        for svc, entries in list(self._services.items()):
            self._services[svc] = [(p, d) for p, d in entries if p.name != name]
            if not self._services[svc]:
                del self._services[svc]
        provider = self.providers.get(name)
        if routable and provider is not None:
            for svc_def in provider.manifest.services:
                self._services.setdefault(svc_def.service_name, []).append((provider, svc_def))
        self.notify()

    def routable(self, name: str) -> bool:
        """Whether the plugin's services are in routing (enabled)."""
        return any(p.name == name for entries in self._services.values() for p, _ in entries)

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a background task (a model pull) for as long as the gateway runs."""
        if self._nursery is None:
            raise RuntimeError("the gateway is not started")
        self._nursery.start_soon(fn, *args)

    async def _launch(self, plugin: PluginSupervisor) -> None:
        assert self._nursery is not None
        if self.grpc_loop is None:
            raise RuntimeError("this gateway has no gRPC loop: it cannot launch plugins")
        await self._nursery.start(plugin.supervise)

    async def launch(self, plugin: PluginSupervisor) -> None:
        """Start a plugin that is not running (load / enable)."""
        plugin.reset()
        await self._launch(plugin)

    async def stop(self) -> None:
        async with trio.open_nursery() as n:
            for plugin in self.plugins.values():
                n.start_soon(plugin.stop)
        if self.native is not None:
            await self.native.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.store.close)

    # ---- providers and models in the store ----

    def _register_all(self) -> None:
        for provider in self.providers.values():
            self._register(provider.manifest)
        self._rebuild()

    async def register(self) -> None:
        """Write the store rows of every provider and route by them (what `start` does
        for the providers it finds), off the event loop."""
        await trio.to_thread.run_sync(self._register_all)

    def _register(self, man: m.PluginManifest) -> None:
        """Upsert the plugin's provider rows. Re-discovery refreshes what the manifest
        says and never touches what the user set (credentials, status, properties)."""
        for svc in man.services:
            name = provider_name_for(man, svc.service_name)
            row = self.store.get_provider(name) or ProviderRow(
                provider_name=name, service_name=svc.service_name, scope="plugin")
            row.service_source = man.provider.type
            row.flavor = man.provider.name
            row.desc = svc.description if hasattr(svc, "description") and svc.description \
                else man.provider.description
            row.method = "WS" if svc.expose_protocol.upper() in ("WEBSOCKET", "WSS") else "POST"
            row.auth_type = svc.auth_type or "none"
            row.protocol = svc.protocol or "HTTP"
            row.models = list(svc.support_models or ([svc.default_model]
                                                    if svc.default_model else []))
            self.store.put_provider(row)
            if self.store.get_service(svc.service_name) is None:
                self.store.put_service(Service(svc.service_name))
            if man.provider.type == m.PLUGIN_TYPE_REMOTE:
                # cloud models need no download: they are there as soon as the provider is
                for i, model in enumerate(row.models):
                    if not self.store.models(provider_name=name, model_name=model):
                        self.store.put_model(ModelRow(
                            model, name, svc.service_name, "remote",
                            is_default=(model == svc.default_model or (i == 0 and not
                                                                       svc.default_model))
                            and not self._service_has_default(svc.service_name)
                            and svc.service_name not in self._local_services()))

    def _local_services(self) -> set[str]:
        """Services some local plugin offers: their default model is a local one (the
        local plugin reports it when it comes up), never a cloud model chosen first."""
        return {svc.service_name for p in self.providers.values()
                if p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL for svc in p.manifest.services}

    def _primary_elsewhere(self, man: m.PluginManifest, service: str) -> bool:
        """True when `service` is not the first one `man` declares but is another local
        plugin's first: a plugin that serves it on the side (whisper-plugin's realtime
        socket) never takes the default from the plugin made for it (pocketsphinx),
        whichever of them reports its models first."""
        if man.services and man.services[0].service_name == service:
            return False
        return any(p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL and p.manifest.services
                   and p.manifest.services[0].service_name == service
                   and p.manifest.provider.name != man.provider.name
                   for p in self.providers.values())

    def _service_has_default(self, service: str) -> bool:
        return any(r.is_default for r in self.store.models(service_name=service))

    async def _plugin_running(self, plugin: PluginSupervisor) -> None:
        """A plugin came up: record which models a local one really has."""
        if plugin.manifest.provider.type != m.PLUGIN_TYPE_LOCAL:
            return
        try:
            models = await plugin.provider.models(timeout=30)
        except Exception as exc:  # noqa: BLE001 - plugins without model management
            log.debug("plugin %s: ListModels: %s", plugin.name, exc)
            return
        await trio.to_thread.run_sync(self.sync_models, plugin.manifest, models)

    def sync_models(self, man: m.PluginManifest, models: list[m.ModelInfo]) -> None:
        """Make the store's downloaded models of a local plugin match what it reports."""
        have = {mi.name: mi for mi in models}
        for svc in man.services:
            pname = provider_name_for(man, svc.service_name)
            declared = set(svc.support_models or []) | ({svc.default_model}
                                                       if svc.default_model else set())
            rows = {r.model_name: r for r in self.store.models(provider_name=pname)}
            for name, info in have.items():
                if declared and name not in declared and name not in rows and \
                        len(man.services) > 1:
                    continue  # a multi-service plugin: only the models a service declares
                row = rows.get(name) or ModelRow(name, pname, svc.service_name, "local")
                make_default = not self._service_has_default(svc.service_name) and \
                    name == (svc.default_model or name) and \
                    not self._primary_elsewhere(man, svc.service_name)
                if row.status != ModelStatus.DOWNLOADED or row.size != info.size or make_default:
                    row.status, row.size = ModelStatus.DOWNLOADED, int(info.size)
                    row.is_default = row.is_default or make_default
                    self.store.put_model(row)
            for name, row in rows.items():
                if name not in have and row.status == ModelStatus.DOWNLOADED:
                    self.store.delete_model(pname, name)
        self._rebuild()

    def _rebuild(self) -> None:
        table: dict[str, list[ProviderRow]] = {}
        for p in self.store.providers():
            table.setdefault(p.service_name, []).append(p)
        models: dict[tuple[str, str], list[ModelRow]] = {}
        for r in self.store.models():
            if r.status == ModelStatus.DOWNLOADED:
                models.setdefault((r.service_name, r.model_name), []).append(r)
        self._table, self._models = table, models
        self._policies = {s.service_name: s.hybrid_policy for s in self.store.services()}
        self.store_gen += 1
        self.notify()

    async def _follow_store(self) -> None:
        """Writes by other gateway hosts on a shared store: rebuild routing (and let
        the workers follow) as each is announced, so routing stays in memory."""
        wait_change = self.store.wait_change  # type: ignore[attr-defined]
        while True:
            if await trio.to_thread.run_sync(wait_change, 1.0, abandon_on_cancel=True):
                try:
                    await self.reload()
                except Exception as exc:  # noqa: BLE001 - the database is away: keep serving
                    log.warning("routing not refreshed from the shared store: %s", exc)

    async def reload(self) -> None:
        """Rebuild the routing table after a write to the store (and, with several
        workers, return once they have rebuilt theirs).

        A store that cannot be read (a shared database that is down) leaves the routing
        as it was: the gateway goes on serving from memory rather than failing, a worker
        stays up, and the primary retries each second until the store answers; its
        successful rebuild is a new store generation, which brings the workers along."""
        if self.native is not None:  # a worker follows the primary's config.yaml apply
            await self.native.check()
        try:
            await trio.to_thread.run_sync(self._rebuild)
        except StoreError as exc:
            log.warning("routing kept as it was: the store cannot be read now (%s)", exc)
            if self._nursery is not None and not self._rebuild_retrying:
                self._rebuild_retrying = True
                self.spawn(self._retry_rebuild)
            return
        await self.sync_workers()

    async def _retry_rebuild(self) -> None:
        try:
            while True:
                await trio.sleep(STORE_RETRY_S)
                try:
                    await trio.to_thread.run_sync(self._rebuild)
                except StoreError:
                    continue
                log.info("routing rebuilt: the store answers again")
                break
        finally:
            self._rebuild_retrying = False
        await self.sync_workers()

    # ---- routing ----

    def services(self) -> list[str]:
        return sorted(self._services)

    def serves(self, service: str) -> bool:
        """Whether some routable provider declares `service` (no listing built)."""
        return bool(self._services.get(service))

    def downloaded_models(self) -> Mapping[tuple[str, str], Sequence[ModelRow]]:
        """(service, model name) → the store rows of that model downloaded, as routing
        sees them (rebuilt by `reload`; read-only: write through the store)."""
        return self._models

    def check_service(self, service: str) -> list[tuple[Provider, m.ServiceDef]]:
        """The providers declaring `service`, or 404 listing the known ones. Only this, and
        not `routes()`, may run before the body is read: the body's `model` and
        `hybrid_policy` change which providers qualify."""
        candidates = self._services.get(service)
        if not candidates:
            known = ", ".join(self.services()) or "none (no plugins loaded)"
            raise errors.GatewayError(
                errors.SERVICE_NOT_FOUND,
                f"service {service!r} is not provided by any plugin; available services: {known}",
            )
        return candidates

    def route(self, service: str, body: dict[str, Any] | None = None) -> Route:
        """The first choice for `service` (see `routes`)."""
        return self.routes(service, body)[0]

    def routes(self, service: str, body: dict[str, Any] | None = None) -> list[Route]:
        """Providers that may serve this request, best first.

        A named `model` picks the providers that have it downloaded; no model picks the
        provider of the service's default model first. `hybrid_policy` (the request's,
        else the service's) orders local and remote: `default` local then remote,
        `always_remote` remote then local, `always_local` local only (data never leaves
        the machine). Later entries are fallbacks when an earlier one is down or fails
        before its first byte.
        """
        candidates = self.check_service(service)
        body = body or {}
        observed.noted(service, body)  # the request log's service and model
        by_plugin = {p.name: (p, d) for p, d in candidates}
        rows = [r for r in self._table.get(service, [])
                if r.flavor in by_plugin]  # plugin rows and custom rows naming a plugin
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        if model:
            owners = {r.provider_name for r in self._models.get((service, model), [])}
            known = {mr.provider_name for (svc, _), rs in self._models.items()
                     if svc == service for mr in rs}
            # who has it downloaded; else who declares it; else a plugin that says nothing
            # about its models (it decides for itself, as under AOG)
            chosen = [r for r in rows if r.provider_name in owners] or \
                [r for r in rows if model in r.models] or \
                [r for r in rows if not r.models and r.provider_name not in known]
            if not chosen:
                offered = sorted({mr.model_name for (svc, _), rs in self._models.items()
                                  if svc == service for mr in rs})
                raise errors.GatewayError(
                    errors.PLUGIN_MODEL_NOT_FOUND,
                    f"model {model!r} is not available for {service!r}; downloaded models: "
                    f"{', '.join(offered) or 'none'} (pull it first)")
        else:
            defaults = {mr.provider_name for (svc, _), rs in self._models.items()
                        if svc == service for mr in rs if mr.is_default}
            chosen = sorted(rows, key=lambda r: r.provider_name not in defaults)
        policy = body.get("hybrid_policy") or self._policies.get(service, "default")
        if policy not in HYBRID_POLICIES:
            raise errors.GatewayError(
                errors.BAD_REQUEST, f"hybrid_policy {policy!r} is not one of "
                f"{', '.join(HYBRID_POLICIES)}")
        local = [r for r in chosen if r.service_source == "local"]
        remote = [r for r in chosen if r.service_source == "remote"]
        ordered = {"default": local + remote, "always_local": local,
                   "always_remote": remote + local}[policy]
        # a provider that needs credentials nobody has set cannot serve: as the first
        # choice it answers how to set the key; as a fallback it would only hide the
        # first choice's real error
        ordered = ordered[:1] + [r for r in ordered[1:]
                                 if r.auth_type in ("", "none") or r.auth_key]
        routes = [Route(service, by_plugin[r.flavor][0], by_plugin[r.flavor][1],
                        r.provider_name, r.auth_key, r.service_source) for r in ordered]
        if not routes and not chosen:
            # no store rows (e.g. a plugin that declares no provider rows yet): the
            # plugins themselves, under the same policy
            sides = {"default": ("local", "remote"), "always_local": ("local",),
                     "always_remote": ("remote", "local")}[policy]
            routes = [Route(service, p, d, provider_name_for(p.manifest, service), "",
                            p.manifest.provider.type)
                      for side in sides for p, d in candidates if p.manifest.provider.type == side]
        # a running plugin before one that is restarting or stopped, keeping the order
        routes.sort(key=lambda rt: rt.provider.state != PluginState.RUNNING)
        if not routes:  # always_local, and only remote providers qualify
            raise errors.GatewayError(
                errors.SERVICE_NOT_FOUND,
                f"service {service!r} has only remote providers and its hybrid_policy is "
                f"always_local; change the policy or add a local provider")
        return routes

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
        observed.served(route)  # the request log's provider and plugin; the call metrics
        called: Invocation | None = None
        try:
            async with open_invocation(
                route.provider, route.service, mode, request, timeout=timeout,
                auth_info=auth_info or route.auth_info, metadata=metadata,
            ) as inv:
                called = inv
                yield inv
        finally:  # the provider's task has ended: its error (or None) is final
            observed.call_ended(route, called.error if called is not None else None)


