"""Serving on every core: one primary process and N-1 worker processes on one port.

The primary (`aogstream server start`) does everything a single gateway does: it
launches and supervises the plugins, owns the store's writes, serves the management
API, and serves service calls too. Each worker is a fresh interpreter (never a fork:
grpc must not be forked once initialised) that serves the same port (SO_REUSEPORT,
so the kernel spreads connections) with the hot routes only:

- plugins: a worker never launches one; it dials the sockets the primary reports
  (`host.attached.AttachedPlugin`), so all workers share **one** set of plugin
  processes and engines, and a restarted plugin is re-dialled by everyone;
- routing: a worker reads the same SQLite store, and rebuilds its in-memory table
  whenever the primary's changes;
- everything else (management, health, plugin list) is proxied to the primary over a
  private unix socket, so there is one writer and one source of truth.

The primary tells each worker what changed over a socketpair (one JSON line per view:
plugins with state/pid/address, the store generation); the worker applies it and
acknowledges. Management answers wait for those acknowledgements (`sync`), so what a
management call reports holds on whichever worker serves the next request. A worker
stops when the primary dies (the socketpair's EOF; not PR_SET_PDEATHSIG, which
fires when the *thread* that spawned it ends, and trio spawns from worker threads); the primary
restarts a worker that dies.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.host.attached import AttachedPlugin

log = logging.getLogger("aogstream.workers")

SYNC_TIMEOUT = 3.0
WORKER_STOP_GRACE = 5.0
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
              b"proxy-connection", b"trailer", b"content-length"}


def worker_count(cfg: Config) -> int:
    """`cfg.workers`, or one per core this process may run on when it is 0."""
    if cfg.workers > 0:
        return cfg.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """The public listening socket of one serving process; with several workers each
    binds its own with SO_REUSEPORT and the kernel balances connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def config_to_json(cfg: Config) -> str:
    return json.dumps({f.name: (str(v) if isinstance(v, Path) else
                                [str(x) for x in v] if isinstance(v, list) else v)
                       for f in attrs.fields(Config) for v in [getattr(cfg, f.name)]})


def config_from_json(text: str) -> Config:
    raw = json.loads(text)
    cfg = Config()
    for f in attrs.fields(Config):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if f.name in ("data_dir", "engine_dir"):
            value = Path(value)
        elif f.name == "plugin_dirs":
            value = [Path(v) for v in value]
        setattr(cfg, f.name, value)
    return cfg


# ---- primary side ---------------------------------------------------------------------


@attrs.define(eq=False)
class _Worker:
    index: int
    stream: trio.SocketStream | None = None
    proc: trio.Process | None = None
    acked: int = -1
    acked_event: trio.Event = attrs.Factory(trio.Event)


class WorkerPool:
    """The primary's side: start the workers, keep them running, keep them in sync."""

    def __init__(self, gateway: Gateway, count: int, primary_socket: str) -> None:
        self.gateway = gateway
        self.count = count
        self.primary_socket = primary_socket
        self.workers = [_Worker(i) for i in range(1, count)]
        self.gen = 0
        self._sent: dict[str, Any] | None = None
        self._dirty = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._stopping = False
        self._send_lock = trio.Lock()

    # -- what the workers must know

    def view(self) -> dict[str, Any]:
        """Plugins (where to dial them, whether they serve) and the store generation."""
        gw = self.gateway
        return {
            "store_gen": gw.store_gen,
            "plugins": [{
                "name": p.name, "dir": str(p.manifest.plugin_dir), "state": p.state,
                "pid": p.pid, "address": p.address, "last_error": p.last_error,
                "restarts": p.restarts, "exit_status": p.exit_status,
                "routable": gw.routable(p.name),
            } for p in gw.plugins.values()],
        }

    def poke(self) -> None:
        """Something changed (callable from any thread)."""
        try:
            self._token.run_sync_soon(self._dirty.set)
        except trio.RunFinishedError:
            pass

    async def sync(self) -> None:
        """Publish the current view if it changed, and wait until every live worker has
        applied it (bounded: a stuck worker must not hold management calls)."""
        await self._publish()
        with trio.move_on_after(SYNC_TIMEOUT):
            for w in self.workers:
                while w.stream is not None and w.acked < self.gen:
                    await w.acked_event.wait()

    async def _publish(self) -> None:
        async with self._send_lock:
            view = self.view()
            if view == self._sent:
                return
            self.gen += 1
            self._sent = view
            line = (json.dumps({"gen": self.gen, **view}) + "\n").encode()
            for w in self.workers:
                if w.stream is not None:
                    try:
                        await w.stream.send_all(line)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        w.stream = None

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await self._publish()

    # -- processes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.gateway.on_change = self.poke
        self.gateway.workers_sync = self.sync
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            for w in self.workers:
                await nursery.start(self._supervise, w)
            task_status.started()

    async def _supervise(self, w: _Worker, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = 0.5
        first = True
        while not self._stopping:
            began = trio.current_time()
            try:
                await self._run_worker(w, task_status if first else None)
            except Exception as exc:  # noqa: BLE001 - keep the others serving, say why
                log.error("worker %d: %s", w.index, exc)
            if first:
                first = False
            if self._stopping:
                return
            if trio.current_time() - began > 60:
                backoff = 0.5
            log.warning("worker %d exited; restarting it in %.1f s", w.index, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _run_worker(self, w: _Worker, task_status: Any) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["AOGSTREAM_WORKER_CONFIG"] = config_to_json(self.gateway.config)
        env["AOGSTREAM_PRIMARY_SOCKET"] = self.primary_socket
        env["AOGSTREAM_WORKER_LOG_LEVEL"] = str(logging.getLogger().getEffectiveLevel())
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "aogstream.http.workers", str(w.index),
                 str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        w.proc = proc
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(mine))
        started = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, w, stream, nursery.cancel_scope)
                async with self._send_lock:
                    w.stream = stream
                    # the whole current view, whatever the others have
                    line = json.dumps({"gen": self.gen, **(self._sent or self.view())})
                    await stream.send_all((line + "\n").encode())
                # serving once it has applied it (its first ack)
                with trio.fail_after(self.gateway.config.plugin_start_timeout):
                    while w.acked < 0 and proc.returncode is None:
                        await w.acked_event.wait()
                log.info("worker %d serving (pid %d)", w.index, proc.pid)
                if task_status is not None:
                    task_status.started()
                    started = True
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            w.stream = None
            w.acked = -1
            w.acked_event.set()
            with trio.CancelScope(shield=True):
                await _stop_process(proc)
                await stream.aclose()
            if task_status is not None and not started:
                task_status.started()

    async def _read_acks(self, w: _Worker, stream: trio.SocketStream,
                         scope: trio.CancelScope) -> None:
        buf = b""
        try:
            async for data in stream:
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "ack" in msg:
                        w.acked = int(msg["ack"])
                        event, w.acked_event = w.acked_event, trio.Event()
                        event.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            pass
        scope.cancel()  # the worker hung up: it is gone or going

    async def stop(self) -> None:
        """SIGTERM every worker (graceful: open streams finish), then kill stragglers."""
        self._stopping = True
        async with trio.open_nursery() as n:
            for w in self.workers:
                if w.proc is not None:
                    n.start_soon(_stop_process, w.proc)


async def _stop_process(proc: trio.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(WORKER_STOP_GRACE):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def primary_socket_path() -> tuple[str, str]:
    """A private folder (0700) for the primary's unix socket: (folder, socket path)."""
    folder = tempfile.mkdtemp(prefix="aogstream-")
    return folder, os.path.join(folder, "primary.sock")


def remove_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---- worker side ----------------------------------------------------------------------


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
        return json.loads(line)

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


class PrimaryProxy:
    """Everything a worker does not serve itself goes to the primary, unchanged
    (management, health, plugin list; streamed answers such as model-pull progress
    are relayed as they come)."""

    def __init__(self, socket_path: str, cfg: Config) -> None:
        import httpx

        self.cfg = cfg
        self.max_body = cfg.max_body_bytes
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://aogstream-primary", timeout=None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        from aogstream.http.asgi import (
            CLOSE_AFTER,
            ClientGone,
            read_body,
            send_json,
            watch_disconnect,
        )

        try:
            body = await read_body(scope, receive, self.max_body, self.cfg.body_timeout,
                                   self.cfg.body_min_rate)
        except errors.GatewayError as err:
            await send_json(send, err.status, err.body(), CLOSE_AFTER)
            return
        except ClientGone:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope)
            await self._forward(scope, body, send)
            nursery.cancel_scope.cancel()

    async def _forward(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        import httpx

        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = self.client.build_request(scope["method"], target.decode("latin-1"),
                                            headers=headers, content=body)
        try:
            resp = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            from aogstream.http.asgi import send_json

            err = errors.GatewayError(errors.PLUGIN_UNAVAILABLE,
                                      f"the gateway's primary process is not reachable ({exc})"
                                      "; it may be restarting, retry in a moment")
            await send_json(send, err.status, err.body())
            return
        try:
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(k, v) for k, v in resp.headers.raw
                                    if k.lower() not in HOP_BY_HOP]})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with trio.CancelScope(shield=True):
                await resp.aclose()


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve_worker(cfg: Config, index: int, link_fd: int) -> None:
    """One worker: follow the primary, then serve the hot routes on the shared port."""
    from aogstream.http import limits
    from aogstream.http.guard import Guard, load_keys, policy_for
    from aogstream.http.hot import HotRoutes
    from aogstream.http.server import hypercorn_config
    from aogstream.rpc.bridge import GrpcLoop
    from aogstream.store import SQLiteStore

    # the same guard as the primary's, with the keys read here (never passed along)
    policy = policy_for(cfg, load_keys(cfg, generate=False))
    stop = trio.Event()
    link = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=link_fd)))
    async with GrpcLoop.open() as gl, trio.open_nursery() as nursery:
        store = await trio.to_thread.run_sync(SQLiteStore, cfg.db_path)
        gateway = Gateway(cfg, gl, store)
        follower = Follower(gateway, link)
        try:
            if not await follower.apply_next():
                return
            await gateway.start_native()
            nursery.start_soon(follower.run, stop)
            nursery.start_soon(_signals, stop)
            app = Guard(HotRoutes(gateway, PrimaryProxy(os.environ["AOGSTREAM_PRIMARY_SOCKET"],
                                                        cfg)), policy)
            sock = listen_socket(cfg.host, cfg.port, reuse_port=True)
            hc = hypercorn_config(cfg)
            hc.bind = [f"fd://{sock.fileno()}"]
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 50, 1000)
            cap = limits.connection_cap(cfg.max_connections, limits.raise_open_file_limit())
            log.debug("worker %d listening (up to %d connections)", index, cap)
            await limits.serve(app, hc, cap, shutdown_trigger=stop.wait)
        finally:
            with trio.CancelScope(shield=True):
                for plugin in list(follower.plugins.values()):
                    await plugin.stop()
                if gateway.native is not None:
                    await gateway.native.stop()
                await trio.to_thread.run_sync(store.close)
            nursery.cancel_scope.cancel()


async def _signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


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
