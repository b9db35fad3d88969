"""Run the gateway: gRPC loop, plugins, then hypercorn on trio, until a signal.

This is the process `aogstream server start` runs. With one serving process it is the
whole gateway; with more it is also the primary of the workers (`worker_pool`)."""

from __future__ import annotations

import functools
import logging

import trio

from aogstream.config import Config, ensure_private_dir
from aogstream.gateway import Gateway
from aogstream.host.llm_service import PluginLlmHost
from aogstream.http.app import build_app
from aogstream.http.guard import Guard, GuardConfigError, describe, load_keys, policy_for
from aogstream.http.observability import plugin_facts
from aogstream.http.openapi import route_templates
from aogstream.observe import run as observe_run
from aogstream.observe.middleware import Observed
from aogstream.rpc.bridge import GrpcLoop
from aogstream.serving import hypercorn_serve, process_setup
from aogstream.serving.worker_pool import (
    WorkerPool,
    primary_socket_path,
    remove_folder,
    worker_count,
)

log = logging.getLogger("aogstream")


async def serve(cfg: Config, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve until SIGINT/SIGTERM, then stop the workers and every plugin (Shutdown,
    grace, kill). With more than one worker this process is the primary: it also
    serves, and the others follow it (`serving.worker`).

    Raises `guard.GuardConfigError` before anything starts when the security settings
    do not allow serving on `cfg.host` (e.g. beyond loopback without keys)."""
    ensure_private_dir(cfg.data_dir)
    keys = load_keys(cfg, generate=True)
    policy = policy_for(cfg, keys)
    try:
        observing = observe_run.Settings.from_env()
    except observe_run.SettingsError as exc:  # refused before anything starts, as keys are
        raise GuardConfigError(str(exc)) from None
    run: observe_run.RunDir | None = None
    stop = trio.Event()
    open_files = hypercorn_serve.raise_open_file_limit()  # before plugins: they inherit it
    cap = hypercorn_serve.connection_cap(cfg.max_connections, open_files)
    count = worker_count(cfg)
    pool: WorkerPool | None = None
    private_dir = ""
    async with GrpcLoop.open() as gl, trio.open_nursery() as nursery:
        gateway = Gateway(cfg, gl)
        # plugins' LLM access: one socket per plugin, served for as long as we run
        llm_host = PluginLlmHost(gateway)
        await nursery.start(llm_host.run)
        gateway.plugin_launch_env = llm_host.env_for
        try:
            run = observe_run.start_run()  # metrics files, request rings of every process
            observer = observe_run.open_process("primary", observing)
            await gateway.start(nursery)
            for problem in gateway.problems:
                log.error("plugin problem: %s", problem)
            hot = build_app(gateway)
            observer.set_routes(route_templates(hot))  # before the workers start
            observer.watch(functools.partial(plugin_facts, gateway), lambda: llm_host.counters)
            app = Observed(Guard(hot, policy, frontend=gateway.native.frontend
                                 if gateway.native else None), observer)
            log.info("request guard: %s; management key: %s", describe(policy),
                     keys.source or "none")
            hc = hypercorn_serve.hypercorn_config(cfg)
            if count > 1:
                public = hypercorn_serve.listen_socket(cfg.host, cfg.port, reuse_port=True)
                private_dir, private = primary_socket_path()
                hc.bind = [f"fd://{public.fileno()}", f"unix:{private}"]
                pool = WorkerPool(gateway, count, private)
                nursery.start_soon(pool.run)
            slots = hypercorn_serve.connection_slots(cap)
            process_setup.tune_gc()
            nursery.start_soon(process_setup.collect_garbage,
                               functools.partial(hypercorn_serve.is_quiet, slots))
            nursery.start_soon(process_setup.stop_on_signal, stop)
            served = trio.Event()

            async def http(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
                           ) -> None:
                try:
                    await hypercorn_serve.serve(app, hc, slots, shutdown_trigger=stop.wait,
                                                task_status=task_status)
                finally:
                    served.set()

            await nursery.start(http)  # returns once the port is bound
            log.info("aogstream listening on http://%s:%d (%d serving process%s, up to %d "
                     "connections each, %d open files)", cfg.host, cfg.port, count,
                     "es" if count > 1 else "", cap, open_files)
            log.info("%s", ready_line(cfg, gateway))
            task_status.started(gateway)
            await served.wait()  # hypercorn has shut down gracefully
        finally:
            with trio.CancelScope(shield=True):
                if pool is not None:
                    log.info("stopping workers")
                    await pool.stop()
                log.info("stopping plugins")
                await gateway.stop()
                if private_dir:
                    remove_folder(private_dir)
                if run is not None:
                    observe_run.end_run(run)
            nursery.cancel_scope.cancel()


def ready_line(cfg: Config, gateway: Gateway) -> str:
    """The line that tells a person the gateway serves and what to try first."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    base = f"http://{host}:{cfg.port}"
    services = set(gateway.services())
    tries = [f"curl -s {base}/aog/v0.2/plugin/list"]
    if "chat" in services:
        tries.append(f"curl -sN {base}/aog/v0.2/services/chat -d "
                     "'{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                     "\"stream\":true}'")
    if "speech-to-text" in services:
        tries.append("aogstream transcribe examples/goforward.wav")
    return f"ready, try: {'   or   '.join(tries)}   (README: A one-minute tour)"

