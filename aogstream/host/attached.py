"""A plugin another process launched, dialled by this one (a serving worker).

With several worker processes (`http.workers`) only the primary process launches and
supervises plugins; each worker dials the sockets the primary reports and follows
its view of every plugin (state, pid, address). A plugin restart is therefore one new
process that every worker re-dials, never one process per worker.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from aogstream.host.client import PluginClient
from aogstream.host.process import ProcessPlugin
from aogstream.rpc.bridge import RpcFailure

log = logging.getLogger("aogstream.host")


class AttachedPlugin(ProcessPlugin):
    """The south adapter of a plugin whose process belongs to the primary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._update = trio.Event()

    async def supervise(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise RuntimeError("an attached plugin is supervised by the primary process")

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
            old, self._channel, self.client, self.address = self._channel, None, None, ""
            self._ready = trio.Event()
            if address:
                await self._dial(address)
            if old is not None:
                await old.close()  # calls still on it fail; `_exited` says why
        self.state = state if (self.client is not None or state != "running") else "starting"
        if self.state == "running":
            self._ready.set()
        update, self._update = self._update, trio.Event()
        update.set()

    async def _dial(self, address: str) -> None:
        channel = await self._gl.open_channel(address)
        try:
            await channel.wait_ready(self.config.plugin_connect_timeout)
        except RpcFailure as exc:
            await channel.close()
            self.last_error = f"could not connect to {address}: {exc.details}"
            log.error("plugin %s: %s", self.name, self.last_error)
            return
        self._channel, self.address = channel, address
        self.client = PluginClient(channel, self.manifest)

    async def _exited(self) -> tuple[bool, int | None]:
        """The call broke: did the plugin's process die? The primary says so a moment
        after the socket breaks, so wait briefly for its next view."""
        pid = self.pid
        with trio.move_on_after(0.5):
            while self.state == "running" and self.pid == pid:
                await self._update.wait()
        return (self.state != "running" or self.pid != pid), self.exit_status

    async def stop(self) -> None:
        """Hang up (the primary stops the process itself)."""
        channel, self._channel, self.client = self._channel, None, None
        if channel is not None:
            await channel.close()
