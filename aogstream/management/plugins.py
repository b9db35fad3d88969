"""Plugins: list, show, load, stop, enable, disable, install and delete them.

Why apart from providers: a plugin is a process (supervised in `host/`) that brings its
own providers with it; stopping, disabling or deleting one also cancels the model pulls
running on it and takes its routes away, and installing one checks its files first
(`plugin_files`). Answers are AOG's plugin list items plus aogstream's own details.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from aogstream import manifest as m
from aogstream import safejson
from aogstream.errors import (
    PLUGIN_CONFLICT,
    PLUGIN_INVALID,
    PLUGIN_LOAD_FAILED,
    PLUGIN_NOT_FOUND,
    GatewayError,
)
from aogstream.gateway import Gateway
from aogstream.host.process import PluginSupervisor
from aogstream.invocation import PluginState
from aogstream.management import plugin_files
from aogstream.management.model_pulls import ModelPulls
from aogstream.management.shared import GatewayAccess, names

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # a folder name any file system takes
# AOG's plugin status number: running (1); everything else is stopped (2)
PLUGIN_STATUS: dict[str, int] = {PluginState.RUNNING: m.PLUGIN_STATUS_RUNNING}


class Plugins(GatewayAccess):
    """The plugin operations of one running gateway."""

    def __init__(self, gateway: Gateway, pulls: ModelPulls) -> None:
        super().__init__(gateway)
        self.pulls = pulls

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
        enabled = await self.db(lambda: {n: self.store.plugin_enabled(n)
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
                                "description": "", "state": PluginState.UNLOADED, "pid": None,
                                "restarts": 0, "last_error": "", "enabled": True,
                                "type": "", "plugin_version": "", "dir": str(sub)})
        if self.gw.native is not None:  # native plugins (CLIProxyAPI's C ABI)
            out.extend(self.gw.native.entries())
        return out

    async def plugin_info(self, name: str) -> dict[str, Any]:
        plugin = self.loaded_plugin(name)
        entry = self.plugin_entry(plugin, await self.db(self.store.plugin_enabled, name))
        entry["manifest"] = plugin.manifest.to_dict()
        entry["providers"] = [p.provider_name for p in await self.db(
            lambda: self.store.providers(flavor=name))]
        return entry

    async def _wait_stopped(self, plugin: PluginSupervisor) -> None:
        # the supervisor marks the plugin stopped a moment after stop() returns; there
        # is no event for it, so poll (bounded)
        with trio.move_on_after(self.gw.config.plugin_stop_grace + 5):
            while plugin.state not in (PluginState.STOPPED, PluginState.FAILED):  # noqa: ASYNC110
                await trio.sleep(0.02)

    async def _start(self, plugin: PluginSupervisor) -> None:
        """Launch a plugin that is not running and wait (bounded) until it is up."""
        if plugin.state in (PluginState.STOPPED, PluginState.FAILED):
            await self.gw.launch(plugin)
        if plugin.state != PluginState.RUNNING:
            await plugin.wait_ready(self.gw.config.plugin_start_timeout)

    async def plugin_stop(self, name: str) -> dict[str, Any]:
        plugin = self.loaded_plugin(name)
        self._cancel_plugin_pulls(name, f"plugin {name} was stopped")
        await plugin.stop()
        await self._wait_stopped(plugin)
        return self.plugin_entry(plugin, await self.db(self.store.plugin_enabled, name))

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
                                   f"{names(set(self.gw.plugins))}")
            man = await self.db(plugin_files.validated_manifest, folder, True)
            plugin = await self._add(man)
        enabled = await self.db(self.store.plugin_enabled, name)
        if not enabled:
            raise GatewayError(PLUGIN_CONFLICT, f"plugin {name} is disabled; enable it with "
                                                f"POST /plugin/enable")
        if plugin.state != PluginState.RUNNING:
            await self._start(plugin)
            if plugin.state != PluginState.RUNNING:
                raise GatewayError(PLUGIN_LOAD_FAILED,
                                   f"plugin {name} did not start: "
                                   f"{plugin.last_error or plugin.state}; see the gateway log")
        return self.plugin_entry(plugin, enabled)

    async def _add(self, man: m.PluginManifest) -> PluginSupervisor:
        """Register a new plugin (providers in the store, routes if enabled)."""
        plugin = self.gw.add_plugin(man)
        await self.db(self.gw._register, man)
        if not await self.db(self.store.plugin_enabled, plugin.name):
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
        self.pulls.cancel_where(lambda job: job.provider.flavor == name, reason)

    async def plugin_enable(self, name: str) -> dict[str, Any]:
        plugin = self.loaded_plugin(name)
        await self.db(self.store.set_plugin_enabled, name, True)
        self.gw.set_routable(name, True)
        await self._start(plugin)
        return self.plugin_entry(plugin, True)

    async def plugin_disable(self, name: str) -> dict[str, Any]:
        """Switch a plugin off: stopped now, no routes, and still off after a restart."""
        plugin = self.loaded_plugin(name)
        await self.db(self.store.set_plugin_enabled, name, False)
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
                                                 f"plugins: {names(set(self.gw.plugins))}")
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

        await self.db(forget)
        await self.gw.reload()
        if folder.absolute().parent == self.installed_plugins_dir.absolute() and \
                (folder.is_dir() or folder.is_symlink()):
            await self.db(plugin_files.remove_tree, folder)
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
        dest = await self.db(plugin_files.install_files, src, root, set(self.gw.plugins))
        man = await self.db(plugin_files.validated_manifest, dest, True)
        plugin = await self._add(man)
        enabled = await self.db(self.store.plugin_enabled, plugin.name)
        if enabled:
            await self._start(plugin)
            if plugin.state != PluginState.RUNNING:
                raise GatewayError(PLUGIN_LOAD_FAILED,
                                   f"plugin {plugin.name} was installed in {dest} but did not "
                                   f"start: {plugin.last_error or plugin.state}; fix it and "
                                   f"POST /plugin/load, or DELETE /plugin/delete")
        return self.plugin_entry(plugin, enabled)
