"""The systems under test: a process tree serving HTTP on a port, how each one is
started, measured and stopped.

One **stub engine** process (benchmarks/stub_engine.py) serves every system of a run.
The systems (names used everywhere: tables, JSON, `Bench(systems=...)`):

- `direct`: the client talks to the stub itself — zero relay, the physical limit. Its
  measured processes *are* the stub.
- `aogstream`: the real gateway, `python -m aogstream server start --port P --plugin-dir
  benchmarks/relay_plugin --data-dir <tmp>` (plus `--workers W` when the gateway offers it
  and W is given), relaying through `relay-plugin` (config_ref `openai:chat`, a separate
  process over gRPC) to the stub. `/v1/chat/completions` is a byte passthrough; NDJSON
  goes through the Ollama door `/api/chat` (converted ollama → openai → ollama).
- `aogstream-x1` ("aogstream ×1" in tables): the same gateway started with `--workers 1`,
  next to `aogstream` (the default, one serving process per two cores), so the tables
  show what extra workers buy (or cost) where the default has several.
- `aogstream-ollama`: the same gateway with the Ollama twin `relay-ollama-plugin`
  (config_ref `ollama:chat`): `/api/chat` NDJSON is then a passthrough too.
- `floor`: benchmarks/floor_app.py, a bare ASGI app on hypercorn's trio worker that
  answers like the stub (same JSON body, SSE chunks, NDJSON lines, timing) without
  relaying: what the required HTTP stack costs per request before any gateway logic.
  aogstream's per-request figures are judged against it.
- `aogstream-native`: the same gateway with no process plugin, relaying through the
  native (CLIProxyAPI C ABI) executor benchmarks/native_relay, loaded in process by
  every serving process and enabled in its data dir's config.yaml (`transport: direct`:
  the library talks HTTP/1.1 to the stub itself), so there is no gRPC hop and no plugin
  process; a chunk crosses the ABI once (`host.stream.emit`).
- `aogstream-native-host`: the same, but the library's outbound HTTP goes through the
  gateway's own client (`host.http.do` / `do_stream` + `stream_read`), as CLIProxyAPI
  recommends to plugins.
- `aogstream-native-iso`: `aogstream-native` with `isolation: process`: the library runs
  in a host process of ours (`aogstream.host.native.isolated`), each call and callback
  relayed over a socketpair; its figures include that process.
- `litellm`: LiteLLM proxy 1.106.2 from its own venv (`benchmarks/setup_litellm.sh`),
  `--num_workers 1`, model `*` → `openai/*` at the stub's `/v1`, `num_retries: 0`, no
  database, a master key (it refuses to start without one). No NDJSON door.

A system's measured processes are its root process and every descendant (gateway,
workers, plugin; never the stub, which is reported separately as `engine`). `check()`
fails a round when that set changed (a crash, a plugin restart), so no figure silently
mixes two process sets. `start_stub`, `start_aogstream`, `start_litellm` and `stop` start
and stop one system at a time; `Bench` (bench.py) uses them for a whole run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import HERE, HOST, ROOT
from .logs import progress, tail
from .processes import free_port, popen
from .procfs import alive, cmdline, descendants, read_stat, rss_kb

RELAY_PLUGIN_DIR = HERE / "relay_plugin"
RELAY_OLLAMA_DIR = HERE / "relay_plugin_ollama"
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", ROOT / ".cache" / "bench" / "litellm"))
LITELLM_VERSION = "1.106.2"
# LiteLLM refuses to start without a master key; a fixed one for this loopback-only proxy.
LITELLM_KEY = "sk-bench-6f1c2a9e4b7d4e0f8a3c5d2e1f0a9b8c"
STUB_ENV = "AOGSTREAM_BENCH_STUB"  # where relay-plugin finds the stub (host:port)

START_TIMEOUT = 90.0  # LiteLLM takes ~35 s to import on this machine kind
STOP_TIMEOUT = 10.0

ALL_SYSTEMS = ("direct", "floor", "aogstream", "aogstream-x1", "aogstream-x1-nometrics",
               "aogstream-x1-quiet", "aogstream-ollama", "aogstream-native",
               "aogstream-native-host", "aogstream-native-iso", "litellm")
# How a system is named in tables: `aogstream-x1` is the gateway pinned to one worker;
# the two after it are the same with metrics off, and with metrics and request log off.
LABELS = {"aogstream-x1": "aogstream ×1", "aogstream-x1-nometrics": "×1 metrics off",
          "aogstream-x1-quiet": "×1 metrics+log off"}
# The environment of those two (`aogstream.observe.run`).
OBSERVE_OFF = {"aogstream-x1-nometrics": {"AOGSTREAM_METRICS": "off"},
               "aogstream-x1-quiet": {"AOGSTREAM_METRICS": "off",
                                      "AOGSTREAM_REQUEST_LOG": "off"}}


def label(name: str) -> str:
    """The system's name as the tables print it."""
    return LABELS.get(name, name)


@dataclass
class System:
    """A process tree serving HTTP on `port`: the stub, a gateway, LiteLLM."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    paths: dict[str, str] = field(default_factory=dict)  # protocol → path
    auth: bytes = b""  # extra request header lines (LiteLLM's key)
    roles: dict[int, str] = field(default_factory=dict)  # pid → role
    notes: dict[str, str] = field(default_factory=dict)  # protocol → why unsupported

    def supports(self, proto: str) -> bool:
        return proto in self.paths

    def path(self, proto: str) -> str:
        return self.paths[proto]

    def pids(self) -> list[int]:
        return list(self.roles)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far, summed per role; fails if a measured process is gone."""
        out: dict[str, float] = {}
        for pid, role in self.roles.items():
            try:
                out[role] = out.get(role, 0.0) + read_stat(pid)[2]
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"{self.name}: process {pid} ({role}) is gone; "
                                   f"log {self.log}:\n{tail(self.log)}") from exc
        return out

    def cpu_total(self) -> float:
        return sum(self.cpu().values())

    def rss_kb(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid, role in self.roles.items():
            with contextlib.suppress(OSError, ValueError):
                out[role] = out.get(role, 0) + rss_kb(pid)
        return out

    def check(self) -> None:
        """Fail if the root exited or the process set changed (e.g. a plugin restart)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}; "
                               f"log {self.log}:\n{tail(self.log)}")
        now = set(descendants(self.proc.pid))
        if now != set(self.roles):
            raise RuntimeError(f"{self.name}: processes changed from {sorted(self.roles)} to "
                               f"{sorted(now)} (a restart?); log {self.log}:\n"
                               f"{tail(self.log)}")


def _wait_ready(sut: System, url_path: str, what: str, headers: dict[str, str] | None = None,
                timeout: float = START_TIMEOUT) -> None:
    """Poll `GET url_path` until it answers 200 (the process may not die meanwhile)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=3.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if sut.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {sut.proc.returncode} at "
                                   f"start-up; log {sut.log}:\n{tail(sut.log)}")
            try:
                r = http.get(f"http://{HOST}:{sut.port}{url_path}", headers=headers)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
    raise RuntimeError(f"{what} not ready on {HOST}:{sut.port} after {timeout:.0f} s "
                       f"({last}); log {sut.log}:\n{tail(sut.log)}")


def wait_listening(sut: System, what: str, timeout: float = 30.0) -> None:
    """Poll until `sut.port` accepts a TCP connection (for servers without a health
    route); the process may not die meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if sut.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {sut.proc.returncode} at "
                               f"start-up; log {sut.log}:\n{tail(sut.log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, sut.port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {HOST}:{sut.port} in "
                               f"{timeout:.0f} s; log {sut.log}:\n{tail(sut.log)}")
        time.sleep(0.05)


def stub_argv(port: int, extra: Sequence[str] = ()) -> list[str]:
    """The stub engine's command line (coldstart.py starts it without `start_stub`)."""
    return [sys.executable, str(HERE / "stub_engine.py"), "--port", str(port), *extra]


def aogstream_argv(port: int, plugin_dir: Path, data_dir: Path, workers: int | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The gateway's command line; `--workers` only when this build lists it."""
    argv = [sys.executable, "-m", "aogstream", "server", "start", "--host", HOST,
            "--port", str(port), "--plugin-dir", str(plugin_dir),
            "--data-dir", str(data_dir), *extra]
    if workers is not None and "--workers" in gateway_help():
        argv += ["--workers", str(workers)]
    return argv


def litellm_argv(port: int, cfg: Path, stub: System) -> list[str]:
    """LiteLLM's command line, after writing its config to `cfg`: one worker, every
    model name routed to the stub (`openai/*`), no retries, the master key."""
    cfg.write_text(
        "model_list:\n"
        "  - model_name: \"*\"\n"
        "    litellm_params:\n"
        "      model: \"openai/*\"\n"
        f"      api_base: \"http://{HOST}:{stub.port}/v1\"\n"
        "      api_key: \"none\"\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  request_timeout: 600\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: \"{LITELLM_KEY}\"\n")
    return [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", HOST,
            "--port", str(port), "--num_workers", "1"]


def start_stub(tmp: Path, name: str = "stub", close_log: Path | None = None,
               extra: Sequence[str] = ()) -> System:
    """benchmarks/stub_engine.py on a free port."""
    port = free_port()
    log = tmp / f"{name}.log"
    argv = stub_argv(port, extra)
    if close_log is not None:
        argv += ["--close-log", str(close_log)]
    sut = System(name, popen(argv, log), port, log,
                 paths={"json": "/v1/chat/completions", "sse": "/v1/chat/completions",
                        "ndjson": "/api/chat"})
    try:
        _wait_ready(sut, "/health", "the stub engine", timeout=30)
    except BaseException:
        stop(sut)
        raise
    sut.roles = {sut.proc.pid: "engine"}
    return sut


def start_floor(tmp: Path, name: str = "floor") -> System:
    """benchmarks/floor_app.py (hypercorn, trio worker) on a free port."""
    port = free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, str(HERE / "floor_app.py"), "--port", str(port)]
    sut = System(name, popen(argv, log), port, log,
                 paths={"json": "/v1/chat/completions", "sse": "/v1/chat/completions",
                        "ndjson": "/api/chat"})
    try:
        _wait_ready(sut, "/health", "the floor app", timeout=30)
    except BaseException:
        stop(sut)
        raise
    sut.roles = {pid: "floor" for pid in descendants(sut.proc.pid)}
    return sut


@functools.cache
def gateway_help() -> str:
    """`server start --help`, to see which options this gateway build has."""
    out = subprocess.run([sys.executable, "-m", "aogstream", "server", "start", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    return out.stdout


def start_aogstream(tmp: Path, stub: System | None, name: str = "aogstream",
                    plugin_dir: Path = RELAY_PLUGIN_DIR, plugin_name: str = "relay-plugin",
                    workers: int | None = None, extra: Sequence[str] = (),
                    extra_env: dict[str, str] | None = None) -> System:
    """The gateway with one relay plugin, talking to `stub` (None: a plugin that answers
    by itself, such as benchmarks/stub_plugin).

    `workers`: passed as `--workers` when `server start --help` lists it (None: the
    gateway's default). The plugin pid comes from `GET /aog/v0.2/plugin/list` and must be
    a descendant of the gateway; every descendant is measured."""
    import httpx

    port = free_port()
    log = tmp / f"{name}.log"
    argv = aogstream_argv(port, plugin_dir, tmp / f"{name}-data", workers, extra)
    env = dict(os.environ)
    env.update(extra_env or {})
    if stub is not None:
        env[STUB_ENV] = f"{HOST}:{stub.port}"
    paths = {"json": "/v1/chat/completions", "sse": "/v1/chat/completions",
             "ndjson": "/api/chat"}
    sut = System(name, popen(argv, log, env=env), port, log, paths=paths)
    try:
        _wait_ready(sut, "/aog/v0.2/health", "the aogstream gateway")
        deadline = time.monotonic() + START_TIMEOUT
        plugin: dict[str, Any] = {}
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    listed = http.get(f"http://{HOST}:{port}/aog/v0.2/plugin/list"
                                      ).json().get("data") or []
                    plugin = next((p for p in listed if p.get("name") == plugin_name), {})
                    if plugin.get("state") == "running" and plugin.get("pid"):
                        break
                if sut.proc.poll() is not None:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"plugin {plugin_name} not running after "
                                   f"{START_TIMEOUT:.0f} s (last: {plugin}); log {log}:\n"
                                   f"{tail(log)}")
        if sut.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited at start-up; log {log}:\n{tail(log)}")
        time.sleep(0.5)  # let workers (if any) settle before taking the process set
        plugin_pid = int(plugin["pid"])
        procs = descendants(sut.proc.pid)
        if plugin_pid not in procs:
            raise RuntimeError(f"plugin pid {plugin_pid} is not below the gateway "
                               f"{sut.proc.pid}")
        sut.roles = {pid: ("gateway" if pid == sut.proc.pid else
                           "plugin" if pid == plugin_pid else
                           "worker" if "aogstream" in cmdline(pid) else "other")
                     for pid in procs}
    except BaseException:
        stop(sut)
        raise
    return sut


def start_aogstream_native(tmp: Path, stub: System, name: str = "aogstream-native",
                           workers: int | None = None, transport: str = "direct",
                           isolation: str = "in-process") -> System:
    """The gateway relaying through the native executor benchmarks/native_relay (built
    by tools/build-native-plugins.sh), enabled in `<data dir>/config.yaml`;
    `transport`: `direct` (its own HTTP) or `host` (`host.http.*`); `isolation`:
    `in-process` or `process` (the library in a host process of ours)."""
    import platform

    import httpx

    subprocess.run([str(ROOT / "tools" / "build-native-plugins.sh")], check=True,
                   cwd=ROOT)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(),
                                                      platform.machine().lower())
    plugins = tmp / f"{name}-plugins"
    (plugins / "linux" / arch).mkdir(parents=True, exist_ok=True)
    lib = plugins / "linux" / arch / "native-relay.so"
    lib.write_bytes((ROOT / ".cache" / "native-plugins" / "native-relay.so").read_bytes())
    data = tmp / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.yaml").write_text(
        "plugins:\n  enabled: true\n  configs:\n    native-relay:\n      enabled: true\n"
        f"      transport: {transport}\n      isolation: {isolation}\n")
    port = free_port()
    log = tmp / f"{name}.log"
    env = dict(os.environ, **{STUB_ENV: f"{HOST}:{stub.port}"})
    sut = System(name, popen(aogstream_argv(port, plugins, data, workers), log, env=env),
                 port, log, paths={"json": "/v1/chat/completions",
                                   "sse": "/v1/chat/completions", "ndjson": "/api/chat"})
    try:
        _wait_ready(sut, "/aog/v0.2/health", "the aogstream gateway")
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while time.monotonic() < deadline and sut.proc.poll() is None:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    listed = http.get(f"http://{HOST}:{port}/aog/v0.2/plugin/list"
                                      ).json().get("data") or []
                    plugin = next((p for p in listed if p.get("name") == "native-relay"), {})
                    if plugin.get("state") == "running":
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"native-relay not running; log {log}:\n{tail(log)}")
        time.sleep(0.5)  # let workers (if any) load it too
        sut.roles = {pid: ("gateway" if pid == sut.proc.pid else
                           "plugin" if "native.isolated" in cmdline(pid) else
                           "worker" if "aogstream" in cmdline(pid) else "other")
                     for pid in descendants(sut.proc.pid)}
    except BaseException:
        stop(sut)
        raise
    return sut


def litellm_missing() -> str:
    """Why LiteLLM cannot run here ('' when it can)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        return (f"LiteLLM is not installed in {LITELLM_VENV.relative_to(ROOT)} "
                "(run benchmarks/setup_litellm.sh)")
    return ""


def start_litellm(tmp: Path, stub: System, name: str = "litellm") -> System:
    """LiteLLM proxy, one worker, every model name routed to the stub (`openai/*`)."""
    why = litellm_missing()
    if why:
        raise RuntimeError(why)
    port = free_port()
    log = tmp / f"{name}.log"
    # The stub repeats one token; LiteLLM ends a stream after 100 identical chunks ("the
    # model is repeating the same chunk"), a guard against looping models that real
    # tokens never trip. Its documented knob lifts it, so long streams can be measured.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True",
               REPEATED_STREAMING_CHUNK_LIMIT="1000000000")
    argv = litellm_argv(port, tmp / f"{name}.yaml", stub)
    sut = System(name, popen(argv, log, env=env, cwd=tmp), port, log,
                 paths={"json": "/v1/chat/completions", "sse": "/v1/chat/completions"},
                 auth=f"Authorization: Bearer {LITELLM_KEY}\r\n".encode(),
                 notes={"ndjson": "LiteLLM has no NDJSON endpoint"})
    try:
        _wait_ready(sut, "/health/liveliness", "LiteLLM")
        time.sleep(0.5)
        sut.roles = {pid: ("litellm" if pid == sut.proc.pid else "litellm child")
                     for pid in descendants(sut.proc.pid)}
    except BaseException:
        stop(sut)
        raise
    return sut


def stop(sut: System) -> None:
    """SIGTERM, a grace period, SIGKILL; then the rest of its process group and any
    measured descendant still there (a plugin the gateway failed to stop)."""
    proc = sut.proc
    known = set(sut.roles) - {proc.pid}
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            progress(f"{sut.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it")
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what it started
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(alive(p) for p in known):
        time.sleep(0.05)
    for pid in known:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def protocol_of(sut: System, proto: str) -> str:
    """Why `sut` does not serve `proto` ('' when it does)."""
    return "" if sut.supports(proto) else (sut.notes.get(proto) or f"no {proto} endpoint")
