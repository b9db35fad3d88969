"""throughput: non-stream requests/s at a p99 bound, and the chunks/s ceiling.

    .venv/bin/python benchmarks/throughput.py --quick
    .venv/bin/python benchmarks/throughput.py

No `hey` or `wrk` here: the load generator is this script's own trio client (raw
sockets, keep-alive connections, closed loop: each connection sends its next request as
soon as the previous answer is complete). The client shares the machine's CPUs with the
system under test, so `direct`'s figures are partly the client's own limit; the
gateways' ratios to it are what to read.

1. JSON: `POST /v1/chat/completions` with `"stream": false` (5 tokens, no delay), at
   closed-loop concurrencies 1, 2, 4, … for a few seconds each. Reported: the highest
   req/s among steps whose p99 latency stays within the bound (default 50 ms) with no
   error, and the highest req/s at any latency.
2. Chunks/s ceiling: instant-mode streams (T₀ = Δ = 0, K chunks each), closed loop at
   several stream concurrencies; the highest content-chunks/s received, per protocol.

Steps alternate direct, aogstream, LiteLLM at each level. A system whose p99 passed 10×
the bound stops climbing. Writes results/throughput.md, .json and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h


def params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    levels = args.levels or ("1,8,32" if quick else "1,2,4,8,16,32,64,128")
    p = {
        "levels": [int(x) for x in levels.split(",") if x.strip()],
        "stream_levels": [int(x) for x in (args.stream_levels or (
            "1,16" if quick else "1,4,16,64")).split(",") if x.strip()],
        "step_s": args.step_seconds or (1.0 if quick else 8.0),
        "bound_ms": args.p99_bound_ms,
        "chunks": args.chunks or (100 if quick else 1000),
        "protocols": [x.strip() for x in args.protocols.split(",") if x.strip()],
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (900 if quick else 3600),
    }
    for c in p["levels"] + p["stream_levels"]:
        h.bounded("concurrency level", c, 1, 1000)
    h.bounded("--step-seconds", p["step_s"], 0.5, 120)
    h.bounded("--p99-bound-ms", p["bound_ms"], 1, 60_000)
    h.bounded("--chunks", p["chunks"], 1, 100_000)
    for proto in p["protocols"]:
        if proto not in h.PROTOCOLS:
            raise SystemExit(f"--protocols: {proto!r} is not one of {', '.join(h.PROTOCOLS)}")
    return p


async def json_step(sut: h.System, c: int, p: dict[str, Any]) -> dict[str, Any]:
    body = h.chat_body("json", h.model_name(0, 5, 0))
    conns = [h.KeepAlive(sut, p["timeout"]) for _ in range(c)]
    try:
        results, span = await h.closed_loop(c, p["step_s"],
                                            lambda w: conns[w].call("json", body))
    finally:
        for conn in conns:
            await conn.__aexit__()
    sut.check()
    ok = [r for r in results if r.ok]
    lat = [r.total for r in ok]
    return {"system": sut.name, "proto": "json", "c": c, "requests": len(results),
            "ok": len(ok), "errors": sorted({r.error for r in results if not r.ok})[:5],
            "req_per_s": len(ok) / span if span > 0 else float("nan"),
            "p50": h.pct(lat, 50) * 1000, "p99": h.pct(lat, 99) * 1000}


async def stream_step(sut: h.System, proto: str, c: int, p: dict[str, Any]
                      ) -> dict[str, Any]:
    body = h.chat_body(proto, h.model_name(0, p["chunks"], 0))
    results, span = await h.closed_loop(c, p["step_s"], lambda w: h.call(
        sut, proto, body, p["timeout"], expect=p["chunks"]))
    sut.check()
    ok = [r for r in results if r.ok]
    chunks = sum(len(r.content) for r in ok)
    return {"system": sut.name, "proto": proto, "c": c, "streams": len(results),
            "ok": len(ok), "errors": sorted({r.error for r in results if not r.ok})[:5],
            "chunks": chunks, "chunks_per_s": chunks / span if span > 0 else float("nan")}


async def measure(bench: h.Bench, p: dict[str, Any]) -> list[dict[str, Any]]:
    systems = list(bench.systems.values())
    steps: list[dict[str, Any]] = []
    warm = dict(p, step_s=1.0)
    for sut in systems:  # warm-up, discarded
        if sut.supports("json"):
            await json_step(sut, 4, warm)
    if "json" in p["protocols"]:
        stopped: set[str] = set()
        for c in p["levels"]:
            for sut in systems:
                if sut.name in stopped or not sut.supports("json"):
                    continue
                res = await json_step(sut, c, p)
                steps.append(res)
                h.progress(f"JSON c={c:<4} {sut.name:16} {h.fmt(res['req_per_s'], 0)} req/s, "
                           f"p99 {h.fmt(res['p99'], 1)} ms, ok {res['ok']}/{res['requests']}")
                if res["p99"] > 10 * p["bound_ms"] or not res["ok"]:
                    stopped.add(sut.name)
                await trio.sleep(0.2)
    for proto in [x for x in p["protocols"] if x != "json"]:
        for c in p["stream_levels"]:
            for sut in systems:
                if not sut.supports(proto):
                    continue
                res = await stream_step(sut, proto, c, p)
                steps.append(res)
                h.progress(f"{proto.upper()} streams={c:<4} {sut.name:16} "
                           f"{h.fmt(res['chunks_per_s'], 0)} chunks/s, ok "
                           f"{res['ok']}/{res['streams']}")
                await trio.sleep(0.2)
    return steps


def report(bench: h.Bench, p: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    lines = bench.header("throughput: requests/s at a p99 bound, chunks/s ceiling", [
        f"- JSON: closed loop over keep-alive connections at c = "
        f"{', '.join(map(str, p['levels']))}, {p['step_s']:g} s per step; p99 bound "
        f"{p['bound_ms']:g} ms",
        f"- streams: instant mode, {p['chunks']} chunks each, closed loop at "
        f"{', '.join(map(str, p['stream_levels']))} concurrent streams (fresh connection "
        f"per stream), {p['step_s']:g} s per step",
        "- the load generator (this client) shares the 2 CPUs with the system under test",
    ])
    names = list(bench.systems)
    if "json" in p["protocols"]:
        lines += ["## JSON: non-stream requests/s", ""]
        best: dict[str, tuple[float, int, float]] = {}
        top: dict[str, tuple[float, int, float]] = {}
        for n in names:
            rs = [r for r in steps if r["system"] == n and r["proto"] == "json"]
            if not rs:
                continue
            within = [r for r in rs if r["p99"] <= p["bound_ms"] and r["ok"] == r["requests"]]
            pick = max(within, key=lambda r: r["req_per_s"], default=None)
            best[n] = ((pick["req_per_s"], pick["c"], pick["p99"]) if pick
                       else (float("nan"), 0, float("nan")))
            peak = max(rs, key=lambda r: r["req_per_s"], default=None)
            top[n] = ((peak["req_per_s"], peak["c"], peak["p99"]) if peak
                      else (float("nan"), 0, float("nan")))
        rows = []
        for n in best:
            b, t = best[n], top[n]
            rows.append([h.label(n), f"**{h.fmt(b[0], 0)}**" + (f" (c={b[1]}, p99 {h.fmt(b[2], 1)})"
                                                        if b[1] else " (no step within)"),
                         "—" if n == "direct" else h.ratio(b[0], best["direct"][0]),
                         "—" if n in ("direct", "litellm") else
                         h.ratio(b[0], best.get("litellm", (float("nan"),))[0]),
                         f"{h.fmt(t[0], 0)} (c={t[1]}, p99 {h.fmt(t[2], 1)})"])
        lines += h.md_table(["system", f"req/s with p99 ≤ {p['bound_ms']:g} ms", "vs direct",
                             "vs LiteLLM", "max req/s (any latency)"], rows)
        lines += ["", "Every step:", ""]
        rows = [[r["c"], r["system"], h.fmt(r["req_per_s"], 0), h.fmt(r["p50"], 1),
                 h.fmt(r["p99"], 1), f"{r['ok']}/{r['requests']}"]
                for r in steps if r["proto"] == "json"]
        lines += h.md_table(["c", "system", "req/s", "p50 ms", "p99 ms", "ok/total"], rows,
                            align="rlrrrr")
        lines.append("")
    for proto in [x for x in p["protocols"] if x != "json"]:
        lines += [f"## {proto.upper()}: chunks/s ceiling", ""]
        missing = [f"{n}: {h.protocol_of(s, proto)}" for n, s in bench.systems.items()
                   if not s.supports(proto)]
        if missing:
            lines += ["Not served: " + "; ".join(missing) + ".", ""]
        peak: dict[str, tuple[float, int]] = {}
        for n in names:
            rs = [r for r in steps if r["system"] == n and r["proto"] == proto]
            if rs:
                r = max(rs, key=lambda r: r["chunks_per_s"])
                peak[n] = (r["chunks_per_s"], r["c"])
        rows = []
        for n, (v, c) in peak.items():
            per = " / ".join(h.fmt(r["chunks_per_s"], 0) for r in steps
                             if r["system"] == n and r["proto"] == proto)
            rows.append([h.label(n), f"**{h.fmt(v, 0)}** (streams={c})",
                         "—" if n == "direct" else h.ratio(v, peak["direct"][0]),
                         "—" if n in ("direct", "litellm") or "litellm" not in peak
                         else h.ratio(v, peak["litellm"][0]), per])
        lines += h.md_table(["system", "ceiling chunks/s", "vs direct", "vs LiteLLM",
                             "chunks/s at " + ", ".join(map(str, p["stream_levels"]))
                             + " streams"], rows)
        lines.append("")
    errs = sorted({e for r in steps for e in r["errors"]})
    if errs:
        lines += ["Errors seen: " + "; ".join(errs[:10])]
    return "\n".join(lines) + "\n"


def plot(bench: h.Bench, p: dict[str, Any], steps: list[dict[str, Any]]) -> Any:
    fig, axes = h.figure(ncols=2, width=5.5)
    ax = axes[0]
    for n in bench.systems:
        rs = [r for r in steps if r["system"] == n and r["proto"] == "json"]
        if rs:
            ax.plot([r["req_per_s"] for r in rs], [r["p99"] for r in rs], "o-", label=h.label(n))
    ax.axhline(p["bound_ms"], color="k", ls="--", lw=1, label="p99 bound")
    ax.set(title="JSON: p99 latency vs req/s", xlabel="req/s", ylabel="p99 ms", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1]
    for proto in [x for x in p["protocols"] if x != "json"]:
        for n in bench.systems:
            rs = [r for r in steps if r["system"] == n and r["proto"] == proto]
            if rs:
                ax.plot([r["c"] for r in rs], [r["chunks_per_s"] for r in rs], "o-",
                        label=f"{h.label(n)} {proto}")
    ax.set(title="chunks/s (instant streams)", xlabel="concurrent streams",
           ylabel="chunks/s", xscale="log")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
        h.tidy_log(a)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "throughput", systems="")
    ap.add_argument("--protocols", default="json,sse,ndjson", help="json, sse, ndjson")
    ap.add_argument("--levels", default="", help="JSON concurrencies (1,8,32 / 1..128)")
    ap.add_argument("--stream-levels", default="", help="stream concurrencies")
    ap.add_argument("--step-seconds", type=float, default=0.0, help="per step (1 / 8)")
    ap.add_argument("--p99-bound-ms", type=float, default=50.0, help="p99 bound (50)")
    ap.add_argument("--chunks", type=int, default=0, help="chunks per stream (100 / 1000)")
    args = ap.parse_args(argv)
    p = params(args)
    systems = h.systems_arg(args.systems or h.WORKER_COMPARISON[0 if args.quick else 1])

    return h.run_measured("throughput", args, systems, measure, p, report, plot, "steps")


if __name__ == "__main__":
    sys.exit(main())
