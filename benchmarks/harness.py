"""The benchmarks' shared harness: systems under test, CPU/RSS accounting, a raw-socket
client, load schedules, statistics, markdown tables and plots.

Every benchmark script (ttft.py, cpu.py, throughput.py, knee.py, and the memory,
cancellation, realtime and cold-start scripts) follows `../shared/benchmarks.md` through
this module, so they all measure the same way: baseline in the same run, interleaved
rounds, medians of round medians, CPU from /proc for every process of a system, load
average and machine-busy warnings in every report.

Topology
--------
    client (this process, trio) ──▶ system under test ──▶ stub engine (stub_engine.py)

One **stub engine** process serves every system of a run. The systems (names used
everywhere: tables, JSON, `Bench(systems=...)`):

- `direct`: the client talks to the stub itself — zero relay, the physical limit. Its
  measured processes *are* the stub.
- `aogstream`: the real gateway, `python -m aogstream server start --port P --plugin-dir
  benchmarks/relay_plugin --data-dir <tmp>` (plus `--workers W` when the gateway offers it
  and W is given), relaying through `relay-plugin` (config_ref `openai:chat`, a separate
  process over gRPC) to the stub. `/v1/chat/completions` is a byte passthrough; NDJSON
  goes through the Ollama door `/api/chat` (converted ollama → openai → ollama).
- `aogstream-x1` ("aogstream ×1" in tables): the same gateway started with `--workers 1`,
  next to `aogstream` (the default, one worker per core), so the tables show what the
  extra workers buy (or cost).
- `aogstream-ollama`: the same gateway with the Ollama twin `relay-ollama-plugin`
  (config_ref `ollama:chat`): `/api/chat` NDJSON is then a passthrough too.
- `litellm`: LiteLLM proxy 1.106.2 from its own venv (`benchmarks/setup_litellm.sh`),
  `--num_workers 1`, model `*` → `openai/*` at the stub's `/v1`, `num_retries: 0`, no
  database, a master key (it refuses to start without one). No NDJSON door.

A system's measured processes are its root process and every descendant (gateway,
workers, plugin; never the stub, which is reported separately as `engine`).

API
---
Processes and /proc::

    free_port() -> int;  read_stat(pid) -> (ppid, state, cpu_s);  descendants(pid)
    rss_kb(pid) -> int;  cmdline(pid);  machine_busy() -> cpu_s;  loadavg() -> str

Systems::

    with Bench("ttft", quick=True, systems=("direct", "aogstream", "litellm"),
               workers=None, close_log=False, keep_logs=False) as bench:
        bench.stub          # System: the engine (port, roles, cpu(), rss_kb())
        bench.systems       # {name: System}, in the order asked; missing ones listed
        bench.skipped       # {name: reason} (e.g. LiteLLM not installed)
        sut.port, sut.supports(proto), sut.path(proto), sut.auth  # per-protocol endpoint
        sut.cpu() -> {role: s};  sut.cpu_total();  sut.rss_kb() -> {role: kB};  sut.check()
        data = bench.run(main_async, *args, max_seconds=600)   # trio.run + SIGTERM/deadline
        lines = bench.header("title", ["- extra line"])        # load, CPUs, busy warning
        bench.save(markdown, raw_dict, figure)                  # results/<name>.md/.json/.png

`Bench` starts the stub and the systems in `__enter__` and stops everything in
`__exit__` (SIGTERM, 10 s grace, SIGKILL of the process group; also on Ctrl-C/SIGTERM
and, through PR_SET_PDEATHSIG, if the benchmark itself dies). Logs live in a temp folder,
kept when the run fails or with `keep_logs`. Standalone helpers `start_stub`,
`start_aogstream`, `start_litellm` and `stop` do the same one system at a time.

Client (trio raw sockets; each read is timestamped, HTTP/1.1 chunked/Content-Length
decoded, SSE and NDJSON events split here)::

    body = chat_body(proto, model_name(t0_ms, n, gap_ms))   # OpenAI or Ollama JSON
    res = await call(sut, proto, body, timeout=30)           # fresh connection
    async with KeepAlive(sut) as conn: res = await conn.call(proto, body)
    res.ok, res.status, res.ttft, res.total, res.content (times of content events),
    res.gaps(), res.coalesced (reads that delivered >= 2 events after a silence), res.error
    results = await open_loop(n, interval_s, lambda i: call(...))   # fixed arrival times
    results, span = await closed_loop(concurrency, seconds, one)  # as fast as answered

A *content event* is an SSE event or NDJSON line whose content starts with `tok` (the stub
sends `"tok"`); the terminal one is
`[DONE]` (SSE) or `"done":true` (NDJSON); a JSON answer is one event at its end.

Statistics and output::

    pct(values, q); med(values); fmt(v, digits, sign); ratio(a, b) -> "1.23×"
    target(v, limit, unit) -> "1.2 ms (≤ 1.5: met)";  md_table(headers, rows)
    figure(ncols) -> (fig, axes);  cdf(ax, values, label)     # matplotlib, Agg backend
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
NCPU = os.cpu_count() or 1

RELAY_PLUGIN_DIR = HERE / "relay_plugin"
RELAY_OLLAMA_DIR = HERE / "relay_plugin_ollama"
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", ROOT / ".cache" / "bench" / "litellm"))
LITELLM_VERSION = "1.106.2"
# LiteLLM refuses to start without a master key; a fixed one for this loopback-only proxy.
LITELLM_KEY = "sk-bench-6f1c2a9e4b7d4e0f8a3c5d2e1f0a9b8c"
STUB_ENV = "AOGSTREAM_BENCH_STUB"  # where relay-plugin finds the stub (host:port)

START_TIMEOUT = 90.0  # LiteLLM takes ~35 s to import on this machine kind
STOP_TIMEOUT = 10.0
MAX_INFLIGHT = 4000  # open-loop requests in flight at once, whatever the schedule says
RECV = 262144

PROTOCOLS = ("json", "sse", "ndjson")
ALL_SYSTEMS = ("direct", "aogstream", "aogstream-x1", "aogstream-ollama", "litellm")
# How a system is named in tables: `aogstream-x1` is the gateway pinned to one worker.
LABELS = {"aogstream-x1": "aogstream ×1"}


def label(name: str) -> str:
    """The system's name as the tables print it."""
    return LABELS.get(name, name)


# ---- processes and /proc -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


try:  # looked up here, not in the child: no dlopen between fork and exec
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies (Linux only)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def read_stat(pid: int) -> tuple[int, str, float]:
    """(ppid, state, utime+stime in seconds) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[1]), fields[0].decode(), (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size of one process, kB (from /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KB


def machine_busy() -> float:
    """CPU seconds the whole machine has used (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4] - vals[7]) / CLK_TCK


def alive(pid: int) -> bool:
    try:
        return read_stat(pid)[1] not in ("Z", "X")
    except (OSError, ValueError):
        return False


def descendants(root: int) -> list[int]:
    """root and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, state, _ = read_stat(int(entry))
            except (OSError, ValueError):
                continue
            if state not in ("Z", "X"):
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def progress(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def popen(argv: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """Start a process in its own session (so its whole group can be stopped)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            # Bench starts systems from threads; the hook only calls a C function
            # looked up in advance, and those threads live until the systems stop.
            preexec_fn=_die_with_parent,
        )


# ---- systems --------------------------------------------------------------------------


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


def start_stub(tmp: Path, name: str = "stub", close_log: Path | None = None,
               extra: Sequence[str] = ()) -> System:
    """benchmarks/stub_engine.py on a free port."""
    port = free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, str(HERE / "stub_engine.py"), "--port", str(port), *extra]
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


@functools.cache
def gateway_help() -> str:
    """`server start --help`, to see which options this gateway build has."""
    out = subprocess.run([sys.executable, "-m", "aogstream", "server", "start", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    return out.stdout


def start_aogstream(tmp: Path, stub: System, name: str = "aogstream",
                    plugin_dir: Path = RELAY_PLUGIN_DIR, plugin_name: str = "relay-plugin",
                    workers: int | None = None, extra: Sequence[str] = ()) -> System:
    """The gateway with one relay plugin, talking to `stub`.

    `workers`: passed as `--workers` when `server start --help` lists it (None: the
    gateway's default). The plugin pid comes from `GET /aog/v0.2/plugin/list` and must be
    a descendant of the gateway; every descendant is measured."""
    import httpx

    port = free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, "-m", "aogstream", "server", "start", "--host", HOST,
            "--port", str(port), "--plugin-dir", str(plugin_dir),
            "--data-dir", str(tmp / f"{name}-data"), *extra]
    if workers is not None and "--workers" in gateway_help():
        argv += ["--workers", str(workers)]
    env = dict(os.environ, **{STUB_ENV: f"{HOST}:{stub.port}"})
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
    cfg = tmp / f"{name}.yaml"
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
    # The stub repeats one token; LiteLLM ends a stream after 100 identical chunks ("the
    # model is repeating the same chunk"), a guard against looping models that real
    # tokens never trip. Its documented knob lifts it, so long streams can be measured.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True",
               REPEATED_STREAMING_CHUNK_LIMIT="1000000000")
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", HOST,
            "--port", str(port), "--num_workers", "1"]
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


class Bench:
    """One benchmark run: temp folder, the stub, the systems, clean-up and reporting."""

    def __init__(self, name: str, quick: bool, systems: Iterable[str] = ("direct",
                 "aogstream", "litellm"), workers: int | None = None, close_log: bool = False,
                 keep_logs: bool = False, stub_args: Sequence[str] = ()) -> None:
        self.name = name
        self.quick = quick
        self.mode = "quick" if quick else "full"
        self.wanted = [s for s in systems]
        for s in self.wanted:
            if s not in ALL_SYSTEMS:
                raise SystemExit(f"unknown system {s!r}; choose from {', '.join(ALL_SYSTEMS)}")
        self.workers = workers
        self.keep_logs = keep_logs
        self.stub_args = list(stub_args)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.close_log = self.tmp / "closes.jsonl" if close_log else None
        self.stub: System | None = None
        self.systems: dict[str, System] = {}
        self.skipped: dict[str, str] = {}
        self._started: list[System] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.load_start = loadavg()
        self.load_end = ""
        self.foreign = float("nan")
        self.t_begin = time.monotonic()
        self.gateway_options = ""
        self.failed = True

    # ---- lifecycle ----

    def __enter__(self) -> Bench:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        progress(f"{self.name} {self.mode}: load average {self.load_start}, {NCPU} CPUs; "
                 f"logs in {self.tmp}")
        try:
            self.stub = start_stub(self.tmp, close_log=self.close_log, extra=self.stub_args)
            self._started.append(self.stub)
            gateway_help()  # once, before the threads below look at it
            # Start the systems side by side: LiteLLM alone takes ~30 s to import, and
            # each script would otherwise wait for every start-up in turn. The pool's
            # threads must outlive the systems: PR_SET_PDEATHSIG fires when the *thread*
            # that forked a child exits, so the pool is shut down only in __exit__.
            self._pool = concurrent.futures.ThreadPoolExecutor(max(1, len(self.wanted)))
            futures = {s: self._pool.submit(self._start, s) for s in self.wanted}
            errors: list[BaseException] = []
            for s, fut in futures.items():
                try:
                    sut = fut.result()
                except BaseException as err:  # noqa: BLE001 - stop the others first
                    errors.append(err)
                    continue
                if sut is not None:
                    self.systems[s] = sut
                    self._started.append(sut)
                    progress(f"{s} on :{sut.port}: " + ", ".join(
                        f"{role} {pid}" for pid, role in sut.roles.items()))
            if errors:
                raise errors[0]
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self, s: str) -> System | None:
        assert self.stub is not None
        if s == "direct":
            return System("direct", self.stub.proc, self.stub.port, self.stub.log,
                          paths=dict(self.stub.paths), roles=dict(self.stub.roles))
        if s == "aogstream":
            return start_aogstream(self.tmp, self.stub, workers=self.workers)
        if s == "aogstream-x1":
            return start_aogstream(self.tmp, self.stub, name=s, workers=1)
        if s == "aogstream-ollama":
            sut = start_aogstream(self.tmp, self.stub, name=s, plugin_dir=RELAY_OLLAMA_DIR,
                                  plugin_name="relay-ollama-plugin", workers=self.workers)
            sut.paths = {"ndjson": "/api/chat"}
            sut.notes = {"json": "see aogstream", "sse": "see aogstream"}
            return sut
        why = litellm_missing()
        if why:
            self.skipped[s] = why
            progress(f"skipping {s}: {why}")
            return None
        return start_litellm(self.tmp, self.stub)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for sut in reversed(self._started):
            try:
                stop(sut)
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                progress(f"could not stop {sut.name}: {err}")
        self._started.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.keep_logs or self.failed or exc_type is not None:
            progress(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- measuring ----

    def measured(self) -> list[System]:
        """The stub and every system (each pid once)."""
        assert self.stub is not None
        return [self.stub, *(s for s in self.systems.values() if s.name != "direct")]

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, max_seconds: float) -> Any:
        """trio.run(fn, *args) under a deadline, with machine-busy accounting around it;
        SIGTERM/Ctrl-C stop it cleanly (KeyboardInterrupt after trio has unwound)."""
        ours = [os.getpid()] + [p for s in self.measured() for p in s.pids()]

        def own() -> float:
            total = 0.0
            for pid in ours:
                with contextlib.suppress(OSError, ValueError):
                    total += read_stat(pid)[2]
            return total

        own0, busy0, w0 = own(), machine_busy(), time.monotonic()

        async def guarded() -> Any:
            with trio.fail_after(max_seconds):
                return await fn(*args)

        try:
            out = trio.run(guarded)
        except trio.TooSlowError:
            raise RuntimeError(f"the measurements took over {max_seconds:.0f} s; "
                               "stopped") from None
        except BaseExceptionGroup as group:
            raise _single(group) from None
        own1, busy1, w1 = own(), machine_busy(), time.monotonic()
        self.foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(w1 - w0, 1e-9)
        self.load_end = loadavg()
        return out

    def busy(self) -> bool:
        first = float(self.load_start.split()[0]) if self.load_start != "n/a" else 0.0
        return (self.foreign == self.foreign and self.foreign > 0.25) or first >= 0.5 * NCPU

    # ---- reporting ----

    def header(self, title: str, extra: Sequence[str] = ()) -> list[str]:
        elapsed = time.monotonic() - self.t_begin
        systems = []
        for name, sut in self.systems.items():
            roles = list(sut.roles.values())
            procs = ", ".join(r if roles.count(r) == 1 else f"{r} ×{roles.count(r)}"
                              for r in sorted(set(roles)))
            systems.append(f"{name} ({procs})")
        lines = [
            f"# {title}",
            "",
            f"- mode **{self.mode}**, {self.started_at}, {elapsed:.0f} s; {NCPU} CPUs, load "
            f"average at start **{self.load_start}**, at end {self.load_end or loadavg()}; "
            f"Python {platform.python_version()}",
            f"- systems: {'; '.join(systems)}; engine: `benchmarks/stub_engine.py` (trio raw "
            f"sockets), measured separately; client: one trio process, raw sockets, "
            f"all on {HOST}",
        ]
        if "aogstream-x1" in self.systems:
            lines.append("- `aogstream-x1` (**aogstream ×1**) is the gateway started with "
                         "`--workers 1`; `aogstream` has the default, one serving worker "
                         f"per core ({NCPU} here)")
        if self.skipped:
            lines.append("- not run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        if self.workers is not None:
            lines.append(f"- gateway workers asked: {self.workers} (passed only if "
                         "`server start --help` lists `--workers`)")
        lines += list(extra)
        lines.append(f"- other processes on the machine (not the client, the engine or the "
                     f"systems) used **{fmt(self.foreign)} CPUs** on average during the "
                     "measurements")
        if self.busy():
            lines.append("- **warning: the machine was busy** (load average / other "
                         "processes above): wall-clock figures are inflated and noisy; CPU "
                         "figures suffer less. Rerun on a quiet machine to quote numbers.")
        lines.append("")
        return lines

    def save(self, markdown: str, raw: dict[str, Any], fig: Any = None,
             out: Path | None = None) -> Path:
        """Write results/<name>.md, .json (and .png when a figure is given)."""
        path = out or RESULTS / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown)
        raw = {"name": self.name, "mode": self.mode, "started_at": self.started_at,
               "load_start": self.load_start, "load_end": self.load_end,
               "foreign_cpus": self.foreign, "cpus": NCPU,
               "duration_s": round(time.monotonic() - self.t_begin, 1),
               "processes": {n: {str(k): v for k, v in s.roles.items()}
                             for n, s in self.systems.items()},
               "skipped": self.skipped, **raw}
        path.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        if fig is not None:
            fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
        progress(f"wrote {path} (+ .json{', .png' if fig is not None else ''})")
        self.failed = False
        return path


def _raise_interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _single(group: BaseExceptionGroup) -> BaseException:
    """A lone exception out of nested ExceptionGroups (else the group itself)."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop()
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


# ---- client ---------------------------------------------------------------------------


def model_name(t0_ms: float = 0, chunks: int = 5, gap_ms: float = 0, tag: str = "") -> str:
    """The model name that configures the stub through any gateway (see stub_engine)."""
    name = f"stub-t{t0_ms:g}-n{chunks}-g{gap_ms:g}"
    return f"{name}-r{tag}" if tag else name


def chat_body(proto: str, model: str) -> bytes:
    """An OpenAI (json, sse) or Ollama (ndjson) chat request."""
    obj = {"model": model, "messages": [{"role": "user", "content": "hi"}],
           "stream": proto != "json"}
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Result:
    """One request: status, timings (perf_counter seconds) and the events seen."""

    ok: bool = False
    status: int = 0
    start: float = 0.0  # request written
    first: float = 0.0  # first content event complete
    end: float = 0.0  # response complete
    content: list[float] = field(default_factory=list)  # arrival of each content event
    events: int = 0  # all events (content, final, terminal)
    terminal: bool = False  # [DONE] / "done":true / a complete JSON body
    coalesced: int = 0  # reads that delivered >= 2 content events after a silence
    first_payload: bytes = b""
    error: str = ""

    @property
    def ttft(self) -> float:
        return self.first - self.start if self.first else float("nan")

    @property
    def total(self) -> float:
        return self.end - self.start if self.end else float("nan")

    def gaps(self) -> list[float]:
        c = self.content
        return [b - a for a, b in itertools.pairwise(c)]


def request_bytes(sut: System, proto: str, body: bytes, keep_alive: bool = False) -> bytes:
    accept = {"json": "application/json", "sse": "text/event-stream",
              "ndjson": "application/x-ndjson"}[proto]
    return (f"POST {sut.path(proto)} HTTP/1.1\r\nHost: {HOST}:{sut.port}\r\n"
            f"Content-Type: application/json\r\nAccept: {accept}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n").encode() \
        + sut.auth + b"\r\n" + body


class _Reader:
    """Incremental HTTP/1.1 response decoder with per-read event timestamps."""

    def __init__(self, proto: str, res: Result, silence: float) -> None:
        self.proto = proto
        self.res = res
        self.silence = silence  # a read after this long quiet that brings >= 2 events
        self.buf = bytearray()  # undecoded bytes
        self.body = bytearray()  # decoded, not yet split into events (or the JSON body)
        self.head_done = False
        self.chunked = False
        self.length = -1
        self.got = 0
        self.done = False
        self.close_after = False
        self.last_read = 0.0

    def feed(self, data: bytes, now: float) -> None:
        self.buf += data
        if not self.head_done:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i])
            del self.buf[:i + 4]
            self.head_done = True
            lines = head.split(b"\r\n")
            self.res.status = int(lines[0].split(b" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"content-length":
                    self.length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.close_after = True
        before = len(self.res.content)
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.buf
            self.got += len(self.buf)
            self.buf.clear()
            if 0 <= self.length <= self.got:
                self.done = True
        self._events(now)
        n = len(self.res.content) - before
        if n >= 2 and self.last_read and now - self.last_read > self.silence:
            self.res.coalesced += 1
        if n:
            self.last_read = now

    def _dechunk(self) -> None:
        buf = self.buf
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                return
            size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) >= i + 4:
                    del buf[:i + 4]
                    self.done = True
                return
            if len(buf) < i + 2 + size + 2:
                return
            self.body += buf[i + 2:i + 2 + size]
            del buf[:i + 2 + size + 2]

    def _events(self, now: float) -> None:
        res = self.res
        if self.proto == "json":
            if self.done:
                res.events = 1
                res.terminal = True
                res.content.append(now)
                res.first = res.first or now
                res.first_payload = bytes(self.body[:2000])
            return
        if self.proto == "sse":
            if b"\r" in self.body:
                self.body = bytearray(self.body.replace(b"\r\n", b"\n"))
            sep = b"\n\n"
        else:
            sep = b"\n"
        body = self.body
        start = 0
        while True:
            i = body.find(sep, start)
            if i < 0:
                break
            event = bytes(body[start:i])
            start = i + len(sep)
            if not event.strip():
                continue
            res.events += 1
            if self.proto == "sse":
                if b"[DONE]" in event:
                    res.terminal = True
                    continue
            elif b'"done":true' in event.replace(b" ", b""):
                res.terminal = True
                continue
            if b'"tok' in event:
                res.content.append(now)
                if not res.first:
                    res.first = now
                    res.first_payload = event
        if start:
            del body[:start]


async def _exchange(stream: trio.SocketStream, req: bytes, proto: str, res: Result,
                    silence: float) -> bool:
    """Send one request, read its response; True if the connection may be reused."""
    rd = _Reader(proto, res, silence)
    res.start = perf_counter()
    await stream.send_all(req)
    while not rd.done:
        data = await stream.receive_some(RECV)
        now = perf_counter()
        if not data:
            if rd.head_done and not rd.chunked and rd.length < 0:
                rd.done = True  # close-delimited body
                rd._events(now)
                break
            raise ValueError("connection closed before the response was complete")
        rd.feed(data, now)
    res.end = perf_counter()
    return not rd.close_after


def _judge(res: Result, proto: str, expect: int | None) -> None:
    if res.error:
        return
    if res.status != 200:
        res.error = f"HTTP {res.status}: {res.first_payload[:120]!r}"
    elif not res.terminal:
        res.error = "no terminal event ([DONE] / done:true)"
    elif expect is not None and proto != "json" and len(res.content) != expect:
        res.error = f"{len(res.content)} content events, expected {expect}"
    elif proto == "json" and b'"tok' not in res.first_payload:
        res.error = "JSON answer without the stub's content"
    res.ok = not res.error


async def call(sut: System, proto: str, body: bytes, timeout: float = 60.0,
               expect: int | None = None, silence: float = 0.05) -> Result:
    """One request on a fresh connection (`Connection: close`), timed from the send.

    `expect`: the number of content events a complete stream has (checked when given);
    `silence`: a read that brings >= 2 content events after this long is counted in
    `Result.coalesced`."""
    res = Result()
    req = request_bytes(sut, proto, body)
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(HOST, sut.port)
        except OSError as exc:
            res.error = f"connect: {exc}"
            return res
        async with stream:
            try:
                await _exchange(stream, req, proto, res, silence)
            except (trio.BrokenResourceError, OSError, ValueError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
    if scope.cancelled_caught:
        res.error = f"timeout after {timeout:g} s"
    _judge(res, proto, expect)
    return res


class KeepAlive:
    """One persistent client connection (reconnects when the server closed it)."""

    def __init__(self, sut: System, timeout: float = 60.0) -> None:
        self.sut = sut
        self.timeout = timeout
        self.stream: trio.SocketStream | None = None

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None

    async def call(self, proto: str, body: bytes, expect: int | None = None,
                   silence: float = 0.05) -> Result:
        res = Result()
        req = request_bytes(self.sut, proto, body, keep_alive=True)
        reuse = False
        with trio.move_on_after(self.timeout) as scope:
            try:
                if self.stream is None:
                    self.stream = await trio.open_tcp_stream(HOST, self.sut.port)
                reuse = await _exchange(self.stream, req, proto, res, silence)
            except (trio.BrokenResourceError, OSError, ValueError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            res.error = f"timeout after {self.timeout:g} s"
        if not reuse and self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None
        _judge(res, proto, expect)
        return res


async def open_loop(n: int, interval: float, one: Callable[[int], Awaitable[Result]]
                    ) -> list[Result]:
    """Start request i at start + i·interval whatever the system does (open loop), at
    most MAX_INFLIGHT at once; return the results in order."""
    out: list[Result | None] = [None] * n
    limit = trio.CapacityLimiter(MAX_INFLIGHT)

    async def run(i: int) -> None:
        async with limit:
            out[i] = await one(i)

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        for i in range(n):
            await trio.sleep_until(t0 + i * interval)
            nursery.start_soon(run, i)
    return [r if r is not None else Result(error="not run") for r in out]


async def closed_loop(concurrency: int, seconds: float,
                      one: Callable[[int], Awaitable[Result]], max_requests: int = 1_000_000
                      ) -> tuple[list[Result], float]:
    """`concurrency` workers each send a request as soon as the previous one answered,
    for `seconds` (or max_requests in all); returns the results and the span (s)."""
    out: list[Result] = []
    t_end = trio.current_time() + seconds
    start = perf_counter()

    async def worker(w: int) -> None:
        while trio.current_time() < t_end and len(out) < max_requests:
            out.append(await one(w))

    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    return out, perf_counter() - start


# ---- statistics and output ------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    v = sorted(x for x in values if x == x)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def med(values: Iterable[float]) -> float:
    v = [x for x in values if x == x]
    return statistics.median(v) if v else float("nan")


def fmt(v: float, digits: int = 2, sign: bool = False) -> str:
    if v != v:
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def ratio(a: float, b: float) -> str:
    """a / b as `1.23×` (n/a when either is missing or b is 0)."""
    if a != a or b != b or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def target(value: float, limit: float, unit: str = "", higher_is_better: bool = False,
           digits: int = 2) -> str:
    """`1.23 ms (≤ 1.5: met)`: a figure with the issue's target next to it."""
    if value != value:
        return f"n/a (target {'≥' if higher_is_better else '≤'} {limit:g}{unit})"
    met = value >= limit if higher_is_better else value <= limit
    op = "≥" if higher_is_better else "≤"
    return f"**{value:.{digits}f}**{unit} ({op} {limit:g}: {'met' if met else 'MISSED'})"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]],
             align: str = "") -> list[str]:
    """Markdown table lines; `align` is one letter per column, l or r (default: first
    two left, the rest right)."""
    align = align or ("ll" + "r" * (len(headers) - 2))
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6
           ) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display); axes always a flat list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False)
    return fig, [ax for row in axes for ax in row]


def cdf(ax: Any, values: Sequence[float], label: str, scale: float = 1000.0) -> None:
    """An empirical CDF of `values` (seconds, shown ×scale, i.e. ms by default)."""
    v = sorted(x * scale for x in values if x == x)
    if not v:
        return
    ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=label, drawstyle="steps-post")


# ---- command line shared by the scripts ----------------------------------------------


def common_args(ap: Any, name: str, systems: str = "direct,aogstream,litellm") -> None:
    """The options every script has: --quick, --systems, --workers, --keep-logs, --out,
    --max-seconds, --request-timeout."""
    ap.add_argument("--quick", action="store_true", help="reduced set (make bench)")
    ap.add_argument("--systems", default=systems,
                    help=f"comma-separated, from {', '.join(ALL_SYSTEMS)} (default {systems})")
    ap.add_argument("--workers", type=int, default=None,
                    help="gateway worker processes (passed as --workers when the gateway "
                         "has it; default: the gateway's own default)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per request, s")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="deadline for all measurements (default: the script's)")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{name}.md",
                    help="markdown report (the .json and .png go beside it)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")


def systems_arg(value: str) -> list[str]:
    out = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in out if s not in ALL_SYSTEMS]
    if bad or not out:
        raise SystemExit(f"--systems: {', '.join(bad) or 'empty'} not known; choose from "
                         f"{', '.join(ALL_SYSTEMS)}")
    if "direct" not in out:
        raise SystemExit("--systems must include direct (the baseline every figure is "
                         "compared with)")
    return out


def bounded(name: str, value: float, lo: float, hi: float) -> float:
    """A command-line value within [lo, hi], else exit naming the option and the range."""
    if not lo <= value <= hi:
        raise SystemExit(f"{name} must be in {lo:g}..{hi:g}, got {value:g}")
    return value


def script_main(body: Callable[[], int]) -> int:
    """Run a script's body: Ctrl-C/SIGTERM → 130, a RuntimeError → its message and 1."""
    try:
        return body()
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    except RuntimeError as exc:
        progress(f"failed: {exc}")
        return 1


# The systems ttft, cpu and throughput compare (the default gateway and `--workers 1`).
WORKER_COMPARISON = ("direct,aogstream,aogstream-x1,litellm",
                     "direct,aogstream,aogstream-x1,aogstream-ollama,litellm")


def run_measured(name: str, args: Any, systems: Sequence[str], measure: Callable[..., Any],
                 p: dict[str, Any], report: Callable[..., str], plot: Callable[..., Any],
                 key: str) -> int:
    """The body most scripts share: start the systems, run `measure(bench, p)` within
    `p["max_seconds"]`, print and save `report(bench, p, data)` with `plot(bench, p,
    data)`; the raw data is saved under `key` beside the parameters."""

    def body() -> int:
        with Bench(name, args.quick, systems, workers=args.workers,
                   keep_logs=args.keep_logs) as bench:
            data = bench.run(measure, bench, p, max_seconds=p["max_seconds"])
            md = report(bench, p, data)
            print(md)
            bench.save(md, {"params": p, key: data}, plot(bench, p, data), args.out)
        return 0

    return script_main(body)


def protocol_of(sut: System, proto: str) -> str:
    """Why `sut` does not serve `proto` ('' when it does)."""
    return "" if sut.supports(proto) else (sut.notes.get(proto) or f"no {proto} endpoint")


def tidy_log(ax: Any) -> None:
    """No labels on a log axis's minor ticks (they overlap on short ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
