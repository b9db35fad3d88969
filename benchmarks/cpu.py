"""cpu: CPU per 1,000 relayed chunks (instant mode) and CPU per non-stream request.

    .venv/bin/python benchmarks/cpu.py --quick
    .venv/bin/python benchmarks/cpu.py

CPU is the robust figure on a shared machine: utime + stime from /proc/PID/stat of every
process of a system (gateway, its workers and its plugin; LiteLLM and its children),
read just before the first request and just after the last answer. The stub engine's
own CPU is measured too but never counted in a gateway's figure; for `direct` the
system *is* the engine, so its row is the engine's cost and the others' rows are what
relaying adds on top of it.

1. Streams, instant mode (T₀ = Δ = 0): S concurrent streams × K chunks, per protocol
   (SSE on `/v1/chat/completions`, NDJSON on `/api/chat`). Figure: CPU ms per 1,000
   content chunks received by the client. Target (issue 6): aogstream (gateway + plugin)
   ≤ 100 ms per 1,000 chunks.
2. Non-stream JSON requests (`"stream": false`, N = 5 tokens, no delay), closed loop over
   keep-alive connections at concurrency C. Figure: CPU ms per request. Target:
   ≤ 1.5 ms per request.

Rounds alternate direct, floor, aogstream, LiteLLM, …; figures are medians over rounds.
`floor` (benchmarks/floor_app.py) is a bare ASGI app on hypercorn's trio worker answering
like the engine: per request, aogstream is judged against it (target ≤ 2×, issue 18).

The cost of observing (issue 20: request log and Prometheus metrics, on by default):
`--systems aogstream-x1,aogstream-x1-nometrics,aogstream-x1-quiet` runs the one-process
gateway as it ships, with `AOGSTREAM_METRICS=off`, and with the request log off too;
`--observe` is that comparison.
Writes results/cpu.md, .json and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

TARGET_STREAM_MS_PER_1K = 100.0
TARGET_JSON_MS_PER_REQ = 1.5
TARGET_JSON_VS_FLOOR = 2.0  # issue 18: through a process plugin, ≤ 2× the floor
# `--observe`: the gateway as it ships, metrics off, metrics and request log off
OBSERVE_COMPARISON = "direct,aogstream-x1,aogstream-x1-nometrics,aogstream-x1-quiet"


def params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    p = {
        "streams": args.streams or (10 if quick else 20),
        "chunks": args.chunks or (500 if quick else 1000),
        "requests": args.requests or (1000 if quick else 2000),
        "json_concurrency": args.json_concurrency,
        "rounds": args.rounds or (2 if quick else 7),
        "protocols": [x.strip() for x in args.protocols.split(",") if x.strip()],
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (900 if quick else 3600),
    }
    h.bounded("--streams", p["streams"], 1, 1000)
    h.bounded("--chunks", p["chunks"], 1, 100_000)
    h.bounded("--requests", p["requests"], 1, 100_000)
    h.bounded("--json-concurrency", p["json_concurrency"], 1, 500)
    h.bounded("--rounds", p["rounds"], 1, 50)
    for proto in p["protocols"]:
        if proto not in h.PROTOCOLS:
            raise SystemExit(f"--protocols: {proto!r} is not one of {', '.join(h.PROTOCOLS)}")
    return p


def _cpu(bench: h.Bench, sut: h.System) -> tuple[dict[str, float], float]:
    assert bench.stub is not None
    return sut.cpu(), bench.stub.cpu_total()


def _delta(before: tuple[dict[str, float], float], after: tuple[dict[str, float], float]
           ) -> tuple[dict[str, float], float]:
    return {k: after[0][k] - before[0].get(k, 0.0) for k in after[0]}, after[1] - before[1]


async def stream_round(bench: h.Bench, sut: h.System, proto: str, p: dict[str, Any]
                       ) -> dict[str, Any]:
    body = h.chat_body(proto, h.model_name(0, p["chunks"], 0))
    results: list[h.Result] = []

    async def one() -> None:
        results.append(await h.call(sut, proto, body, p["timeout"], expect=p["chunks"]))

    before = _cpu(bench, sut)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(p["streams"]):
            nursery.start_soon(one)
    wall = trio.current_time() - t0
    await trio.sleep(0.1)  # let the last writes' CPU land
    by_role, engine = _delta(before, _cpu(bench, sut))
    sut.check()
    chunks = sum(len(r.content) for r in results)
    total = sum(by_role.values())
    return {"system": sut.name, "proto": proto, "streams": p["streams"],
            "ok": sum(r.ok for r in results),
            "errors": sorted({r.error for r in results if not r.ok})[:5],
            "chunks": chunks, "wall_s": wall, "cpu_ms": total * 1000,
            "cpu_ms_by_role": {k: v * 1000 for k, v in by_role.items()},
            "engine_ms": engine * 1000,
            "ms_per_1k": total * 1e6 / chunks if chunks else float("nan"),
            "engine_ms_per_1k": engine * 1e6 / chunks if chunks else float("nan"),
            "chunks_per_s": chunks / wall if wall > 0 else float("nan")}


async def json_round(bench: h.Bench, sut: h.System, p: dict[str, Any]) -> dict[str, Any]:
    body = h.chat_body("json", h.model_name(0, 5, 0))
    conc = p["json_concurrency"]
    per_worker = -(-p["requests"] // conc)
    results: list[h.Result] = []

    async def worker() -> None:
        async with h.KeepAlive(sut, p["timeout"]) as conn:
            for _ in range(per_worker):
                results.append(await conn.call("json", body))

    before = _cpu(bench, sut)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(conc):
            nursery.start_soon(worker)
    wall = trio.current_time() - t0
    await trio.sleep(0.1)
    by_role, engine = _delta(before, _cpu(bench, sut))
    sut.check()
    n = len(results)
    total = sum(by_role.values())
    return {"system": sut.name, "proto": "json", "requests": n,
            "ok": sum(r.ok for r in results),
            "errors": sorted({r.error for r in results if not r.ok})[:5],
            "wall_s": wall, "cpu_ms": total * 1000,
            "cpu_ms_by_role": {k: v * 1000 for k, v in by_role.items()},
            "engine_ms": engine * 1000,
            "ms_per_req": total * 1000 / n, "engine_ms_per_req": engine * 1000 / n,
            "req_per_s": n / wall if wall > 0 else float("nan"),
            "latency_p50": h.pct([r.total for r in results if r.ok], 50) * 1000,
            "latency_p99": h.pct([r.total for r in results if r.ok], 99) * 1000}


async def measure(bench: h.Bench, p: dict[str, Any]) -> list[dict[str, Any]]:
    systems = list(bench.systems.values())
    warm = dict(p, chunks=min(p["chunks"], 50), requests=min(p["requests"], 50))
    for sut in systems:  # warm-up, discarded
        for proto in p["protocols"]:
            if proto == "json" and sut.supports("json"):
                await json_round(bench, sut, warm)
            elif sut.supports(proto):
                await stream_round(bench, sut, proto, warm)
    rounds: list[dict[str, Any]] = []
    for r in range(p["rounds"]):
        for proto in p["protocols"]:
            for sut in systems:
                if not sut.supports(proto):
                    continue
                if proto == "json":
                    res = await json_round(bench, sut, p)
                    h.progress(f"JSON round {r + 1}/{p['rounds']} {sut.name:16} "
                               f"{h.fmt(res['ms_per_req'])} CPU ms/request, "
                               f"{h.fmt(res['req_per_s'], 0)} req/s, ok {res['ok']}/"
                               f"{res['requests']}")
                else:
                    res = await stream_round(bench, sut, proto, p)
                    h.progress(f"{proto.upper()} round {r + 1}/{p['rounds']} {sut.name:16} "
                               f"{h.fmt(res['ms_per_1k'], 1)} CPU ms/1k chunks, "
                               f"{h.fmt(res['chunks_per_s'], 0)} chunks/s, ok "
                               f"{res['ok']}/{res['streams']}")
                res["round"] = r
                rounds.append(res)
                await trio.sleep(0.2)
    return rounds


def _roles(rs: list[dict[str, Any]], per: str) -> str:
    """Per-role split, median over rounds, in the same unit as the row's figure."""
    roles = sorted({k for r in rs for k in r["cpu_ms_by_role"]})
    parts = []
    for role in roles:
        if per == "1k":
            v = h.med(r["cpu_ms_by_role"].get(role, 0.0) * 1000 / r["chunks"] for r in rs
                      if r["chunks"])
        else:
            v = h.med(r["cpu_ms_by_role"].get(role, 0.0) / r["requests"] for r in rs)
        parts.append(f"{role} {h.fmt(v, 2 if per != '1k' else 1)}")
    return "; ".join(parts)


def report(bench: h.Bench, p: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    lines = bench.header("cpu: CPU per relayed chunk and per request", [
        f"- streams: instant mode (T₀ = Δ = 0), {p['streams']} concurrent × {p['chunks']} "
        "chunks (+ final), fresh connection each; JSON: "
        f"{p['requests']} non-stream requests (5 tokens) over {p['json_concurrency']} "
        "keep-alive connections, closed loop",
        f"- {p['rounds']} rounds per system, alternating; medians over rounds; CPU = "
        f"utime+stime from /proc ({1000 / h.CLK_TCK:g} ms ticks)",
    ])
    names = list(bench.systems)
    for proto in [x for x in p["protocols"] if x != "json"]:
        lines += [f"## {proto.upper()}: CPU per 1,000 relayed chunks", ""]
        missing = [f"{n}: {h.protocol_of(s, proto)}" for n, s in bench.systems.items()
                   if not s.supports(proto)]
        if missing:
            lines += ["Not served: " + "; ".join(missing) + ".", ""]
        by = {n: [r for r in rounds if r["system"] == n and r["proto"] == proto]
              for n in names}
        val = {n: h.med(r["ms_per_1k"] for r in rs) for n, rs in by.items()}
        lit = val.get("litellm", float("nan"))
        rows = []
        for n, rs in by.items():
            if not rs:
                continue
            figure = (h.target(val[n], TARGET_STREAM_MS_PER_1K, digits=1)
                      if n.startswith("aogstream") else f"**{h.fmt(val[n], 1)}**")
            rows.append([h.label(n), _roles(rs, "1k"), figure,
                         "—" if n == "direct" else h.ratio(val[n], val["direct"]),
                         "—" if n in ("litellm", "direct") else h.ratio(val[n], lit),
                         h.fmt(h.med(r["engine_ms_per_1k"] for r in rs), 1),
                         h.fmt(h.med(r["chunks_per_s"] for r in rs), 0),
                         f"{sum(r['ok'] for r in rs)}/{sum(r['streams'] for r in rs)}"])
        lines += h.md_table(["system", "processes (ms / 1k)", "CPU ms / 1k chunks",
                             "vs direct", "vs LiteLLM", "engine ms / 1k", "chunks/s (wall)",
                             "ok/total"], rows)
        lines.append("")
    if "json" in p["protocols"]:
        lines += ["## JSON: CPU per non-stream request", ""]
        by = {n: [r for r in rounds if r["system"] == n and r["proto"] == "json"]
              for n in names}
        val = {n: h.med(r["ms_per_req"] for r in rs) for n, rs in by.items()}
        lit = val.get("litellm", float("nan"))
        floor = val.get("floor", float("nan"))
        rows = []
        for n, rs in by.items():
            if not rs:
                continue
            figure = (h.target(val[n], TARGET_JSON_MS_PER_REQ)
                      if n.startswith("aogstream") else f"**{h.fmt(val[n])}**")
            vs_floor = ("—" if n in ("floor", "direct") or floor != floor else
                        h.target(val[n] / floor, TARGET_JSON_VS_FLOOR, unit="×")
                        if n.startswith("aogstream") else h.ratio(val[n], floor))
            rows.append([h.label(n), _roles(rs, "req"), figure, vs_floor,
                         "—" if n == "direct" else h.ratio(val[n], val["direct"]),
                         "—" if n in ("litellm", "direct") else h.ratio(val[n], lit),
                         h.fmt(h.med(r["engine_ms_per_req"] for r in rs)),
                         h.fmt(h.med(r["req_per_s"] for r in rs), 0),
                         h.fmt(h.med(r["latency_p50"] for r in rs)),
                         f"{sum(r['ok'] for r in rs)}/{sum(r['requests'] for r in rs)}"])
        lines += h.md_table(["system", "processes (ms / req)", "CPU ms / request",
                             "vs floor", "vs direct", "vs LiteLLM", "engine ms / req",
                             "req/s (wall)", "latency p50 ms", "ok/total"], rows)
        lines.append("")
    lines += [
        "The system's figure counts all its processes (gateway, workers, plugin; LiteLLM); "
        "the engine's CPU is shown apart (`engine`) and not included, except for `direct`, "
        "whose only process is the engine. `vs direct`: how many times the engine's own "
        "cost the relay spends. `floor`: a bare ASGI app on hypercorn's trio worker that "
        "answers like the engine (benchmarks/floor_app.py), the required stack's own cost; "
        "`vs floor`: per request, how many times that cost a system spends. Targets: "
        "aogstream ≤ 100 CPU-ms per 1,000 chunks, ≤ 1.5 CPU-ms per non-stream request "
        "(issue 6) and ≤ 2× the floor's (issue 18). Throughput columns are hints at this "
        "load, not ceilings (see throughput.py).",
    ]
    errs = sorted({e for r in rounds for e in r["errors"]})
    if errs:
        lines += ["", "Errors seen: " + "; ".join(errs[:10])]
    return "\n".join(lines) + "\n"


def plot(bench: h.Bench, p: dict[str, Any], rounds: list[dict[str, Any]]) -> Any:
    fig, axes = h.figure(ncols=2, width=5.5)
    names = list(bench.systems)
    streams = [x for x in p["protocols"] if x != "json"]
    ax = axes[0]
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        vals = [h.med(r["ms_per_1k"] for r in rounds if r["system"] == n and r["proto"] == pr)
                for pr in streams]
        ax.bar([j + i * width for j in range(len(streams))],
               [v if v == v else 0 for v in vals], width, label=h.label(n))
    ax.axhline(TARGET_STREAM_MS_PER_1K, color="k", ls="--", lw=1, label="target")
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(streams))],
                  [s.upper() for s in streams])
    ax.set(title="CPU ms per 1,000 chunks (instant)", ylabel="CPU ms")
    ax.legend(fontsize=8)
    ax = axes[1]
    vals = [h.med(r["ms_per_req"] for r in rounds if r["system"] == n and r["proto"] == "json")
            for n in names]
    ax.bar([h.label(x) for x in names], [v if v == v else 0 for v in vals],
           color=[f"C{i}" for i in range(len(names))])
    ax.axhline(TARGET_JSON_MS_PER_REQ, color="k", ls="--", lw=1, label="target")
    ax.set(title="CPU ms per non-stream request", ylabel="CPU ms")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "cpu", systems="")
    ap.add_argument("--protocols", default="sse,ndjson,json", help="sse, ndjson, json")
    ap.add_argument("--streams", type=int, default=0, help="concurrent streams (10 / 20)")
    ap.add_argument("--chunks", type=int, default=0, help="chunks per stream (500 / 1000)")
    ap.add_argument("--requests", type=int, default=0,
                    help="non-stream requests per round (1000 / 2000)")
    ap.add_argument("--json-concurrency", type=int, default=10,
                    help="keep-alive connections for the non-stream requests (10)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per system (2 / 7)")
    ap.add_argument("--observe", action="store_true",
                    help="compare metrics and request log on/off (one serving process)")
    args = ap.parse_args(argv)
    p = params(args)
    default = OBSERVE_COMPARISON if args.observe else \
        h.WORKER_COMPARISON[0 if args.quick else 1]
    systems = h.systems_arg(args.systems or default)

    return h.run_measured("cpu", args, systems, measure, p, report, plot, "rounds")


if __name__ == "__main__":
    sys.exit(main())
