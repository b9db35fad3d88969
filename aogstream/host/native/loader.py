"""Finding native plugins, reading their config, and putting them behind the gateway.

Discovery (spec §4.1): in each plugin root, `.so` files in
`<root>/linux/<amd64|arm64>-<variant>` (the x86-64 levels this CPU runs, best first;
CPA searched them until mid-2026), then `<root>/linux/<arch>`, then `<root>`. The roots
are `plugins.dir` when set (relative to the data directory), then the plugin folders the
gateway already searches for process plugins. A file `<id>.so` or `<id>-v<version>.so`
gives the plugin ID; several files of one ID: the configured `store.version`, else the
highest version, a versioned file before an unversioned one, the first seen on a tie.

Config (spec §4.2): `<data dir>/config.yaml`, `plugins.enabled` (off by default),
`plugins.dir`, `plugins.configs.<id>` with `enabled` (off by default: a discovered but
unconfigured plugin is not loaded), `priority` (0) and any keys of the plugin's own;
that subtree, with `enabled`/`priority` filled in, goes to `plugin.register` as YAML.

A library that cannot be used (missing symbol, wrong ABI version, init rc != 0,
invalid JSON, a refused registration) is logged with the reason and listed with it in
`/aog/v0.2/plugin/list`; the gateway serves on without it.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
import yaml

from aogstream import manifest as m
from aogstream.host.native.callbacks import HostServices
from aogstream.host.native.plugin import NATIVE_DESC, NativePlugin, NativeProvider

if TYPE_CHECKING:
    from aogstream.gateway import Gateway

log = logging.getLogger("aogstream.native")

CONFIG_FILE = "config.yaml"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^(?P<id>.+)-v(?P<version>[0-9][0-9A-Za-z.+-]*)$")
EXTENSION = ".so"


def goarch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "386", "i686": "386"}.get(machine, machine)


def amd64_levels() -> list[str]:
    """The x86-64 micro-architecture levels this CPU runs, best first (v4..v1)."""
    try:
        flags: set[str] = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        return ["v1"]
    levels = ["v1"]
    if {"sse4_2", "popcnt", "ssse3", "pni"} <= flags:
        levels.append("v2")
        if {"avx", "avx2", "bmi1", "bmi2", "fma"} <= flags:
            levels.append("v3")
            if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
                levels.append("v4")
    return levels[::-1]


def search_dirs(root: Path) -> list[Path]:
    arch = goarch()
    dirs = [root / "linux" / f"{arch}-{v}" for v in amd64_levels()] if arch == "amd64" else []
    return [*dirs, root / "linux" / arch, root]


@attrs.define
class Found:
    """One plugin library on disk."""

    id: str
    path: Path
    version: str = ""


def _version_key(version: str) -> tuple[Any, ...]:
    parts = re.split(r"[.+-]", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def parse_name(path: Path) -> Found | None:
    if path.suffix.lower() != EXTENSION:
        return None
    stem = path.name[: -len(EXTENSION)]
    match = VERSION_RE.match(stem)
    pid, version = (match["id"], match["version"]) if match else (stem, "")
    if not ID_RE.match(pid):
        return None
    return Found(pid, path, version)


def discover(roots: list[Path], desired: dict[str, str] | None = None) -> dict[str, Found]:
    """The library chosen for each plugin ID under `roots` (see the module docstring)."""
    desired = desired or {}
    seen: dict[str, list[Found]] = {}
    visited: set[Path] = set()
    for root in roots:
        for folder in search_dirs(root):
            try:
                real = folder.resolve()
                if real in visited or not folder.is_dir():
                    continue
                visited.add(real)
                files = sorted(folder.iterdir())
            except OSError:
                continue
            for path in files:
                found = parse_name(path)
                if found is not None and path.is_file():
                    seen.setdefault(found.id, []).append(found)
    chosen: dict[str, Found] = {}
    for pid, candidates in seen.items():
        want = desired.get(pid, "").removeprefix("v")
        if want:
            match = [c for c in candidates if c.version == want]
            if match:
                chosen[pid] = match[0]
            continue
        best = candidates[0]
        for c in candidates[1:]:
            if c.version and (not best.version or
                              _version_key(c.version) > _version_key(best.version)):
                best = c
        chosen[pid] = best
    return chosen


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

    async def start(self) -> None:
        """Read the config, discover, load the enabled plugins in priority order and
        route to their executors (store rows are written by the gateway's `register`)."""
        gw = self.gateway
        self.config = cfg = await trio.to_thread.run_sync(read_config, gw.config.data_dir)
        if cfg.error:
            log.error("native plugins: %s", cfg.error)
        roots = ([cfg.dir] if cfg.dir else []) + gw.plugin_search_dirs()
        self.found = await trio.to_thread.run_sync(discover, roots, cfg.desired_versions())
        if not cfg.enabled:
            if any(cfg.plugin_enabled(pid) for pid in self.found):
                log.info("native plugins found but plugins.enabled is off in %s", CONFIG_FILE)
            return
        if sys.platform != "linux":
            log.error("native plugins: plugins.enabled is on in %s, but this gateway loads "
                      "native plugins on Linux only so far; none loaded", CONFIG_FILE)
            return
        host = gw.config.host if gw.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        self.host = HostServices(gw.config.max_body_bytes,
                                 gateway_url=f"http://{host}:{gw.config.port}",
                                 own_models=self._own_models)
        lock = trio.Lock()
        order = sorted((pid for pid in self.found if cfg.plugin_enabled(pid)),
                       key=lambda pid: (-cfg.priority(pid), pid))
        for pid in order:
            found = self.found[pid]
            plugin = NativePlugin(pid, found.path, cfg.yaml_for(pid), cfg.priority(pid),
                                  self.host, lock)
            self.plugins[pid] = plugin
            if pid in gw.providers:
                plugin.state = "failed"
                plugin.last_error = f"a plugin named {pid} is already loaded"
                log.error("native plugin %s not loaded: %s", pid, plugin.last_error)
                continue
            await plugin.load()
            if plugin.state == "running" and plugin.executor_format:
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
        if not models:  # as in CPA, an executor no model names is unreachable
            if not plugin.models:
                log.warning("native plugin %s: its executor registers no models, so no "
                            "request can name it; it is not routed", plugin.id)
            return
        self.gateway.add_provider(NativeProvider(plugin, models))

    def prune_store(self) -> None:
        """Forget the store rows of native plugins that no longer serve (disabled,
        failed, removed) and of models they no longer offer, so listings show what
        is served now. Runs in the primary, in a thread, before `register`."""
        gw = self.gateway
        store = gw.store
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
        with trio.CancelScope(shield=True):
            for plugin in self.plugins.values():
                if plugin.state == "running":
                    await plugin.shutdown()
            if self.host is not None:
                await self.host.aclose()
