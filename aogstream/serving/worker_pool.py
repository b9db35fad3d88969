"""The primary's side of serving on every core: start N-1 worker processes, restart
one that dies, and publish what they must follow (plugins, store generation) so that a
management answer holds on whichever process serves the next request. How the whole
arrangement works: the `aogstream.serving` package docstring."""

from __future__ import annotations

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

from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.observe import run as observe_run

log = logging.getLogger("aogstream.workers")

SYNC_TIMEOUT = 3.0
WORKER_STOP_GRACE = 5.0


def worker_count(cfg: Config) -> int:
    """`cfg.workers`, or when it is 0 one serving process per two cores this process may
    run on (at least one).

    Not one per core: every extra serving process costs CPU on every request (each
    process wakes, polls its own gRPC channel and crosses its own trio⇄grpc bridge for
    half the traffic, so fewer calls share each wake-up), measured at 11-40 % more CPU
    per non-stream request with two processes than with one on a 2-core machine. And
    the serving processes share the cores with the plugin processes (about a third of
    a relayed call's CPU) and the engines behind them. So a 2-core machine serves from
    one process, a bigger one from half its cores; `--workers N` sets any other count.
    """
    if cfg.workers > 0:
        return cfg.workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)



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
                "restarts": p.restarts, "exit_status": p.exit_status, "lane": p.lane,
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
                [sys.executable, "-m", "aogstream.serving.worker", str(w.index),
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
            observer = observe_run.current()
            if observer is not None:  # its live gauges and recent requests go with it
                observer.process_gone(proc.pid)
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
