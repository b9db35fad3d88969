"""The plugin process: go-plugin's handshake and services around the ProviderService.

`serve(provider)` makes a Python plugin indistinguishable, on the wire, from one
built with AOG's Go SDK: it checks the magic cookie, listens on a unix socket (or
TCP within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT), prints the one handshake line on
stdout, and serves `protocol.ProviderService` (`servicer`) plus go-plugin's health
(`plugin`), GRPCController (Shutdown), GRPCStdio and GRPCBroker. This module owns the
process's life (stdout kept for the handshake, logging, signals, the parent watch,
GC tuning, clean-up of the socket); what the rpcs do is in `servicer`, and the
handshake line's format is `rpc.handshake`'s, shared with the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aogstream import manifest as m
from aogstream.rpc.gen import (
    grpc_broker_pb2_grpc,
    grpc_controller_pb2,
    grpc_controller_pb2_grpc,
    grpc_stdio_pb2_grpc,
    provider_pb2_grpc,
)
from aogstream.rpc.handshake import (
    MULTIPLEX_ENV,
    HandshakeError,
    check_cookie,
    format_handshake,
)
from aogstream.rpc.lane import LANE_ENV, LANE_OFFER, lane_path
from aogstream.sdk.blocking import call_plugin
from aogstream.sdk.lane_server import LaneServer, start_lane
from aogstream.sdk.provider import LocalPluginProvider, PluginProvider
from aogstream.sdk.servicer import ProviderServicer

log = logging.getLogger("aogstream.sdk")


class _Controller(grpc_controller_pb2_grpc.GRPCControllerServicer):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    async def Shutdown(self, request: Any, context: Any) -> grpc_controller_pb2.Empty:  # noqa: N802
        log.info("host asked the plugin to shut down")
        asyncio.get_running_loop().call_later(0.05, self._stop.set)
        return grpc_controller_pb2.Empty()


class _Stdio(grpc_stdio_pb2_grpc.GRPCStdioServicer):
    """go-plugin's stdio mirror. Our output goes to stderr, which the host already
    reads, so the stream stays open and empty until shutdown."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    async def StreamStdio(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._stop.wait()
        return
        yield  # pragma: no cover - makes this an async generator


class _Broker(grpc_broker_pb2_grpc.GRPCBrokerServicer):
    """Accepts the broker stream and offers no brokered services."""

    async def StartStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for _ in request_iterator:
            pass
        return
        yield  # pragma: no cover


def find_plugin_dir(start: Path | None = None) -> Path:
    """The plugin root: the working directory if it holds a manifest (AOG starts
    plugins there), else the nearest parent of the main script that does."""
    candidates = [Path.cwd()]
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if start is not None:
        candidates.insert(0, start)
    if main is not None:
        candidates.extend(list(main.parents)[:6])
    for c in candidates:
        if (c / "plugin.yaml").exists() or (c / "plugin.json").exists():
            return c
    raise FileNotFoundError("no plugin.yaml found in the working directory or above the plugin")


def _listen(server: grpc.aio.Server) -> tuple[str, str]:
    """Bind a listener the way go-plugin does: a private unix socket, or TCP."""
    network = os.environ.get("AOGSTREAM_PLUGIN_NETWORK") or (
        "tcp" if sys.platform == "win32" else "unix"
    )
    if network == "unix":
        base = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or None
        path = os.path.join(tempfile.mkdtemp(prefix="plugin", dir=base), "plugin.sock")
        server.add_insecure_port(f"unix:{path}")
        return "unix", path
    lo = int(os.environ.get("PLUGIN_MIN_PORT") or 0)
    hi = int(os.environ.get("PLUGIN_MAX_PORT") or 0)
    ports = range(lo, hi + 1) if lo and hi >= lo else [0]
    for port in ports:
        try:
            bound = server.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            continue
        if bound:
            return "tcp", f"127.0.0.1:{bound}"
    raise RuntimeError(f"no free port in {lo}..{hi}")


async def _watch_parent(stop: asyncio.Event) -> None:
    """Exit when the host dies without saying so (e.g. kill -9): no orphan engines."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("host process went away; shutting down")
            stop.set()


def _tune_gc() -> None:
    """Keep the collector off the stream path once the plugin has started.

    Everything allocated at start-up (modules, protos, the provider) lives as long as
    the process, so it is frozen out of every later collection, and the young
    generation is collected after 50,000 allocations instead of 700: collection
    pauses, not CPU, set the tail latency of a plugin serving many streams.

    The gateway's serving processes use the same policy (`aogstream.serving.process_setup`);
    this is a copy, not an import, because `sdk/` may depend only on `rpc/` and the
    manifest (a plugin never imports the gateway).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


async def _serve(provider: PluginProvider, handshake_fd: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        # Ctrl-C reaches the whole process group; the host decides when we die.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, stop.set)

    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
        ]
    )
    servicer = ProviderServicer(provider)
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)
    hs = health.aio.HealthServicer()
    await hs.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    grpc_controller_pb2_grpc.add_GRPCControllerServicer_to_server(_Controller(stop), server)
    grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(_Stdio(stop), server)
    grpc_broker_pb2_grpc.add_GRPCBrokerServicer_to_server(_Broker(), server)
    network, address = _listen(server)
    lane: LaneServer | None = None
    try:
        await server.start()
        # the lane, when our host offers it, must exist before the handshake line: the
        # host looks for it right after reading that line
        lane = await _start_lane(servicer, network, address)
        line = format_handshake(network, address,
                                multiplex_asked=os.environ.get(MULTIPLEX_ENV) == "true")
        os.write(handshake_fd, (line + "\n").encode())
        _tune_gc()
        watcher = asyncio.ensure_future(_watch_parent(stop))
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            if lane is None:
                await server.stop(grace=1.0)
            else:  # calls in progress on either get the same grace, at the same time
                await asyncio.gather(server.stop(grace=1.0), lane.stop(grace=1.0))
                lane = None
            with contextlib.suppress(Exception):
                if isinstance(provider, LocalPluginProvider):
                    await call_plugin(provider.stop_engine)
    finally:
        if lane is not None:  # start-up failed after the lane started
            await lane.stop()
        if network == "unix":
            _remove_socket(address)  # after the lane's socket is gone: it removes the folder


async def _start_lane(servicer: ProviderServicer, network: str,
                      address: str) -> LaneServer | None:
    """The lane beside the gRPC socket (`aogstream.rpc.lane`), only when the host offered
    it (our host does; AOG's never does, and then nothing here changes) and the plugin
    listens on a unix socket. The lane is an optimisation: if it cannot start, the
    plugin serves everything over gRPC, as without the offer."""
    if os.environ.get(LANE_ENV) != LANE_OFFER:
        return None
    path = lane_path(network, address)
    if path is None:
        return None
    try:
        return await start_lane(servicer, path)
    except OSError as exc:
        log.warning("could not open the lane beside the plugin's socket (%s); "
                    "serving over gRPC only", exc)
        return None


def _remove_socket(address: str) -> None:
    """The unix socket and the private folder `_listen` made for it (gRPC may already
    have removed the socket, so each step is tried on its own)."""
    with contextlib.suppress(OSError):
        os.unlink(address)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(address))


def serve(provider: PluginProvider) -> None:
    """Run `provider` as a plugin process until the host shuts it down.

    Exits with status 1 and a hint when started by hand (no magic cookie), as Go
    plugins do.
    """
    try:
        check_cookie(os.environ)
    except HandshakeError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)
    # Only the handshake may go to stdout: point everything else at stderr, which
    # the host logs line by line.
    handshake_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if provider.manifest is None:
        try:
            provider.manifest = m.load_manifest(find_plugin_dir())
        except Exception as exc:  # noqa: BLE001 - a plugin can run without it
            log.warning("could not load plugin manifest: %s", exc)
    try:
        asyncio.run(_serve(provider, handshake_fd))
    except Exception:  # noqa: BLE001 - report it and exit non-zero, as Go plugins do
        traceback.print_exc()
        sys.exit(1)

