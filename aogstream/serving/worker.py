"""One worker process (`python -m aogstream.serving.worker`, started by the primary's
`worker_pool.WorkerPool`): follow the primary's view of the plugins and the store over
the socketpair it was given, and serve the hot routes on the shared port; everything
else goes to the primary (`primary_proxy`). How the whole arrangement works: the
`aogstream.serving` package docstring."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from aogstream import manifest as m
from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.host.attached import AttachedPlugin
from aogstream.http.guard import Guard, load_keys, policy_for
from aogstream.http.hot import HotRoutes
from aogstream.observe import run as observe_run
from aogstream.observe.middleware import Observed
from aogstream.rpc.bridge import GrpcLoop
from aogstream.serving import hypercorn_serve, process_setup
from aogstream.serving.primary_proxy import PrimaryProxy
from aogstream.serving.worker_pool import config_from_json
from aogstream.store import open_store

log = logging.getLogger("aogstream.workers")


class Follower:
    """A worker's side of the link: apply each view of the primary, acknowledge it."""

    def __init__(self, gateway: Gateway, stream: trio.SocketStream) -> None:
        self.gateway = gateway
        self.stream = stream
        # the primary's plugins, dialled from here; the gateway routes to their providers
        self.plugins: dict[str, AttachedPlugin] = {}
        self._buf = b""
        self._store_gen: int | None = None

    async def _next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buf:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        view: dict[str, Any] = json.loads(line)
        return view

    async def apply_next(self) -> bool:
        """Apply one view; False once the primary has gone."""
        try:
            view = await self._next()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            view = None
        if view is None:
            return False
        gw = self.gateway
        seen = set()
        for info in view["plugins"]:
            name = info["name"]
            seen.add(name)
            plugin = self.plugins.get(name)
            if plugin is None:
                try:
                    man = m.load_manifest(Path(info["dir"]))
                except Exception as exc:  # noqa: BLE001 - the primary loaded it; say why not
                    log.error("worker: cannot load plugin %s: %s", name, exc)
                    continue
                assert gw.grpc_loop is not None  # a worker's gateway is built with one
                plugin = self.plugins[name] = AttachedPlugin(man, gw.config, gw.grpc_loop)
                gw.add_provider(plugin.provider)
            if gw.routable(name) != bool(info["routable"]):
                gw.set_routable(name, bool(info["routable"]))
            await plugin.follow(info)
        for name in [n for n in self.plugins if n not in seen]:
            plugin = self.plugins.pop(name)
            gw.remove_provider(name)
            await plugin.stop()
        if view["store_gen"] != self._store_gen:
            self._store_gen = view["store_gen"]
            await gw.reload()
        await self.stream.send_all((json.dumps({"ack": view["gen"]}) + "\n").encode())
        return True

    async def run(self, stop: trio.Event) -> None:
        while await self.apply_next():
            pass
        log.warning("worker: the primary process has gone; stopping")
        stop.set()


async def serve_worker(cfg: Config, index: int, link_fd: int) -> None:
    """One worker: follow the primary, then serve the hot routes on the shared port."""
    # the same guard as the primary's, with the keys read here (never passed along)
    policy = policy_for(cfg, load_keys(cfg, generate=False))
    observer = observe_run.open_process(f"w{index}")
    stop = trio.Event()
    link = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=link_fd)))
    async with GrpcLoop.open() as gl, trio.open_nursery() as nursery:
        store = await trio.to_thread.run_sync(open_store, cfg)
        gateway = Gateway(cfg, gl, store)
        follower = Follower(gateway, link)
        try:
            if not await follower.apply_next():
                return
            await gateway.start_native()
            nursery.start_soon(gateway.native.background)  # refreshes after a 401
            nursery.start_soon(follower.run, stop)
            nursery.start_soon(process_setup.stop_on_signal, stop)
            app = Observed(Guard(HotRoutes(gateway, PrimaryProxy(
                os.environ["AOGSTREAM_PRIMARY_SOCKET"], cfg)), policy,
                frontend=gateway.native.frontend if gateway.native else None), observer)
            sock = hypercorn_serve.listen_socket(cfg.host, cfg.port, reuse_port=True)
            hc = hypercorn_serve.hypercorn_config(cfg)
            hc.bind = [f"fd://{sock.fileno()}"]
            cap = hypercorn_serve.connection_cap(cfg.max_connections,
                                                 hypercorn_serve.raise_open_file_limit())
            slots = hypercorn_serve.connection_slots(cap)
            process_setup.tune_gc()
            nursery.start_soon(process_setup.collect_garbage,
                               functools.partial(hypercorn_serve.is_quiet, slots))
            log.debug("worker %d listening (up to %d connections)", index, cap)
            await hypercorn_serve.serve(app, hc, slots, shutdown_trigger=stop.wait)
        finally:
            with trio.CancelScope(shield=True):
                for plugin in list(follower.plugins.values()):
                    await plugin.stop()
                if gateway.native is not None:
                    await gateway.native.stop()
                await trio.to_thread.run_sync(store.close)
            observer.close()
            nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    index, link_fd, parent = int(argv[0]), int(argv[1]), int(argv[2])
    if os.getppid() != parent:  # the primary died while this one started
        return 0
    cfg = config_from_json(os.environ["AOGSTREAM_WORKER_CONFIG"])
    logging.basicConfig(
        level=int(os.environ.get("AOGSTREAM_WORKER_LOG_LEVEL", logging.INFO)),
        format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        trio.run(serve_worker, cfg, index, link_fd)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
