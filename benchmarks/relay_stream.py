"""relay_stream: what relaying a streamed chat answer through aogstream costs.

    .venv/bin/python benchmarks/relay_stream.py --quick    # about a minute
    .venv/bin/python benchmarks/relay_stream.py            # more rounds, a few minutes

Two systems answer the same streamed chat request (`POST /aog/v0.2/services/chat`,
`"stream": true`, SSE `data: {json}\\n\\n`) with the same chunks and timing:

- direct:    benchmarks/stub_sse.py, a tiny trio raw-socket SSE server (the engine alone);
- aogstream: the real gateway (`python -m aogstream server start`) relaying the stub
             plugin benchmarks/stub_plugin/stub-plugin over gRPC.

This process is the client (trio raw sockets, one connection per request). It measures
(a) time to first chunk (TTFT: request sent → first complete `data:` event) at several
offered concurrencies, open loop, with first-token delay T0, N chunks and gap Δ, and
(b) CPU (utime+stime from /proc/PID/stat of every process of the system) per 1,000
relayed chunks in instant mode (Δ = 0). Rounds alternate direct, aogstream, direct, …;
results are medians of round medians (see benchmarks/README.md). The markdown table is
printed and written to benchmarks/results/relay_stream.md (raw numbers: relay_stream.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the /proc, process and report helpers every benchmark shares
    alive,
    cmdline,
    descendants,
    fmt,
    free_port,
    loadavg,
    machine_busy,
    med,
    popen,
    progress,
    read_stat,
    tail,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PLUGIN_DIR = HERE / "stub_plugin"
PLUGIN_NAME = "stub-plugin"
PLUGIN_MARKER = "stub-plugin/plugin.py"  # in the plugin process's command line
PATH = "/aog/v0.2/services/chat"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Hard bounds, whatever the command line says.
MAX_REQUESTS = 5_000
MAX_CONCURRENCY = 500
MAX_STREAMS = 500
MAX_CHUNKS = 20_000
MAX_ROUNDS = 50
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass
class Params:
    mode: str
    t0: float  # first-token delay, s
    chunks: int  # N content chunks per TTFT stream
    gap: float  # Δ, s
    concurrencies: list[int]
    requests: dict[int, int]  # requests per round, per concurrency
    ttft_rounds: int  # rounds per system, per concurrency
    cpu_streams: int
    cpu_chunks: int
    cpu_rounds: int  # rounds per system
    request_timeout: float
    max_seconds: float

    @property
    def nominal(self) -> float:
        """A stream's nominal duration: T0, then N chunks each followed by Δ."""
        return self.t0 + self.chunks * self.gap


def build_params(args: argparse.Namespace) -> Params:
    quick = args.quick
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not conc or any(not 1 <= c <= MAX_CONCURRENCY for c in conc):
        raise SystemExit(f"--concurrency: values in 1..{MAX_CONCURRENCY}")
    default_requests = 100 if quick else 200
    requests = {c: args.requests or max(default_requests, 20 * c) for c in conc}
    p = Params(
        mode="quick" if quick else "full",
        t0=args.t0_ms / 1000, chunks=args.chunks, gap=args.gap_ms / 1000,
        concurrencies=conc, requests=requests,
        ttft_rounds=args.rounds or (3 if quick else 6),
        cpu_streams=args.cpu_streams, cpu_chunks=args.cpu_chunks,
        cpu_rounds=args.cpu_rounds or (3 if quick else 7),
        request_timeout=args.request_timeout,
        max_seconds=args.max_seconds or (240 if quick else 1200),
    )
    checks = [
        (0 <= p.t0 <= 10 and 0 <= p.gap <= 10, "--t0-ms/--gap-ms: 0..10000"),
        (1 <= p.chunks <= MAX_CHUNKS, f"--chunks: 1..{MAX_CHUNKS}"),
        (all(1 <= n <= MAX_REQUESTS for n in requests.values()),
         f"requests per round: 1..{MAX_REQUESTS}"),
        (1 <= p.ttft_rounds <= MAX_ROUNDS and 1 <= p.cpu_rounds <= MAX_ROUNDS,
         f"rounds: 1..{MAX_ROUNDS}"),
        (1 <= p.cpu_streams <= MAX_STREAMS, f"--cpu-streams: 1..{MAX_STREAMS}"),
        (1 <= p.cpu_chunks <= MAX_CHUNKS, f"--cpu-chunks: 1..{MAX_CHUNKS}"),
        (1 <= p.request_timeout <= 600, "--request-timeout: 1..600 s"),
        (10 <= p.max_seconds <= 7200, "--max-seconds: 10..7200"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SystemExit(msg)
    if p.nominal <= 0:
        raise SystemExit("T0 + N·Δ must be > 0 for the TTFT runs (they schedule arrivals by it)")
    return p


# ---- processes ------------------------------------------------------------------------


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = read_stat(pid)[2]
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"process {pid} of the system under test is gone") from exc
    return out


@dataclass
class System:
    """A system under test: its root process, the port it serves and its processes."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    roles: dict[int, str] = field(default_factory=dict)  # pid → role, measured for CPU
    extra_kill: list[tuple[int, str]] = field(default_factory=list)  # (pid, cmdline marker)

    def check_processes(self) -> None:
        """Fail if a measured process died or a new one appeared (e.g. a plugin restart)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}; "
                               f"log: {self.log}\n{tail(self.log)}")
        now = set(descendants(self.proc.pid))
        if now != set(self.roles):
            raise RuntimeError(f"{self.name}: processes changed from {sorted(self.roles)} to "
                               f"{sorted(now)} (a plugin restart?); log: {self.log}\n"
                               f"{tail(self.log)}")


def wait_port(proc: subprocess.Popen, port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} at start-up:\n"
                               f"{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} in {START_TIMEOUT:.0f} s:\n"
                       f"{tail(log)}")


def start_direct(tmp: Path, started: list[System]) -> System:
    port = free_port()
    log = tmp / "stub_sse.log"
    proc = popen([sys.executable, str(HERE / "stub_sse.py"), "--port", str(port)], log)
    sut = System("direct", proc, port, log)
    started.append(sut)
    wait_port(proc, port, log, "the direct stub server")
    sut.roles = {proc.pid: "stub server"}
    sut.check_processes()
    return sut


def start_gateway(tmp: Path, started: list[System]) -> System:
    port = free_port()
    log = tmp / "gateway.log"
    argv = [sys.executable, "-m", "aogstream", "server", "start", "--host", HOST,
            "--port", str(port), "--plugin-dir", str(PLUGIN_DIR),
            "--data-dir", str(tmp / "data")]
    proc = popen(argv, log, env=dict(os.environ))
    sut = System("aogstream", proc, port, log)
    started.append(sut)
    wait_port(proc, port, log, "the aogstream gateway")
    deadline = time.monotonic() + START_TIMEOUT
    base = f"http://{HOST}:{port}/aog/v0.2"
    plugin: dict = {}
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited at start-up:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if http.get(f"{base}/health").status_code == 200:
                    listed = http.get(f"{base}/plugin/list").json().get("data") or []
                    plugin = next((p for p in listed if p.get("name") == PLUGIN_NAME), {})
                    if plugin.get("state") == "running" and plugin.get("pid"):
                        break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"plugin {PLUGIN_NAME} not running after {START_TIMEOUT:.0f} s "
                               f"(last: {plugin}):\n{tail(log)}")
    plugin_pid = int(plugin["pid"])
    sut.extra_kill.append((plugin_pid, PLUGIN_MARKER))
    procs = descendants(proc.pid)
    if plugin_pid not in procs:
        raise RuntimeError(f"plugin pid {plugin_pid} is not a child of the gateway {proc.pid}")
    sut.roles = {pid: ("gateway" if pid == proc.pid else
                       "plugin" if pid == plugin_pid else _role_of(pid))
                 for pid in procs}
    return sut


def stop(sut: System) -> None:
    """SIGTERM (the gateway then stops its plugin), a grace period, SIGKILL; then make
    sure the processes it started that we know of (the plugin) are gone too."""
    proc = sut.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"# {sut.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it",
                  file=sys.stderr)
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    for pid, marker in sut.extra_kill:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not (alive(pid) and marker in cmdline(pid)):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.05)


# ---- client ---------------------------------------------------------------------------


@dataclass
class StreamResult:
    ok: bool
    ttft: float = 0.0  # s, request sent → first complete data: event
    total: float = 0.0  # s, request sent → end of the response
    start: float = 0.0  # perf_counter at send
    events: int = 0
    first_event: bytes = b""
    error: str = ""


def _role_of(pid: int) -> str:
    """A name for another process of the gateway: a serving worker (`--workers`), or
    the program it runs (no directories: the report must not carry local paths)."""
    args = cmdline(pid).split()
    if "aogstream.http.workers" in args:
        rest = args[args.index("aogstream.http.workers") + 1:]
        return f"worker #{rest[0]}" if rest else "worker"
    prog = " ".join(os.path.basename(a) for a in args[:3])
    return f"other ({prog[:40]})"


def request_bytes(port: int, body: dict) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode() + raw


async def stream_once(port: int, req: bytes, expect_events: int, timeout: float
                      ) -> StreamResult:
    """One request on a fresh connection; timestamps each read, decodes HTTP/1.1
    (chunked or close-delimited) and splits SSE events on blank lines."""
    res = StreamResult(ok=False)
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(HOST, port)
        except OSError as exc:
            res.error = f"connect: {exc}"
            return res
        async with stream:
            res.start = t0 = perf_counter()
            try:
                await stream.send_all(req)
                await _read_response(stream, t0, res)
            except (trio.BrokenResourceError, OSError, ValueError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
    if scope.cancelled_caught:
        res.error = f"timeout after {timeout:.0f} s"
    if not res.error and res.events != expect_events:
        res.error = f"{res.events} events, expected {expect_events}"
    res.ok = not res.error
    return res


async def _read_response(stream: trio.SocketStream, t0: float, res: StreamResult) -> None:
    raw = bytearray()
    sse = bytearray()
    head_done = chunked = done = False
    need = -1  # bytes of chunk data (+CRLF) still to read; -1 = at a size line
    last = b""
    while not done:
        data = await stream.receive_some(262144)
        now = perf_counter()
        if not data:
            if chunked:
                raise ValueError("connection closed inside a chunked body")
            done = True
        raw += data
        if not head_done:
            i = raw.find(b"\r\n\r\n")
            if i < 0:
                if done:
                    raise ValueError("connection closed before the response head")
                continue
            head = bytes(raw[:i]).lower()
            del raw[:i + 4]
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise ValueError(f"HTTP {status}")
            chunked = b"transfer-encoding: chunked" in head
            head_done = True
        if chunked:
            while True:
                if need < 0:
                    j = raw.find(b"\r\n")
                    if j < 0:
                        break
                    size = int(bytes(raw[:j]).split(b";")[0], 16)
                    del raw[:j + 2]
                    if size == 0:
                        done = True
                        break
                    need = size + 2
                if len(raw) < need:
                    break
                sse += raw[:need - 2]
                del raw[:need]
                need = -1
        else:
            sse += raw
            raw.clear()
        while True:
            k = sse.find(b"\n\n")
            if k < 0:
                break
            event = bytes(sse[:k])
            del sse[:k + 2]
            if event.startswith(b"data:"):
                if not res.events:
                    res.ttft = now - t0
                    res.first_event = event
                res.events += 1
                last = event
    res.total = perf_counter() - t0
    if res.events and b'"finished":true' not in last:
        raise ValueError("the last event is not finished:true")


# ---- rounds ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile q (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def ttft_round(sut: System, p: Params, conc: int, n: int, tag: str) -> dict:
    """n requests on a fixed arrival schedule, one every nominal/conc seconds (open loop:
    by Little's law `conc` streams are in flight on average while the system keeps up)."""
    sut.check_processes()
    interval = p.nominal / conc
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "chunks": p.chunks, "first_delay": p.t0, "gap": p.gap}
    results: list[StreamResult | None] = [None] * n

    async def one(i: int) -> None:
        req = request_bytes(sut.port, {**body, "id": f"{tag}-{i}"})
        results[i] = await stream_once(sut.port, req, p.chunks + 1, p.request_timeout)

    pids = list(sut.roles)
    cpu_before = cpu_by_pid(pids)
    begin = trio.current_time() + 0.05
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await trio.sleep_until(begin + i * interval)
            nursery.start_soon(one, i)
    await trio.sleep(0.1)
    cpu_after = cpu_by_pid(pids)
    cpu_ms = sum(cpu_after[pid] - cpu_before[pid] for pid in pids) * 1000
    done = [r for r in results if r is not None]
    ok = [r for r in done if r.ok]
    ttfts = [r.ttft * 1000 for r in ok]
    span = (max(r.start + r.total for r in ok) - min(r.start for r in ok)) if ok else 0.0
    errors = sorted({r.error for r in done if not r.ok})
    return {
        "system": sut.name, "concurrency": conc, "requests": n, "ok": len(ok),
        "errors": errors[:5],
        "p50": pct(ttfts, 50), "p90": pct(ttfts, 90), "p99": pct(ttfts, 99),
        "duration_p50": pct([r.total * 1000 for r in ok], 50),
        "in_flight": sum(r.total for r in ok) / span if span > 0 else 0.0,
        "cpu_ms_per_stream": cpu_ms / n,
    }


async def cpu_round(sut: System, p: Params, tag: str) -> dict:
    """cpu_streams concurrent instant streams of cpu_chunks chunks; CPU of every process
    of the system from just before the first request to 0.1 s after the last response."""
    sut.check_processes()
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "chunks": p.cpu_chunks, "first_delay": 0, "gap": 0}
    results: list[StreamResult | None] = [None] * p.cpu_streams

    async def one(i: int) -> None:
        req = request_bytes(sut.port, {**body, "id": f"{tag}-{i}"})
        results[i] = await stream_once(sut.port, req, p.cpu_chunks + 1, p.request_timeout)

    pids = list(sut.roles)
    before = cpu_by_pid(pids)
    w0 = perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(p.cpu_streams):
            nursery.start_soon(one, i)
    wall = perf_counter() - w0
    await trio.sleep(0.1)  # let the system finish its per-stream clean-up
    after = cpu_by_pid(pids)
    sut.check_processes()
    done = [r for r in results if r is not None]
    chunks = sum(r.events for r in done)
    by_role: dict[str, float] = {}
    for pid in pids:
        role = sut.roles[pid]
        by_role[role] = by_role.get(role, 0.0) + (after[pid] - before[pid]) * 1000
    total_ms = sum(by_role.values())
    return {
        "system": sut.name, "streams": p.cpu_streams, "ok": sum(r.ok for r in done),
        "errors": sorted({r.error for r in done if not r.ok})[:5],
        "chunks": chunks, "cpu_ms": total_ms, "cpu_ms_by_role": by_role, "wall_s": wall,
        "cpu_ms_per_1k": total_ms / chunks * 1000 if chunks else float("nan"),
        "chunks_per_s": chunks / wall if wall > 0 else float("nan"),
    }


async def check_same_chunks(direct: System, gateway: System, p: Params) -> None:
    """Warm both systems up, and check they answer with the same chunk JSON."""
    firsts = []
    for sut in (direct, gateway):
        body = {"model": "stub", "stream": True, "chunks": 3, "first_delay": 0, "gap": 0,
                "id": "check"}
        res = await stream_once(sut.port, request_bytes(sut.port, body), 4, p.request_timeout)
        if not res.ok:
            raise RuntimeError(f"{sut.name} failed the check request: {res.error}\n"
                               f"{tail(sut.log)}")
        first = json.loads(res.first_event.partition(b":")[2])
        first.pop("created_at", None)
        firsts.append(first)
    if firsts[0] != firsts[1]:
        raise RuntimeError(f"direct and aogstream chunks differ: {firsts[0]} vs {firsts[1]}")
    for sut in (direct, gateway):  # warm-up, discarded
        await ttft_round(sut, p, max(p.concurrencies), min(50, 5 * max(p.concurrencies)),
                         "warm")
        await cpu_round(sut, dataclasses.replace(p, cpu_streams=min(p.cpu_streams, 5)), "warm")


async def run_all(direct: System, gateway: System, p: Params) -> dict:
    """All measurements, under one deadline; SIGTERM stops them cleanly (KeyboardInterrupt
    is raised once trio has unwound, so the caller's clean-up runs as for Ctrl-C)."""
    out: dict = {"ttft": {}, "cpu": []}
    interrupted = False
    with trio.fail_after(p.max_seconds):
        async with trio.open_nursery() as nursery:

            async def watch_sigterm() -> None:
                nonlocal interrupted
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_sigterm)
            await _measure(direct, gateway, p, out)
            nursery.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return out


async def _measure(direct: System, gateway: System, p: Params, out: dict) -> None:
    systems = (direct, gateway)
    await check_same_chunks(direct, gateway, p)
    for conc in p.concurrencies:
        rounds = []
        for r in range(p.ttft_rounds):
            for sut in systems:  # A, B, A, B …
                res = await ttft_round(sut, p, conc, p.requests[conc], f"c{conc}r{r}")
                progress(f"TTFT c={conc} round {r + 1}/{p.ttft_rounds} {sut.name:9} "
                         f"p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms  "
                         f"ok {res['ok']}/{res['requests']}")
                rounds.append(res)
                await trio.sleep(0.2)
        out["ttft"][conc] = rounds
    for r in range(p.cpu_rounds):
        for sut in systems:
            res = await cpu_round(sut, p, f"cpu{r}")
            progress(f"CPU round {r + 1}/{p.cpu_rounds} {sut.name:9} "
                     f"{res['cpu_ms_per_1k']:.1f} ms/1k chunks  "
                     f"{res['chunks_per_s']:.0f} chunks/s  ok {res['ok']}/{res['streams']}")
            out["cpu"].append(res)
            await trio.sleep(0.2)


def run_trio(*args: object) -> dict:
    """trio.run(run_all, …), with a lone exception taken out of its ExceptionGroup."""
    try:
        return trio.run(run_all, *args)
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        todo: list[BaseException] = [group]
        while todo:
            exc = todo.pop()
            if isinstance(exc, BaseExceptionGroup):
                todo.extend(exc.exceptions)
            else:
                leaves.append(exc)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


# ---- report ---------------------------------------------------------------------------


def report(p: Params, data: dict, direct: System, gateway: System, load_start: str,
           load_end: str, started_at: str, elapsed: float, foreign: float) -> str:
    lines = [
        "# relay_stream: a streamed chat answer relayed from a plugin (SSE)",
        "",
        f"- mode **{p.mode}**, {started_at}, {elapsed:.0f} s; {os.cpu_count()} CPUs, "
        f"load average at start **{load_start}**, at end {load_end}; "
        f"Python {platform.python_version()}",
        f"- direct = `benchmarks/stub_sse.py` (trio raw sockets); aogstream = gateway + "
        f"`{PLUGIN_NAME}` plugin over gRPC; client: one trio process, raw sockets, one "
        f"connection per request, all on {HOST}",
        f"- TTFT runs: T0 = {p.t0 * 1000:g} ms, N = {p.chunks}, Δ = {p.gap * 1000:g} ms; "
        f"open loop, one request every (T0 + N·Δ)/c; {p.ttft_rounds} rounds per system "
        f"(direct, aogstream alternating) of "
        + ", ".join(f"{p.requests[c]} requests at c={c}" for c in p.concurrencies),
        f"- CPU runs: instant mode (T0 = Δ = 0), {p.cpu_streams} concurrent streams × "
        f"{p.cpu_chunks} chunks (+1 final), {p.cpu_rounds} rounds per system; CPU = "
        f"utime+stime from /proc/PID/stat ({1000 / CLK_TCK:g} ms ticks)",
        f"- other processes on the machine (not this client, not the systems under test) "
        f"used **{foreign:.2f} CPUs** on average during the measurements",
        "",
        "## Time to first chunk (ms)",
        "",
        "TTFT = request sent → first complete `data:` event. TTFT columns: median over rounds "
        "of each round's percentile. Added = aogstream − direct, per round pair, median over "
        "pairs.",
        "",
        "| c | system | TTFT p50 | TTFT p90 | TTFT p99 | added p50 | added p90 | added p99 "
        "| stream p50 | in flight | CPU ms/stream | ok/total |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conc, rounds in data["ttft"].items():
        by = {s: [r for r in rounds if r["system"] == s] for s in ("direct", "aogstream")}
        added = {q: med([b[q] - a[q] for a, b in zip(by["direct"], by["aogstream"],
                                                     strict=True)])
                 for q in ("p50", "p90", "p99")}
        for s, rs in by.items():
            ok = sum(r["ok"] for r in rs)
            total = sum(r["requests"] for r in rs)
            cells = [str(conc), s] + [fmt(med([r[q] for r in rs])) for q in ("p50", "p90", "p99")]
            if s == "direct":
                cells += ["—", "—", "—"]
            else:
                cells += [f"**{fmt(added['p50'], sign=True)}**", fmt(added["p90"], sign=True),
                          fmt(added["p99"], sign=True)]
            cells += [fmt(med([r["duration_p50"] for r in rs]), 1),
                      fmt(med([r["in_flight"] for r in rs]), 1),
                      fmt(med([r["cpu_ms_per_stream"] for r in rs])), f"{ok}/{total}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "`stream p50`: median duration of a whole stream (nominal "
        f"{p.nominal * 1000:g} ms); `in flight`: measured mean concurrency; `CPU ms/stream`: "
        "CPU of the system's processes during the round / requests (all processes of the "
        "system, see below).",
        "",
        "## CPU per 1,000 relayed chunks (instant mode)",
        "",
        "| system | processes measured | CPU ms / 1k chunks | ratio | added ms / 1k "
        "| chunks/s (wall) | ok/total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    cpu = {s: [r for r in data["cpu"] if r["system"] == s] for s in ("direct", "aogstream")}
    base = med([r["cpu_ms_per_1k"] for r in cpu["direct"]])
    for s, sut in (("direct", direct), ("aogstream", gateway)):
        rs = cpu[s]
        per_k = med([r["cpu_ms_per_1k"] for r in rs])
        roles = sorted(set(sut.roles.values()))
        parts = []
        for role in roles:
            pid = next(pid for pid, rl in sut.roles.items() if rl == role)
            share = med([r["cpu_ms_by_role"].get(role, 0.0) / r["chunks"] * 1000
                         for r in rs if r["chunks"]])
            parts.append(f"{role} {pid}: {fmt(share, 1)}")
        ratio = "1.00×" if s == "direct" else f"**{fmt(per_k / base)}×**"
        added = "—" if s == "direct" else fmt(per_k - base, 1, sign=True)
        lines.append(
            f"| {s} | {'; '.join(parts)} | **{fmt(per_k, 1)}** | {ratio} | {added} | "
            f"{fmt(med([r['chunks_per_s'] for r in rs]), 0)} | "
            f"{sum(r['ok'] for r in rs)}/{sum(r['streams'] for r in rs)} |")
    lines += [
        "",
        "CPU columns: median over rounds; `processes measured` splits the median per process "
        "(ms per 1k chunks). Ratio = aogstream / direct.",
    ]
    if foreign > 0.25 or float(load_start.split()[0]) >= 0.5 * (os.cpu_count() or 1):
        lines[3:3] = ["- **warning: the machine was busy** (load average / other processes "
                      "above): wall-clock figures (TTFT, chunks/s) are inflated and noisy; "
                      "CPU figures suffer less. Rerun on a quiet machine to quote numbers."]
    errs = sorted({e for r in [*data["cpu"], *(x for v in data["ttft"].values() for x in v)]
                   for e in r["errors"]})
    if errs:
        lines += ["", "Errors seen: " + "; ".join(errs[:10])]
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced set (about a minute)")
    ap.add_argument("--concurrency", default="1,10", help="TTFT concurrencies (default 1,10)")
    ap.add_argument("--requests", type=int, default=0,
                    help="TTFT requests per round (default: quick 100, full 200; ≥ 20·c)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="TTFT rounds per system (default: quick 3, full 6)")
    ap.add_argument("--t0-ms", type=float, default=20.0, help="first-token delay T0 (20)")
    ap.add_argument("--chunks", type=int, default=5, help="N chunks per TTFT stream (5)")
    ap.add_argument("--gap-ms", type=float, default=10.0, help="gap Δ between chunks (10)")
    ap.add_argument("--cpu-streams", type=int, default=20, help="concurrent streams (20)")
    ap.add_argument("--cpu-chunks", type=int, default=500, help="chunks per stream (500)")
    ap.add_argument("--cpu-rounds", type=int, default=0,
                    help="CPU rounds per system (default: quick 3, full 7)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per request, s")
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="deadline for all measurements (default: quick 240, full 1200)")
    ap.add_argument("--out", type=Path, default=RESULTS / "relay_stream.md")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = build_params(args)
    args_out, keep = args.out, args.keep_logs
    load_start = loadavg()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    progress(f"relay_stream {p.mode}: load average {load_start}, {os.cpu_count()} CPUs")
    t_begin = time.monotonic()

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="relay_stream-"))
    started: list[System] = []
    failed = True
    try:
        direct = start_direct(tmp, started)
        gateway = start_gateway(tmp, started)
        progress(f"direct stub pid {direct.proc.pid} on :{direct.port}; gateway "
                 + ", ".join(f"{role} {pid}" for pid, role in gateway.roles.items())
                 + f" on :{gateway.port}")
        ours = [os.getpid(), *direct.roles, *gateway.roles]
        own0, busy0, w0 = sum(cpu_by_pid(ours).values()), machine_busy(), time.monotonic()
        try:
            data = run_trio(direct, gateway, p)
        except trio.TooSlowError:
            raise RuntimeError(f"the measurements took over {p.max_seconds:.0f} s "
                               "(--max-seconds); stopped") from None
        own1, busy1, w1 = sum(cpu_by_pid(ours).values()), machine_busy(), time.monotonic()
        foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(w1 - w0, 1e-9)
        load_end = loadavg()
        md = report(p, data, direct, gateway, load_start, load_end, started_at,
                    time.monotonic() - t_begin, foreign)
        print(md)
        args_out.parent.mkdir(parents=True, exist_ok=True)
        args_out.write_text(md)
        raw = {"params": {**p.__dict__, "requests": {str(k): v for k, v in p.requests.items()}},
               "load_start": load_start, "load_end": load_end, "started_at": started_at,
               "foreign_cpus": foreign,
               "processes": {s.name: {str(k): v for k, v in s.roles.items()}
                             for s in (direct, gateway)},
               "ttft_rounds": {str(k): v for k, v in data["ttft"].items()},
               "cpu_rounds": data["cpu"]}
        args_out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
        progress(f"wrote {args_out} and {args_out.with_suffix('.json')}")
        failed = False
        return 0
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for sut in reversed(started):
            try:
                stop(sut)
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                progress(f"could not stop {sut.name}: {exc}")
        if keep or failed:
            progress(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
