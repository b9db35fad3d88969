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
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

PLUGIN_DIR = h.HERE / "stub_plugin"
PLUGIN_NAME = "stub-plugin"
PATH = "/aog/v0.2/services/chat"

# Hard bounds, whatever the command line says.
MAX_REQUESTS = 5_000
MAX_CONCURRENCY = 500
MAX_STREAMS = 500
MAX_CHUNKS = 20_000
MAX_ROUNDS = 50
START_TIMEOUT = 60.0


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



# ---- systems --------------------------------------------------------------------------


def start_direct(tmp: Path) -> h.System:
    """stub_sse.py, the engine alone (it has no health route: wait until it listens)."""
    port = h.free_port()
    log = tmp / "stub_sse.log"
    argv = [sys.executable, str(h.HERE / "stub_sse.py"), "--port", str(port)]
    sut = h.System("direct", h.popen(argv, log), port, log, paths={"sse": PATH})
    try:
        h.wait_listening(sut, "the direct stub server", START_TIMEOUT)
        sut.roles = {sut.proc.pid: "stub server"}
        sut.check()
    except BaseException:
        h.stop(sut)
        raise
    return sut


def start_gateway(tmp: Path) -> h.System:
    """The gateway with the stub plugin, which answers by itself (no stub engine)."""
    sut = h.start_aogstream(tmp, None, plugin_dir=PLUGIN_DIR, plugin_name=PLUGIN_NAME)
    sut.paths = {"sse": PATH}
    return sut


# ---- rounds ---------------------------------------------------------------------------


async def stream_once(sut: h.System, body: dict[str, Any], chunks: int, timeout: float
                      ) -> h.Result:
    """One streamed chat request on a fresh connection; complete when it brought
    `chunks` content events and AOG's final `"finished":true` event."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    return await h.call(sut, "sse", raw, timeout, expect=chunks)


def _cpu_ms_by_role(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: (after[role] - before.get(role, 0.0)) * 1000 for role in after}


async def ttft_round(sut: h.System, p: Params, conc: int, n: int, tag: str
                     ) -> dict[str, Any]:
    """n requests on a fixed arrival schedule, one every nominal/conc seconds (open loop:
    by Little's law `conc` streams are in flight on average while the system keeps up)."""
    sut.check()
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "chunks": p.chunks, "first_delay": p.t0, "gap": p.gap}
    cpu_before = sut.cpu()
    results = await h.open_loop(n, p.nominal / conc, lambda i: stream_once(
        sut, {**body, "id": f"{tag}-{i}"}, p.chunks, p.request_timeout))
    await trio.sleep(0.1)
    cpu_ms = sum(_cpu_ms_by_role(cpu_before, sut.cpu()).values())
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft * 1000 for r in ok]
    span = (max(r.start + r.total for r in ok) - min(r.start for r in ok)) if ok else 0.0
    errors = sorted({r.error for r in results if not r.ok})
    return {
        "system": sut.name, "concurrency": conc, "requests": n, "ok": len(ok),
        "errors": errors[:5],
        "p50": h.pct(ttfts, 50), "p90": h.pct(ttfts, 90), "p99": h.pct(ttfts, 99),
        "duration_p50": h.pct([r.total * 1000 for r in ok], 50),
        "in_flight": sum(r.total for r in ok) / span if span > 0 else 0.0,
        "cpu_ms_per_stream": cpu_ms / n,
    }


async def cpu_round(sut: h.System, p: Params, tag: str) -> dict[str, Any]:
    """cpu_streams concurrent instant streams of cpu_chunks chunks; CPU of every process
    of the system from just before the first request to 0.1 s after the last response."""
    sut.check()
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "chunks": p.cpu_chunks, "first_delay": 0, "gap": 0}
    results: list[h.Result] = []

    async def one(i: int) -> None:
        results.append(await stream_once(sut, {**body, "id": f"{tag}-{i}"}, p.cpu_chunks,
                                         p.request_timeout))

    before = sut.cpu()
    w0 = perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(p.cpu_streams):
            nursery.start_soon(one, i)
    wall = perf_counter() - w0
    await trio.sleep(0.1)  # let the system finish its per-stream clean-up
    by_role = _cpu_ms_by_role(before, sut.cpu())
    sut.check()
    chunks = sum(r.events for r in results)  # content events and the final one
    total_ms = sum(by_role.values())
    return {
        "system": sut.name, "streams": p.cpu_streams, "ok": sum(r.ok for r in results),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "chunks": chunks, "cpu_ms": total_ms, "cpu_ms_by_role": by_role, "wall_s": wall,
        "cpu_ms_per_1k": total_ms / chunks * 1000 if chunks else float("nan"),
        "chunks_per_s": chunks / wall if wall > 0 else float("nan"),
    }


async def check_same_chunks(direct: h.System, gateway: h.System, p: Params) -> None:
    """Warm both systems up, and check they answer with the same chunk JSON."""
    firsts = []
    for sut in (direct, gateway):
        body = {"model": "stub", "stream": True, "chunks": 3, "first_delay": 0, "gap": 0,
                "id": "check"}
        res = await stream_once(sut, body, 3, p.request_timeout)
        if not res.ok:
            raise RuntimeError(f"{sut.name} failed the check request: {res.error}\n"
                               f"{h.tail(sut.log)}")
        first = json.loads(res.first_payload.partition(b":")[2])
        first.pop("created_at", None)
        firsts.append(first)
    if firsts[0] != firsts[1]:
        raise RuntimeError(f"direct and aogstream chunks differ: {firsts[0]} vs {firsts[1]}")
    for sut in (direct, gateway):  # warm-up, discarded
        await ttft_round(sut, p, max(p.concurrencies), min(50, 5 * max(p.concurrencies)),
                         "warm")
        await cpu_round(sut, dataclasses.replace(p, cpu_streams=min(p.cpu_streams, 5)), "warm")


async def measure(direct: h.System, gateway: h.System, p: Params) -> dict[str, Any]:
    """Every measurement, direct and aogstream alternating round by round."""
    out: dict[str, Any] = {"ttft": {}, "cpu": []}
    systems = (direct, gateway)
    await check_same_chunks(direct, gateway, p)
    for conc in p.concurrencies:
        rounds = []
        for r in range(p.ttft_rounds):
            for sut in systems:  # A, B, A, B …
                res = await ttft_round(sut, p, conc, p.requests[conc], f"c{conc}r{r}")
                h.progress(f"TTFT c={conc} round {r + 1}/{p.ttft_rounds} {sut.name:9} "
                           f"p50 {res['p50']:.2f} ms  p99 {res['p99']:.2f} ms  "
                           f"ok {res['ok']}/{res['requests']}")
                rounds.append(res)
                await trio.sleep(0.2)
        out["ttft"][conc] = rounds
    for r in range(p.cpu_rounds):
        for sut in systems:
            res = await cpu_round(sut, p, f"cpu{r}")
            h.progress(f"CPU round {r + 1}/{p.cpu_rounds} {sut.name:9} "
                       f"{res['cpu_ms_per_1k']:.1f} ms/1k chunks  "
                       f"{res['chunks_per_s']:.0f} chunks/s  ok {res['ok']}/{res['streams']}")
            out["cpu"].append(res)
            await trio.sleep(0.2)
    return out


# ---- report ---------------------------------------------------------------------------


def _processes(sut: h.System, rs: list[dict[str, Any]]) -> str:
    """Per-role split of the CPU figure (ms per 1k chunks, median over rounds)."""
    roles = list(sut.roles.values())
    parts = []
    for role in sorted(set(roles)):
        who = (f"{next(pid for pid, rl in sut.roles.items() if rl == role)}"
               if roles.count(role) == 1 else f"×{roles.count(role)}")
        share = h.med([r["cpu_ms_by_role"].get(role, 0.0) / r["chunks"] * 1000
                       for r in rs if r["chunks"]])
        parts.append(f"{role} {who}: {h.fmt(share, 1)}")
    return "; ".join(parts)


def report(bench: h.Bench, p: Params, data: dict[str, Any]) -> str:
    direct, gateway = bench.systems["direct"], bench.systems["aogstream"]
    lines = bench.header("relay_stream: a streamed chat answer relayed from a plugin (SSE)", [
        f"- direct = `benchmarks/stub_sse.py` (trio raw sockets); aogstream = gateway + "
        f"`{PLUGIN_NAME}` plugin over gRPC; one connection per request",
        f"- TTFT runs: T0 = {p.t0 * 1000:g} ms, N = {p.chunks}, Δ = {p.gap * 1000:g} ms; "
        f"open loop, one request every (T0 + N·Δ)/c; {p.ttft_rounds} rounds per system "
        f"(direct, aogstream alternating) of "
        + ", ".join(f"{p.requests[c]} requests at c={c}" for c in p.concurrencies),
        f"- CPU runs: instant mode (T0 = Δ = 0), {p.cpu_streams} concurrent streams × "
        f"{p.cpu_chunks} chunks (+1 final), {p.cpu_rounds} rounds per system; CPU = "
        f"utime+stime from /proc/PID/stat ({1000 / h.CLK_TCK:g} ms ticks)",
    ])
    lines += [
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
        added = {q: h.med([b[q] - a[q] for a, b in zip(by["direct"], by["aogstream"],
                                                       strict=True)])
                 for q in ("p50", "p90", "p99")}
        for s, rs in by.items():
            ok = sum(r["ok"] for r in rs)
            total = sum(r["requests"] for r in rs)
            cells = [str(conc), s] + [h.fmt(h.med([r[q] for r in rs]))
                                      for q in ("p50", "p90", "p99")]
            if s == "direct":
                cells += ["—", "—", "—"]
            else:
                cells += [f"**{h.fmt(added['p50'], sign=True)}**",
                          h.fmt(added["p90"], sign=True), h.fmt(added["p99"], sign=True)]
            cells += [h.fmt(h.med([r["duration_p50"] for r in rs]), 1),
                      h.fmt(h.med([r["in_flight"] for r in rs]), 1),
                      h.fmt(h.med([r["cpu_ms_per_stream"] for r in rs])), f"{ok}/{total}"]
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
    base = h.med([r["cpu_ms_per_1k"] for r in cpu["direct"]])
    for s, sut in (("direct", direct), ("aogstream", gateway)):
        rs = cpu[s]
        per_k = h.med([r["cpu_ms_per_1k"] for r in rs])
        ratio = "1.00×" if s == "direct" else f"**{h.fmt(per_k / base)}×**"
        added = "—" if s == "direct" else h.fmt(per_k - base, 1, sign=True)
        lines.append(
            f"| {s} | {_processes(sut, rs)} | **{h.fmt(per_k, 1)}** | {ratio} | {added} | "
            f"{h.fmt(h.med([r['chunks_per_s'] for r in rs]), 0)} | "
            f"{sum(r['ok'] for r in rs)}/{sum(r['streams'] for r in rs)} |")
    lines += [
        "",
        "CPU columns: median over rounds; `processes measured` splits the median per process "
        "(ms per 1k chunks). Ratio = aogstream / direct.",
    ]
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
    ap.add_argument("--out", type=Path, default=h.RESULTS / "relay_stream.md")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = build_params(args)

    def body() -> int:
        # no stub engine: the direct server and the stub plugin make the chunks themselves
        with h.Bench("relay_stream", args.quick, systems=(), engine=False,
                     keep_logs=args.keep_logs) as bench:
            direct = bench.adopt(start_direct(bench.tmp))
            gateway = bench.adopt(start_gateway(bench.tmp))
            for sut in (direct, gateway):
                h.progress(f"{sut.name} on :{sut.port}: " + ", ".join(
                    f"{role} {pid}" for pid, role in sut.roles.items()))
            data = bench.run(measure, direct, gateway, p, max_seconds=p.max_seconds)
            md = report(bench, p, data)
            print(md)
            raw = {"params": {**p.__dict__,
                              "requests": {str(k): v for k, v in p.requests.items()}},
                   "ttft_rounds": {str(k): v for k, v in data["ttft"].items()},
                   "cpu_rounds": data["cpu"]}
            bench.save(md, raw, None, args.out)
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
