"""Helpers for tests that run real plugin processes (real gRPC over a unix socket)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from aogstream.config import Config
from aogstream.host.client import PluginClient
from aogstream.host.process import PluginSupervisor
from aogstream.manifest import load_manifest
from aogstream.rpc.bridge import GrpcLoop

ECHO_PLUGIN = Path(__file__).parent / "plugins" / "echo-plugin"


@asynccontextmanager
async def running_plugin(
    path: os.PathLike[str] | str = ECHO_PLUGIN, **config_overrides: Any
) -> AsyncIterator[tuple[PluginSupervisor, PluginClient]]:
    """Launch the plugin in `path` under supervision and yield `(plugin, client)`.

    `config_overrides` are `Config` fields (e.g. `plugin_stop_grace=0.5`). The plugin is
    stopped (Shutdown rpc, grace, kill) when the block exits.
    """
    overrides: dict[str, Any] = {"plugin_start_timeout": 20.0}
    overrides.update(config_overrides)
    async with GrpcLoop.open() as grpc_loop:
        manifest = load_manifest(path)
        plugin = PluginSupervisor(manifest, Config(**overrides), grpc_loop)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(plugin.supervise)
                try:
                    if plugin.client is None:
                        raise RuntimeError(
                            f"plugin {plugin.name} did not start: {plugin.last_error}"
                        )
                    yield plugin, plugin.client
                finally:
                    with trio.CancelScope(shield=True):
                        await plugin.stop()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the nursery wraps what the test body raised: hand it back as it was
            leaves = _leaves(group)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def read_events(path: os.PathLike[str] | str) -> list[dict[str, Any]]:
    """The JSON-lines events the echo plugin recorded so far (a torn last line is skipped)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


async def wait_event(
    path: os.PathLike[str] | str, timeout: float = 2.0, **match: Any
) -> dict[str, Any] | None:
    """Poll the events file until an event with all of `match`'s fields appears."""
    deadline = time.monotonic() + timeout
    while True:
        for ev in read_events(path):
            if all(ev.get(k) == v for k, v in match.items()):
                return ev
        if time.monotonic() >= deadline:
            return None
        await trio.sleep(0.01)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` (state changed by another task) until true; fail after `timeout`."""
    with trio.move_on_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)
    raise AssertionError(f"not {what} within {timeout} s")


def trio_to_monotonic(t: float) -> float:
    """Convert a trio clock reading into `time.monotonic()` (the plugin's clock)."""
    return t - trio.current_time() + time.monotonic()
