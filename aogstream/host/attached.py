"""A plugin another process launched, dialled by this one (a serving worker).

With several worker processes (`aogstream.serving`) only the primary process launches and
supervises plugins; each worker dials the sockets the primary reports and follows
its view of every plugin (state, pid, address). A plugin restart is therefore one new
process that every worker re-dials, never one process per worker.

An `AttachedPlugin` keeps no process: it is the keeper of the plugin's
`ProcessProvider` in this worker, the way `PluginSupervisor` is in the primary. When
the primary says the plugin serves on the lane (`rpc.lane`, offered by the primary
only), this worker dials the lane beside the socket too.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from aogstream import manifest as m
from aogstream.config import Config
from aogstream.host.client import PluginClient
from aogstream.host.connection import ProcessProvider
from aogstream.host.lane import LaneChannel, open_lane
from aogstream.rpc.bridge import Channel, GrpcLoop, RpcFailure

log = logging.getLogger("aogstream.host")


class AttachedPlugin:
    """A plugin whose process belongs to the primary, followed and dialled from here."""

    def __init__(self, manifest: m.PluginManifest, config: Config, grpc_loop: GrpcLoop) -> None:
        self.manifest = manifest
        self.name = manifest.provider.name
        self.config = config
        self._gl = grpc_loop
        self.state = "stopped"  # the primary's word for it, "starting" until dialled
        self.last_error = ""
        self.restarts = 0
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.address = ""
        self.provider = ProcessProvider(manifest, self)
        self._channel: Channel | None = None
        self._lane: LaneChannel | None = None
        self._update = trio.Event()

    async def follow(self, info: dict[str, Any]) -> None:
        """Take the primary's view of this plugin; dial its new address when it has
        (re)started, drop the old connection when it went away."""
        state = str(info.get("state", "stopped"))
        address = str(info.get("address") or "") if state == "running" else ""
        self.pid = info.get("pid")
        self.last_error = str(info.get("last_error") or "")
        self.restarts = int(info.get("restarts") or 0)
        self.exit_status = info.get("exit_status")
        if address != self.address:
            old, self._channel, self.address = self._channel, None, ""
            old_lane, self._lane = self._lane, None
            self.provider.detach()
            if address:
                await self._dial(address, lane=bool(info.get("lane")))
            if old_lane is not None:
                old_lane.close()
            if old is not None:
                await old.close()  # calls still on it fail; `exited` says why
        connected = self.provider.client is not None
        self.state = state if (connected or state != "running") else "starting"
        update, self._update = self._update, trio.Event()
        update.set()

    async def _dial(self, address: str, *, lane: bool = False) -> None:
        channel = await self._gl.open_channel(address)
        try:
            await channel.wait_ready(self.config.plugin_connect_timeout)
        except RpcFailure as exc:
            await channel.close()
            self.last_error = f"could not connect to {address}: {exc.details}"
            log.error("plugin %s: %s", self.name, self.last_error)
            return
        self._channel, self.address = channel, address
        if lane and self.config.plugin_lane and address.startswith("unix:"):
            self._lane = open_lane("unix", address.removeprefix("unix:"))
        self.provider.attach(PluginClient(channel, self.manifest, self._lane))

    async def exited(self) -> tuple[bool, int | None]:
        """The call broke: did the plugin's process die? The primary says so a moment
        after the socket breaks, so wait briefly for its next view."""
        pid = self.pid
        with trio.move_on_after(0.5):
            while self.state == "running" and self.pid == pid:
                await self._update.wait()
        return (self.state != "running" or self.pid != pid), self.exit_status

    async def stop(self) -> None:
        """Hang up (the primary stops the process itself)."""
        channel, self._channel = self._channel, None
        lane, self._lane = self._lane, None
        self.provider.detach()
        if lane is not None:
            lane.close()
        if channel is not None:
            await channel.close()
