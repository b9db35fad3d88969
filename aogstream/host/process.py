"""A plugin process, supervised: go-plugin launch, handshake, health, restart, stop.

What AOG left undone is done here: a plugin that dies is restarted with backoff,
and every invocation it was serving ends at once with an error that says so
(AOG's host never noticed a dead plugin). Serving calls is not done here: each
`PluginSupervisor` owns the plugin's `ProcessProvider` (`host.connection`) and hands
it the connection each time the process comes up.

The lane (`rpc.lane`) is negotiated here: the supervisor offers it in the plugin's
environment (unless `Config.plugin_lane` is off), and a plugin of our SDK that took
the offer listens on it before its handshake line, so the lane's socket exists beside
the gRPC one once the handshake is read; the plugin's Invoke rpcs then go over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from aogstream import AOG_VERSION
from aogstream import manifest as m
from aogstream.config import SECRET_ENV, Config
from aogstream.host.client import PluginClient
from aogstream.host.connection import ProcessProvider, crash_error
from aogstream.host.lane import LaneChannel, open_lane
from aogstream.rpc.bridge import Channel, GrpcLoop, RpcFailure
from aogstream.rpc.gen import grpc_controller_pb2
from aogstream.rpc.handshake import (
    APP_PROTOCOL_VERSION,
    COOKIE_KEY,
    COOKIE_VALUE,
    MAX_LINE_BYTES,
    PROTOCOL_VERSIONS_ENV,
    HandshakeError,
    parse_handshake,
)
from aogstream.rpc.hostcall import HOST_SOCKET_ENV
from aogstream.rpc.lane import LANE_ENV, LANE_NAME, LANE_OFFER

log = logging.getLogger("aogstream.host")

HEALTH_METHOD = "/grpc.health.v1.Health/Check"


# hclog's level names (what Go plugins write on stderr) → logging levels.
HCLOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
                "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}

# Python logging's level names, as the SDK's plugins print them first on a line.
PY_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
             "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


def plugin_log_line(line: str, default: int) -> tuple[int, str]:
    """One line a plugin wrote → (level, text) for the gateway's log.

    Go plugins log through hclog, which go-plugin sets to JSON (`{"@level": "warn",
    "@message": ..., "@module": ..., key: value}`): such a line keeps its own level and is
    shown as its message and fields, so a Go plugin's errors are not buried at INFO.
    A line that starts with a level name, as Python plugins log ("WARNING name: message"),
    is logged at that level without the word, so the gateway's line carries one level,
    not "INFO ...: WARNING ...". Any other line is logged at `default`, as written.
    """
    if not (line.startswith("{") and '"@level"' in line):
        word, _, rest = line.partition(" ")
        if word in PY_LEVELS and rest:
            return PY_LEVELS[word], rest
        return default, line
    try:
        entry = json.loads(line)
    except ValueError:
        return default, line
    if not isinstance(entry, dict) or not isinstance(entry.get("@level"), str):
        return default, line
    level = HCLOG_LEVELS.get(entry["@level"].lower(), default)
    fields = " ".join(f"{k}={v}" for k, v in entry.items() if not k.startswith("@"))
    text = " ".join(part for part in (str(entry.get("@message", "")), fields) if part)
    return level, text


def remove_socket_dir(address: str) -> None:
    """Once a plugin has exited: its unix socket and its lane's (`rpc.lane`), and the
    private folder go-plugin made for it (`<tmp>/pluginXXXX`) when that folder is left
    empty. A plugin killed before it could clean up would otherwise leave one folder
    behind per start."""
    path = Path(address)
    for sock in (path, path.parent / LANE_NAME):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
    if path.parent.name.startswith("plugin"):
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only ever removes an empty folder


def plugin_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The host environment plus AOG's cookie and go-plugin's variables."""
    env = dict(os.environ)
    env.update({
        COOKIE_KEY: COOKIE_VALUE,
        "PLUGIN_MIN_PORT": "10000",
        "PLUGIN_MAX_PORT": "25000",
        PROTOCOL_VERSIONS_ENV: str(APP_PROTOCOL_VERSION),
        "AOG_VERSION": AOG_VERSION,
        # Python plugins shipped with aogstream run on the gateway's interpreter.
        "AOGSTREAM_PYTHON": sys.executable,
    })
    env.pop("PLUGIN_CLIENT_CERT", None)
    # the gateway's own keys are not the plugins' business; the secret that encrypts
    # provider keys at rest least of all: a plugin gets the keys it needs through SetAuth
    for name in SECRET_ENV:
        env.pop(name, None)
    # a plugin's host socket is its own (given in `extra`), never one this process got;
    # and only its supervisor offers it the lane (in `extra`), never an inherited offer
    env.pop(HOST_SOCKET_ENV, None)
    env.pop(LANE_ENV, None)
    if extra:
        env.update(extra)
    return env


class PluginSupervisor:
    """One plugin folder and its process while it runs (the primary process's view).

    `provider` serves the plugin's calls; routes hold it, never the supervisor.
    """

    def __init__(self, manifest: m.PluginManifest, config: Config, grpc_loop: GrpcLoop):
        self.manifest = manifest
        self.name = manifest.provider.name
        self.config = config
        self._gl = grpc_loop
        self.state = "stopped"  # starting, running, restarting, stopped, failed
        self.last_error = ""
        self.restarts = 0
        self.pid: int | None = None
        self.provider = ProcessProvider(manifest, self)
        # called (in the plugin's nursery) each time the plugin comes up
        self.on_running: Callable[[PluginSupervisor], Awaitable[None]] | None = None
        # called (synchronously) whenever state, pid or address change, so other
        # worker processes can follow (see `aogstream.serving`)
        self.on_change: Callable[[], None] | None = None
        # the gRPC target workers dial ("unix:/path" or "host:port"), while running
        self.address = ""
        # extra environment for each launch, by plugin name (the gateway's host
        # services: the socket of this plugin's LLM access, `host.llm_service`)
        self.launch_env: Callable[[str], dict[str, str]] | None = None
        self.exit_status: int | None = None
        self._process: trio.Process | None = None
        self._channel: Channel | None = None
        self._lane: LaneChannel | None = None
        self._ready = trio.Event()
        self._stopping = False
        self._cancel: trio.CancelScope | None = None

    @property
    def lane(self) -> bool:
        """Whether the running plugin's Invoke rpcs go over the lane (worker processes
        dial it too, then)."""
        return self._lane is not None

    @property
    def client(self) -> PluginClient | None:
        """The connection to the running plugin (management rpcs), None while down."""
        return self.provider.client

    # ---- supervision ----------------------------------------------------------------

    async def supervise(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the plugin until `stop()`, restarting it with backoff when it dies.

        `task_status.started()` fires after the first launch attempt, successful or
        not, so one broken plugin never holds up the others.
        """
        backoff = self.config.restart_backoff_initial
        pending = [task_status]

        def started() -> None:
            if pending:
                pending.pop().started()

        with trio.CancelScope() as scope:
            self._cancel = scope
            while not self._stopping:
                began = trio.current_time()
                try:
                    await self._run_once(started)
                except Exception as exc:  # noqa: BLE001 - keep supervising, report why
                    self.last_error = f"could not start: {exc}"
                    log.error("plugin %s %s", self.name, self.last_error)
                finally:
                    started()
                if self._stopping:
                    break
                if trio.current_time() - began > 60:
                    backoff = self.config.restart_backoff_initial
                self.state = "restarting"
                self.restarts += 1
                self._changed()
                log.warning("plugin %s will restart in %.1f s (restart #%d)",
                            self.name, backoff, self.restarts)
                await trio.sleep(backoff)
                backoff = min(max(backoff * 2, 0.1), self.config.restart_backoff_max)
        self.state = "stopped"
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _run_once(self, started: Callable[[], None]) -> None:
        exe = self.manifest.executable_path()
        if not exe.exists():
            raise OSError(f"executable {exe} (platforms entry of plugin.yaml) does not exist")
        try:
            exe.chmod(exe.stat().st_mode | 0o755)
        except OSError as exc:
            log.warning("could not make %s executable: %s", exe, exc)
        self.state = "starting"
        self._changed()
        env = self.environment()
        proc = await trio.lowlevel.open_process(
            [str(exe)],
            cwd=str(self.manifest.plugin_dir),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal must not kill plugins first
        )
        self._process = proc
        self.pid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        socket_path = ""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._log_lines, proc.stderr, logging.INFO)
                with trio.fail_after(self.config.plugin_start_timeout):
                    line = await _read_line(proc.stdout)
                if line is None:
                    await proc.wait()
                    raise HandshakeError(
                        f"plugin exited with status {proc.returncode} before its handshake"
                    )
                network, address = parse_handshake(line)
                if network == "unix":
                    socket_path = address
                nursery.start_soon(self._log_lines, proc.stdout, logging.INFO)
                target = f"unix:{address}" if network == "unix" else address
                channel = await self._gl.open_channel(target)
                self._channel = channel
                await channel.wait_ready(self.config.plugin_connect_timeout)
                await self._health_plugin(channel)
                if self.config.plugin_lane:
                    self._lane = open_lane(network, address)
                client = PluginClient(channel, self.manifest, self._lane)
                self.provider.attach(client)
                self.state = "running"
                self.last_error = ""
                self.address = target
                self._ready.set()
                self._changed()
                log.info("plugin %s running (pid %d, %s %s%s)", self.name, proc.pid,
                         network, address, ", lane" if self._lane is not None else "")
                started()
                if self.config.start_engines and self.manifest.provider.type == m.PLUGIN_TYPE_LOCAL:
                    nursery.start_soon(self._start_engine, client)
                if self.on_running is not None:
                    nursery.start_soon(self.on_running, self)
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._after_exit(proc)
            if socket_path:
                remove_socket_dir(socket_path)

    def environment(self) -> dict[str, str]:
        """What the plugin is launched with: `plugin_env`, its data folder, the host
        services' sockets (`launch_env`), and the lane's offer unless turned off."""
        extra = {"AOGSTREAM_PLUGIN_DATA_DIR": str(self.data_dir)}
        if self.config.plugin_lane:
            extra[LANE_ENV] = LANE_OFFER
        if self.launch_env is not None:
            extra.update(self.launch_env(self.name))
        return plugin_env(extra)

    @property
    def data_dir(self) -> Path:
        """Where this plugin keeps its engine and models (never the gateway's venv)."""
        return self.config.engine_dir / self.name

    async def _start_engine(self, client: PluginClient) -> None:
        """StartEngine in the background, as AOG does for every local plugin at start-up
        (mode "daemon"); a missing engine is logged with the command that installs it."""
        try:
            await client.start_engine("daemon", timeout=self.config.plugin_start_timeout)
        except Exception as exc:  # noqa: BLE001 - the plugin keeps serving what it can
            log.warning("plugin %s: StartEngine: %s", self.name, exc)

    async def _after_exit(self, proc: trio.Process) -> None:
        self.provider.detach()
        self.address = ""
        self._ready = trio.Event()
        if proc.returncode is None:
            await self._terminate(proc)
        self.exit_status = proc.returncode
        if not self._stopping:
            self.last_error = f"process exited with status {proc.returncode}"
            log.error("plugin %s %s", self.name, self.last_error)
            # fail the calls first: closing the channel would cancel them anonymously
            self.provider.fail_active(crash_error(self.name, proc.returncode))
        if self._lane is not None:
            self._lane.close()
            self._lane = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._changed()

    async def _terminate(self, proc: trio.Process) -> None:
        """go-plugin's Kill: Controller.Shutdown, a grace period, then SIGKILL."""
        if self._channel is not None:
            try:
                await self._channel.unary(
                    "/plugin.GRPCController/Shutdown", grpc_controller_pb2.Empty(),
                    grpc_controller_pb2.Empty, timeout=1.0,
                )
            except RpcFailure:
                pass
        with trio.move_on_after(self.config.plugin_stop_grace):
            await proc.wait()
        if proc.returncode is None:
            log.warning("plugin %s did not exit in %.0f s; killing it", self.name,
                        self.config.plugin_stop_grace)
            proc.kill()
            await proc.wait()

    async def _health_plugin(self, channel: Channel) -> None:
        from grpc_health.v1 import health_pb2

        resp = await channel.unary(
            HEALTH_METHOD, health_pb2.HealthCheckRequest(service="plugin"),
            health_pb2.HealthCheckResponse, timeout=self.config.plugin_connect_timeout,
        )
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            raise RpcFailure("UNAVAILABLE", f"health check says {resp.status}")

    async def _log_lines(self, stream: trio.abc.ReceiveStream, level: int) -> None:
        plog = logging.getLogger(f"aogstream.plugin.{self.name}")

        def emit(raw: bytes) -> None:
            if raw.strip():
                line_level, text = plugin_log_line(raw.decode(errors="replace").rstrip(), level)
                plog.log(line_level, "%s", text)

        buf = b""
        async for data in stream:
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                emit(raw)
        emit(buf)

    async def stop(self) -> None:
        """Shut the plugin down (Shutdown rpc, grace, kill) and stop supervising it."""
        self._stopping = True
        proc = self._process
        with trio.CancelScope(shield=True):
            if proc is not None and proc.returncode is None:
                await self._terminate(proc)
        if self._cancel is not None:
            self._cancel.cancel()

    def reset(self) -> None:
        """Make a stopped plugin launchable again (plugin load / enable)."""
        self._stopping = False
        self._cancel = None
        self.last_error = ""

    async def wait_ready(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self._ready.wait()
            return True
        return False

    async def exited(self) -> tuple[bool, int | None]:
        """Did the process die under this call? The socket usually breaks a moment
        before the exit is reaped, so wait for it briefly."""
        proc = self._process
        if proc is None:
            return False, None
        with trio.move_on_after(0.5):
            await proc.wait()
        return proc.returncode is not None, proc.returncode


async def _read_line(stream: trio.abc.ReceiveStream) -> str | None:
    """Read one line byte-exactly (nothing after it may be consumed)."""
    buf = bytearray()
    while True:
        b = await stream.receive_some(1)
        if not b:
            return None if not buf else buf.decode(errors="replace")
        if b == b"\n":
            return buf.decode(errors="replace")
        buf += b
        if len(buf) > MAX_LINE_BYTES:
            raise HandshakeError("handshake line longer than 64 KiB")


def discover(dirs: Iterable[os.PathLike[str] | str]) -> tuple[list[m.PluginManifest], list[str]]:
    """Load every plugin folder's manifest. Returns (manifests, problems): a broken
    manifest or a duplicate name is reported and skipped; the others still load."""
    from pathlib import Path

    found: list[m.PluginManifest] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if not ((sub / "plugin.yaml").exists() or (sub / "plugin.json").exists()):
                continue
            try:
                man = m.load_manifest(sub)
            except m.ManifestError as exc:
                problems.append(str(exc))
                log.error("skipping plugin: %s", exc)
                continue
            name = man.provider.name
            if name in names:
                msg = (f"{sub}: plugin name conflict: {name!r} is already loaded from "
                       f"{names[name]}; skipped")
                problems.append(msg)
                log.error("%s", msg)
                continue
            names[name] = sub
            found.append(man)
    return found, problems
