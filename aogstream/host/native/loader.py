"""Finding native plugins, reading their config, and putting them behind the gateway.

Discovery (spec §4.1): module `discovery`.

Config (spec §4.2): `<data dir>/config.yaml`, `plugins.enabled` (off by default),
`plugins.dir`, `plugins.configs.<id>` with `enabled` (off by default: a discovered but
unconfigured plugin is not loaded), `priority` (0) and any keys of the plugin's own;
that subtree, with `enabled`/`priority` filled in, goes to `plugin.register` as YAML.
`isolation` (aogstream's own key) is `in-process` (the default, the fast path) or
`process`: the library then runs in a host process of ours, so a crash in its native
code restarts that process instead of killing the gateway (`isolated`).

A library that cannot be used (missing symbol, wrong ABI version, init rc != 0,
invalid JSON, a refused registration) is logged with the reason and listed with it in
`/aog/v0.2/plugin/list`; the gateway serves on without it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
import yaml

from aogstream import manifest as m
from aogstream.host.native import auth_import, auth_models
from aogstream.host.native import gojson as gj
from aogstream.host.native import management as native_management
from aogstream.host.native.abi import CallError
from aogstream.host.native.auths import FRESH_NS, AuthLogins, AuthStore
from aogstream.host.native.callbacks import HostServices
from aogstream.host.native.discovery import Found, discover
from aogstream.host.native.frontend import FrontendAuth
from aogstream.host.native.hooks import Hooks
from aogstream.host.native.plugin import IN_PROCESS, NATIVE_DESC, PROCESS, NativePlugin
from aogstream.host.native.provider import NativeProvider
from aogstream.host.native.refresh import AuthRefresher
from aogstream.plugin_config import PluginConfigFile

if TYPE_CHECKING:
    from aogstream.gateway import Gateway

log = logging.getLogger("aogstream.native")

CONFIG_FILE = "config.yaml"
WATCH_EVERY = 1.0  # seconds between looks at config.yaml's modification time
SWITCH_INTERVAL = 0.0005  # the GIL switch interval while native plugins are loaded (s)




@attrs.define
class NativeConfig:
    """The `plugins` section of config.yaml."""

    enabled: bool = False
    dir: Path | None = None
    configs: dict[str, Any] = attrs.Factory(dict)
    error: str = ""

    def plugin(self, pid: str) -> dict[str, Any] | None:
        sub = self.configs.get(pid)
        return sub if isinstance(sub, dict) else None

    def plugin_enabled(self, pid: str) -> bool:
        sub = self.plugin(pid)
        return bool(sub and sub.get("enabled") is True)

    def priority(self, pid: str) -> int:
        sub = self.plugin(pid) or {}
        value = sub.get("priority", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def isolation(self, pid: str) -> tuple[str, str]:
        """(`in-process` or `process`, "") or (default, what is wrong with the value)."""
        value = (self.plugin(pid) or {}).get("isolation", IN_PROCESS)
        if value in (IN_PROCESS, PROCESS):
            return str(value), ""
        return IN_PROCESS, (f"plugins.configs.{pid}.isolation in {CONFIG_FILE} must be "
                            f"{IN_PROCESS!r} (the default) or {PROCESS!r}, not {value!r}")

    def yaml_for(self, pid: str) -> bytes:
        """The plugin's subtree as YAML, with `enabled` and `priority` filled in."""
        sub = self.configs.get(pid)
        if sub is None:
            return b"enabled: false\npriority: 0\n"
        if isinstance(sub, dict):
            sub = dict(sub)
            sub.setdefault("enabled", self.plugin_enabled(pid))
            sub.setdefault("priority", self.priority(pid))
        text = yaml.safe_dump(sub, sort_keys=False, allow_unicode=True,
                              default_flow_style=False)
        return (text.strip() + "\n").encode()

    def desired_versions(self) -> dict[str, str]:
        out = {}
        for pid, sub in self.configs.items():
            store = sub.get("store") if isinstance(sub, dict) else None
            if isinstance(store, dict):
                v = store.get("version") or store.get("release-tag")
                if isinstance(v, str | int | float) and str(v):
                    out[str(pid)] = str(v)
        return out


def config_stamp(data_dir: Path) -> tuple[int, int, int] | None:
    """What tells a changed config.yaml: (mtime ns, size, inode); None when absent."""
    try:
        st = os.stat(data_dir / CONFIG_FILE)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_config(data_dir: Path) -> NativeConfig:
    """`<data dir>/config.yaml`'s `plugins`; a file that cannot be read leaves native
    plugins off and says why."""
    path = data_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NativeConfig()
    except OSError as exc:
        return NativeConfig(error=f"{CONFIG_FILE}: cannot read it ({exc.strerror})")
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        return NativeConfig(error=f"{CONFIG_FILE} is not valid YAML: {exc}")
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    if plugins is None:
        return NativeConfig()
    if not isinstance(plugins, dict):
        return NativeConfig(error=f"{CONFIG_FILE}: 'plugins' must be a mapping")
    raw_dir = plugins.get("dir")
    folder = None
    if isinstance(raw_dir, str) and raw_dir.strip():
        folder = Path(raw_dir.strip()).expanduser()
        if not folder.is_absolute():
            folder = data_dir / folder
    configs = plugins.get("configs")
    return NativeConfig(enabled=plugins.get("enabled") is True, dir=folder,
                        configs={str(k): v for k, v in configs.items()}
                        if isinstance(configs, dict) else {})


class NativePlugins:
    """The native plugins of one gateway process (the primary and each worker load
    their own copy: in process means in every serving process)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = NativeConfig()
        self.found: dict[str, Found] = {}
        self.plugins: dict[str, NativePlugin] = {}
        self.host: HostServices | None = None
        self._primary = False
        self._stamp: tuple[Any, ...] | None = None
        self._auth_stamp: int | None = -1  # the auth folder's mtime when last looked at
        self._dropped: dict[str, bytes] = {}  # untyped auth files tried with auth.parse
        self._apply_lock = trio.Lock()
        self._stopped = False  # after stop(), config changes are no longer applied
        self._lifecycle = trio.Lock()  # register/reconfigure never overlap
        # the plugins' request pipeline hooks, run by every native executor
        self.hooks = Hooks(lambda: list(self.plugins.values()))
        # the plugins' auth records, and logins under way (management API)
        self.auths = AuthStore(gateway.config.data_dir)
        self.logins = AuthLogins()
        # who may call the service routes, when a plugin offers frontend auth
        self.frontend = FrontendAuth(lambda: list(self.plugins.values()))

    @property
    def primary(self) -> bool:
        """The process that writes the store, runs the scheduled credential refreshes
        and shares per-auth models (Gateway.start sets it)."""
        return self._primary

    @primary.setter
    def primary(self, value: bool) -> None:
        self._primary = self.auths.primary = value

    async def start(self) -> None:
        """Read the config, discover, load the enabled plugins in priority order and
        route to their executors (store rows are written by the gateway's `register`)."""
        await self.apply(initial=True)

    async def background(self) -> None:
        """The native plugins' work off the request path, for the life of the process
        (cancelled with the nursery that runs it): the credential refresher
        (`refresh`; scheduled refreshes in the primary only)."""
        refresher = AuthRefresher(self.auths, lambda: list(self.plugins.values()),
                                  lambda: self._primary)
        self.auths.on_unauthorized = refresher.kick
        try:
            await refresher.run()
        finally:
            self.auths.on_unauthorized = None

    async def watch(self) -> None:
        """Apply config.yaml again whenever it, or the libraries in the plugin folders,
        change (the primary runs this for the life of the gateway; workers follow
        through `check` when the store changes)."""
        while True:
            await trio.sleep(WATCH_EVERY)
            try:
                await self.check()
            except Exception:  # never let a bad edit stop the watcher
                log.exception("native plugins: applying %s failed", CONFIG_FILE)

    def _disk_state(self) -> tuple[Any, ...]:
        """What a change of shows up as: config.yaml's stamp and the library chosen for
        each plugin ID (a new version file dropped in counts, without a config edit)."""
        cfg = self.config
        roots = ([cfg.dir] if cfg.dir else []) + self.gateway.plugin_search_dirs()
        chosen = discover(roots, cfg.desired_versions())
        return (config_stamp(self.gateway.config.data_dir),
                tuple(sorted((pid, str(f.path)) for pid, f in chosen.items())))

    async def check(self) -> bool:
        """Apply the config when the file, or the libraries chosen, changed since the
        last apply."""
        if self._stopped:
            return False
        stamp = await trio.to_thread.run_sync(self._disk_state)
        if stamp == self._stamp or self._stopped:
            await self.check_auths()
            return False
        await self.apply()
        await self.check_auths()
        return True

    async def check_auths(self) -> None:
        """When the auth folder changed (a record saved, refreshed or removed), hand
        untyped files dropped into it to the plugins' `auth.parse` (the primary,
        `auth_import.import_dropped`), ask `model.for_auth` again for the records
        that changed and route the models that came or went; the primary then
        rewrites the store rows, which brings the workers here too."""
        async with self._apply_lock:  # the stamp is taken inside: a caller returns once
            try:                         # the change it made is routed
                stamp: int | None = self.auths.dir.stat().st_mtime_ns
            except OSError:
                stamp = None
            if stamp == self._auth_stamp or self._stopped:
                return
            # a stamp this fresh may hide a write in the same clock tick: look again
            self._auth_stamp = -2 if stamp is not None and \
                time.time_ns() - stamp < FRESH_NS else stamp
            if self._primary:  # untyped files dropped in: the plugins' auth.parse
                await auth_import.import_dropped(list(self.plugins.values()), self.auths,
                                                 self._dropped)
            changed = False
            for plugin in sorted(self.plugins.values(), key=lambda p: (-p.priority, p.id)):
                if plugin.state == "running" and \
                        await auth_models.rediscover(plugin, self.auths):
                    changed = True
                    self._reroute(plugin)
            if changed and self.primary:
                await trio.to_thread.run_sync(self.prune_store)
                await self.gateway.register()

    def _reroute(self, plugin: NativePlugin) -> None:
        """Route the plugin's executor to its models as they are now."""
        provider = self.gateway.providers.get(plugin.id)
        if provider is not None and provider.kind == "native":
            self.gateway.remove_provider(plugin.id)
        if plugin.executor_format:
            self._route(plugin)

    async def apply(self, *, initial: bool = False) -> None:
        """Make the loaded plugins what config.yaml says (spec §6, hot reload): a plugin
        no longer enabled is taken out of routing, drained and shut down; one whose
        config or priority changed gets `plugin.reconfigure` in place; a new version
        file is loaded and registered before the old one retires (if it fails, the old
        keeps serving); a newly enabled one is loaded. The primary then rewrites the
        store rows, which makes the workers apply the same file."""
        async with self._apply_lock:
            gw = self.gateway
            data_dir = gw.config.data_dir
            stamp = await trio.to_thread.run_sync(self._disk_state)
            cfg = await trio.to_thread.run_sync(read_config, data_dir)
            self._stamp = stamp
            if cfg.error:
                log.error("native plugins: %s", cfg.error)
                if not initial:  # keep serving what runs until the file is fixed
                    return
            self.config = cfg
            roots = ([cfg.dir] if cfg.dir else []) + gw.plugin_search_dirs()
            self.found = await trio.to_thread.run_sync(discover, roots,
                                                       cfg.desired_versions())
            want: set[str] = set()
            if not cfg.enabled:
                if any(cfg.plugin_enabled(pid) for pid in self.found):
                    log.info("native plugins found but plugins.enabled is off in %s",
                             CONFIG_FILE)
            elif sys.platform != "linux":
                log.error("native plugins: plugins.enabled is on in %s, but this gateway "
                          "loads native plugins on Linux only so far; none loaded",
                          CONFIG_FILE)
            else:
                want = {pid for pid in self.found if cfg.plugin_enabled(pid)}
            for pid in [p for p in self.plugins if p not in want]:
                await self.unload(pid)
            if want and sys.getswitchinterval() > SWITCH_INTERVAL:
                # every native call and callback hands the GIL between the loop and a
                # plugin thread; at the default 5 ms interval a busy loop makes each
                # handoff wait up to 5 ms
                sys.setswitchinterval(SWITCH_INTERVAL)
            if want and self.host is None:
                host = gw.config.host if gw.config.host not in ("0.0.0.0", "::", "") \
                    else "127.0.0.1"
                if ":" in host:
                    host = f"[{host}]"
                self.host = HostServices(
                    gw.config.max_body_bytes, gateway_url=f"http://{host}:{gw.config.port}",
                    own_models=self._own_models,
                    trust=PluginConfigFile.in_data_dir(gw.config.data_dir),
                    auths=self.auths)
                await self.host.warm()
            for pid in sorted(want, key=lambda pid: (-cfg.priority(pid), pid)):
                await self._apply_one(pid)
            self._settle_formats()
            taken: set[tuple[str, str]] = set()
            for pid in sorted(self.plugins, key=lambda p: (-self.plugins[p].priority, p)):
                plugin = self.plugins[pid]
                if plugin.state == "running":
                    await native_management.refresh(plugin, taken)
            if not initial and self.primary:
                await trio.to_thread.run_sync(self.prune_store)
                await gw.register()

    async def _apply_one(self, pid: str) -> None:
        gw = self.gateway
        cfg = self.config
        assert self.host is not None
        found = self.found[pid]
        yaml_text, priority = cfg.yaml_for(pid), cfg.priority(pid)
        isolation, bad_isolation = cfg.isolation(pid)
        old = self.plugins.get(pid)
        if bad_isolation:  # a config error: not loaded (what runs keeps running)
            log.error("native plugin %s not loaded: %s", pid, bad_isolation)
            if old is not None and old.live:
                old.last_error = bad_isolation
                return
            failed = NativePlugin(pid, found.path, yaml_text, priority, self.host,
                                  self._lifecycle)
            failed.state, failed.last_error = "failed", bad_isolation
            self.plugins[pid] = failed
            return
        # a new file, or a new isolation, loads afresh; else a config change reconfigures
        same = old is not None and old.path == found.path and old.isolation == isolation
        if old is not None and same:
            if old.config_yaml == yaml_text and old.priority == priority:
                return
        if old is not None and same and old.state == "running":
            try:
                await old.reconfigure(yaml_text, priority)
            except (CallError, gj.ReplyError, gj.EnvelopeError, ValueError) as exc:
                old.last_error = f"plugin.reconfigure failed: {exc}"
                log.error("native plugin %s: %s", pid, old.last_error)
                return
            log.info("native plugin %s reconfigured", pid)
            self._reroute(old)
            return
        plugin = NativePlugin(pid, found.path, yaml_text, priority, self.host,
                              self._lifecycle, isolation)
        existing = gw.providers.get(pid)
        if existing is not None and (old is None or existing.kind != "native"):
            plugin.state = "failed"
            plugin.last_error = f"a plugin named {pid} is already loaded"
            log.error("native plugin %s not loaded: %s", pid, plugin.last_error)
            self.plugins[pid] = plugin
            return
        await plugin.load()
        if old is not None and old.state == "running" and plugin.state != "running":
            log.error("native plugin %s: the new file %s failed to load; %s keeps "
                      "serving", pid, found.path.name, old.path.name)
            return
        self.plugins[pid] = plugin
        if old is not None:  # the new version serves from now on; the old one retires
            if existing is not None:
                gw.remove_provider(pid)
            log.info("native plugin %s: %s replaces %s", pid, found.path.name,
                     old.path.name)
            if old.live:
                await old.shutdown()
        if plugin.state == "running" and plugin.executor_format:
            self._route(plugin)

    async def unload(self, pid: str) -> bool:
        """Take a plugin out of routing, drain its calls, call its `shutdown()` and
        forget it; False when calls were still running after the drain (bounded)."""
        plugin = self.plugins.pop(pid, None)
        if plugin is None:
            return True
        provider = self.gateway.providers.get(pid)
        if provider is not None and provider.kind == "native":
            self.gateway.remove_provider(pid)
        if plugin.live:
            await plugin.shutdown()
            log.info("native plugin %s unloaded", pid)
        return plugin.lib.idle()

    def _settle_formats(self) -> None:
        """Executors that declare formats the gateway does not translate serve only
        while a loaded plugin translates them (spec §3.2, plugins fill the gaps):
        after every apply, each one is routed or taken out of routing again."""
        running = [p for p in self.plugins.values() if p.state == "running"]
        requests = any(gj.boolean(p.capabilities, "request_translator") for p in running)
        answers = any(gj.boolean(p.capabilities, "response_translator") for p in running)
        for plugin in running:
            ins, outs = plugin.declared_formats
            if not ins and not outs:
                continue
            if not plugin.settle_formats(requests, answers):
                continue
            provider = self.gateway.providers.get(plugin.id)
            if provider is not None and provider.kind == "native":
                self.gateway.remove_provider(plugin.id)
            if plugin.executor_format:
                log.info("native plugin %s: its executor is spoken to in %s, answers in "
                         "%s", plugin.id, plugin.executor_format, plugin.executor_output)
                self._route(plugin)

    def _own_models(self, plugin_id: str) -> set[str]:
        plugin = self.plugins.get(plugin_id)
        return set(plugin.models) if plugin is not None else set()

    def _route(self, plugin: NativePlugin) -> None:
        """Give the plugin's executor the models no one before it claimed."""
        taken = {name for p in self.gateway.providers.values()
                 for svc in p.manifest.services if svc.service_name == "chat"
                 for name in svc.support_models}
        models = [n for n in plugin.models if n not in taken]
        for n in plugin.models:
            if n in taken:
                log.warning("native plugin %s: model %s is already served by another "
                            "provider, which keeps it", plugin.id, n)
        if not plugin.models and not (gj.boolean(plugin.capabilities, "model_provider") or
                                      gj.boolean(plugin.capabilities, "model_registrar")):
            # an executor-only plugin (a relay): CPA cannot reach it by model name; here
            # it serves the models no provider lists, as a process plugin that lists no
            # models does
            log.info("native plugin %s: an executor without models; it serves the models "
                     "no other provider lists", plugin.id)
        elif not models:  # as in CPA, an executor no model names is unreachable
            if not plugin.models:
                log.warning("native plugin %s: its executor registers no models, so no "
                            "request can name it; it is not routed", plugin.id)
            return
        self.gateway.add_provider(NativeProvider(plugin, models, self.hooks,
                                                 lambda: list(self.plugins.values())))

    def prune_store(self) -> None:
        """Forget the store rows of native plugins that no longer serve (disabled,
        failed, removed) and of models they no longer offer, so listings show what
        is served now. Runs in the primary, in a thread, before `register`."""
        gw = self.gateway
        store = gw.store
        if hasattr(store, "wait_change"):
            # a store shared with other gateway hosts: a native plugin this host lacks
            # may be what another host serves, so its rows are not this host's to drop
            return
        for row in store.providers(service_name="chat"):
            provider = gw.providers.get(row.flavor)
            native = provider.kind == "native" if provider is not None else \
                row.desc.startswith(NATIVE_DESC)  # the rows NativeProvider's manifest made
            if not native or row.provider_name != f"{m.PLUGIN_TYPE_REMOTE}_{row.flavor}_chat":
                continue
            keep = set(provider.manifest.services[0].support_models) if provider else set()
            for model in store.models(provider_name=row.provider_name):
                if model.model_name not in keep:
                    store.delete_model(row.provider_name, model.model_name)
            if provider is None:
                store.delete_provider(row.provider_name)

    def entries(self) -> list[dict[str, Any]]:
        """Every discovered native plugin for the plugin list (loaded or not)."""
        out = []
        for pid in sorted(set(self.found) | set(self.plugins)):
            plugin = self.plugins.get(pid)
            enabled = self.config.enabled and self.config.plugin_enabled(pid)
            if plugin is not None:
                out.append(plugin.entry(enabled))
                continue
            found = self.found[pid]
            why = "" if enabled else (
                f"plugins.enabled is off in {CONFIG_FILE}" if not self.config.enabled
                else f"plugins.configs.{pid}.enabled is not true in {CONFIG_FILE}")
            out.append({"name": pid, "provider_name": pid, "services": [], "status": 0,
                        "version": found.version,
                        "description": f"native plugin {found.path.name}: {why}"
                        if why else f"native plugin {found.path.name}",
                        "state": "disabled", "pid": None, "restarts": 0,
                        "last_error": why, "enabled": False, "type": "native", "dir": "",
                        "plugin_version": found.version, "kind": "native",
                        "file": found.path.name, "priority": self.config.priority(pid),
                        "models": []})
        return out

    async def stop(self) -> None:
        self._stopped = True
        with trio.CancelScope(shield=True):
            async with self._apply_lock:  # an apply under way finishes first
                for plugin in self.plugins.values():
                    if plugin.live:
                        await plugin.shutdown()
                if self.host is not None:
                    await self.host.aclose()
