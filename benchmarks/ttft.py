"""ttft: time to first chunk added by a gateway, inter-chunk gap inflation, coalescing.

    .venv/bin/python benchmarks/ttft.py --quick   # c = 1, 10, 50; about 1.5 minutes
    .venv/bin/python benchmarks/ttft.py           # full: longer streams, more rounds

For each protocol (SSE and JSON on `/v1/chat/completions`, NDJSON on `/api/chat`) and
each offered concurrency c (quick 1, 10, 50; full 1, 10, 50, 200), every system
answers the same requests from the stub engine (T₀ of silence, N chunks every Δ).
Requests arrive open loop, one every (T₀ + N·Δ)/c whatever the system does, so a slow
system sees more streams in flight, not fewer requests. Rounds alternate direct, floor,
aogstream, aogstream ×1, LiteLLM, direct, … `floor` (benchmarks/floor_app.py) is a bare
ASGI app on hypercorn's trio worker answering like the engine: its added TTFT is what
the required HTTP stack alone adds, the part of aogstream's no gateway logic can remove.

Per round: TTFT percentiles (request written → first complete content event; for JSON,
the complete body), and the gaps between content events minus Δ (gap inflation). Added
TTFT = system's percentile − direct's, per round pair, median over pairs. The
*coalescing check* counts reads that brought two or more content events after a silence
longer than 1.5·Δ — the signature of a relay that buffers. Issue targets (SSE, c = 50,
through a plugin process): added TTFT p50 ≤ 1.5 ms, p99 ≤ 5 ms. Writes
results/ttft.md, .json and .png (TTFT and gap CDFs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

TARGET_C = 50
TARGET_P50_MS = 1.5
TARGET_P99_MS = 5.0


def params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    p = {
        "t0_ms": args.t0_ms if args.t0_ms is not None else 20.0,
        "chunks": args.chunks or (5 if quick else 20),
        "gap_ms": args.gap_ms if args.gap_ms is not None else (15.0 if quick else 50.0),
        "concurrency": [int(c) for c in (args.concurrency or ("1,10,50" if quick else
                                                               "1,10,50,200")).split(",")
                        if c.strip()],
        "protocols": [x.strip() for x in args.protocols.split(",") if x.strip()],
        "rounds": args.rounds or (2 if quick else 4),
        "min_requests": args.requests or (10 if quick else 60),
        "per_c": 1 if quick else 3,  # requests per round ≥ per_c · c
        "warmup": 5 if quick else 30,
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (900 if quick else 5400),
    }
    for c in p["concurrency"]:
        h.bounded("--concurrency", c, 1, 1000)
    for proto in p["protocols"]:
        if proto not in h.PROTOCOLS:
            raise SystemExit(f"--protocols: {proto!r} is not one of {', '.join(h.PROTOCOLS)}")
    h.bounded("--t0-ms", p["t0_ms"], 0, 10_000)
    h.bounded("--gap-ms", p["gap_ms"], 0, 10_000)
    h.bounded("--chunks", p["chunks"], 1, 10_000)
    h.bounded("--rounds", p["rounds"], 1, 50)
    h.bounded("--requests", p["min_requests"], 1, 5000)
    p["nominal_s"] = (p["t0_ms"] + p["chunks"] * p["gap_ms"]) / 1000
    if p["nominal_s"] <= 0:
        raise SystemExit("T0 + N·Δ must be > 0 (arrivals are scheduled by it)")
    return p


def n_requests(p: dict[str, Any], c: int) -> int:
    return min(5000, max(p["min_requests"], p["per_c"] * c))


async def one_round(sut: h.System, proto: str, c: int, n: int, p: dict[str, Any]
                    ) -> dict[str, Any]:
    body = h.chat_body(proto, h.model_name(p["t0_ms"], p["chunks"], p["gap_ms"]))
    expect = None if proto == "json" else p["chunks"]
    silence = 1.5 * p["gap_ms"] / 1000 if p["gap_ms"] else 1.0
    cpu0 = sut.cpu_total()
    results = await h.open_loop(n, p["nominal_s"] / c, lambda i: h.call(
        sut, proto, body, p["timeout"], expect=expect, silence=silence))
    cpu = sut.cpu_total() - cpu0
    sut.check()
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok]
    gaps = [g - p["gap_ms"] / 1000 for r in ok for g in r.gaps()]
    span = (max(r.end for r in ok) - min(r.start for r in ok)) if ok else float("nan")
    return {
        "system": sut.name, "proto": proto, "c": c, "requests": n, "ok": len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        **{f"p{q}": h.pct(ttft, q) * 1000 for q in (50, 90, 99)},
        "gap_p50": h.pct(gaps, 50) * 1000, "gap_p99": h.pct(gaps, 99) * 1000,
        "coalesced": sum(r.coalesced for r in ok),
        "coalesced_streams": sum(1 for r in ok if r.coalesced),
        "in_flight": sum(r.total for r in ok) / span if ok and span > 0 else float("nan"),
        "cpu_ms_per_req": cpu * 1000 / n,
        "ttft_ms": [round(t * 1000, 3) for t in ttft],
        "gaps_ms": [round(g * 1000, 3) for g in gaps[:5000]],
    }


async def measure(bench: h.Bench, p: dict[str, Any]) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    systems = list(bench.systems.values())
    for proto in p["protocols"]:  # warm-up, discarded
        for sut in systems:
            if sut.supports(proto):
                await one_round(sut, proto, 5, p["warmup"], p)
    for c in p["concurrency"]:
        n = n_requests(p, c)
        for proto in p["protocols"]:
            for r in range(p["rounds"]):
                for sut in systems:  # A, B, C, A, B, C …
                    if not sut.supports(proto):
                        continue
                    res = await one_round(sut, proto, c, n, p)
                    res["round"] = r
                    rounds.append(res)
                    h.progress(f"c={c} {proto} round {r + 1}/{p['rounds']} {sut.name:16} "
                               f"TTFT p50 {h.fmt(res['p50'])} p99 {h.fmt(res['p99'])} ms, "
                               f"gap-Δ p99 {h.fmt(res['gap_p99'])} ms, ok "
                               f"{res['ok']}/{res['requests']}")
                    await trio.sleep(0.2)
    return rounds


def added(rounds: list[dict[str, Any]], system: str, proto: str, c: int, q: str) -> float:
    base = sorted((r for r in rounds if r["system"] == "direct" and r["proto"] == proto
                   and r["c"] == c), key=lambda r: r["round"])
    mine = sorted((r for r in rounds if r["system"] == system and r["proto"] == proto
                   and r["c"] == c), key=lambda r: r["round"])
    return h.med([b[q] - a[q] for a, b in zip(base, mine, strict=False)])


def report(bench: h.Bench, p: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    lines = bench.header("ttft: time to first chunk and gap inflation", [
        f"- stub timing: T₀ = {p['t0_ms']:g} ms, N = {p['chunks']}, Δ = {p['gap_ms']:g} ms "
        f"(nominal stream {p['nominal_s'] * 1000:g} ms); open loop, one request every "
        f"nominal/c; {p['rounds']} rounds per system, alternating; requests per round: "
        + ", ".join(f"{n_requests(p, c)} at c={c}" for c in p["concurrency"]),
        "- fresh connection per request (`Connection: close`); TTFT = request written → "
        "first complete content event (JSON: the complete body)",
    ])
    names = list(bench.systems)
    for proto in p["protocols"]:
        lines += [f"## {proto.upper()}", ""]
        missing = [f"{n}: {h.protocol_of(s, proto)}" for n, s in bench.systems.items()
                   if not s.supports(proto)]
        if missing:
            lines += ["Not served: " + "; ".join(missing) + ".", ""]
        rows = []
        for c in p["concurrency"]:
            lit = {q: added(rounds, "litellm", proto, c, q) for q in ("p50", "p99")}
            for name in names:
                rs = [r for r in rounds if r["system"] == name and r["proto"] == proto
                      and r["c"] == c]
                if not rs:
                    continue
                a = {q: added(rounds, name, proto, c, q) for q in ("p50", "p90", "p99")}
                if name == "direct":
                    add_cells = ["—", "—", "—", "—"]
                else:
                    vs = "—" if name == "litellm" or "litellm" not in bench.systems else (
                        h.ratio(a["p50"], lit["p50"]) if lit["p50"] > 0 else "n/a")
                    p50 = h.fmt(a["p50"], sign=True)
                    p99 = h.fmt(a["p99"], sign=True)
                    if name.startswith("aogstream") and c == TARGET_C and proto == "sse":
                        p50 = h.target(a["p50"], TARGET_P50_MS)
                        p99 = h.target(a["p99"], TARGET_P99_MS)
                    add_cells = [p50, h.fmt(a["p90"], sign=True), p99, vs]
                gap = (["n/a", "n/a"] if proto == "json" else
                       [h.fmt(h.med(r["gap_p50"] for r in rs), sign=True),
                        h.fmt(h.med(r["gap_p99"] for r in rs), sign=True)])
                coal = "—" if proto == "json" else (
                    f"{sum(r['coalesced_streams'] for r in rs)}/{sum(r['ok'] for r in rs)}")
                rows.append([c, h.label(name), *(h.fmt(h.med(r[q] for r in rs))
                                        for q in ("p50", "p90", "p99")),
                             *add_cells, *gap, coal,
                             h.fmt(h.med(r["in_flight"] for r in rs), 1),
                             h.fmt(h.med(r["cpu_ms_per_req"] for r in rs)),
                             f"{sum(r['ok'] for r in rs)}/{sum(r['requests'] for r in rs)}"])
        lines += h.md_table(
            ["c", "system", "TTFT p50", "p90", "p99", "added p50", "added p90", "added p99",
             "added p50 vs LiteLLM", "gap−Δ p50", "gap−Δ p99", "coalesced", "in flight",
             "CPU ms/req", "ok/total"], rows, align="rl" + "r" * 13)
        lines.append("")
    lines += [
        "Times in ms. TTFT columns: median over rounds of each round's percentile; "
        "added = system − direct per round pair, median over pairs (a difference of "
        "quantiles). `added p50 vs LiteLLM`: aogstream's added p50 / LiteLLM's. "
        "`gap−Δ`: inter-chunk gap minus the stub's Δ, all gaps of a round. `coalesced`: "
        "streams with at least one read that brought ≥ 2 content events after a silence "
        "> 1.5·Δ (buffering; direct shows the client's own share). `in flight`: measured "
        "mean concurrency (above c = the system, or the machine, is saturated). "
        "`CPU ms/req`: the system's processes (engine excluded; for direct, the engine "
        "itself). `floor`: a bare ASGI app on hypercorn's trio worker answering like the "
        "engine (benchmarks/floor_app.py), what the required stack alone adds. "
        "Targets (issue 6, SSE, c = 50): added p50 ≤ 1.5 ms, p99 ≤ 5 ms.",
    ]
    errs = sorted({e for r in rounds for e in r["errors"]})
    if errs:
        lines += ["", "Errors seen: " + "; ".join(errs[:10])]
    return "\n".join(lines) + "\n"


def plot(bench: h.Bench, p: dict[str, Any], rounds: list[dict[str, Any]]) -> Any:
    c = TARGET_C if TARGET_C in p["concurrency"] else max(p["concurrency"])
    protos = p["protocols"]
    fig, axes = h.figure(ncols=len(protos), nrows=2)
    for col, proto in enumerate(protos):
        ax_t, ax_g = axes[col], axes[len(protos) + col]
        for name in bench.systems:
            rs = [r for r in rounds if r["system"] == name and r["proto"] == proto
                  and r["c"] == c]
            if not rs:
                continue
            h.cdf(ax_t, [t for r in rs for t in r["ttft_ms"]], h.label(name), scale=1)
            if proto != "json":
                h.cdf(ax_g, [g for r in rs for g in r["gaps_ms"]], h.label(name), scale=1)
        ax_t.set(title=f"TTFT, {proto.upper()}, c={c}", xlabel="ms", ylabel="fraction")
        ax_t.set_xscale("log")
        h.tidy_log(ax_t)
        ax_g.set(title=f"gap − Δ, {proto.upper()}, c={c}", xlabel="ms", ylabel="fraction")
        if proto == "json":
            ax_g.text(0.5, 0.5, "JSON: one answer, no gaps", ha="center", va="center",
                      transform=ax_g.transAxes)
            ax_g.set(xticks=[], yticks=[])
        for ax in (ax_t, ax_g):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "ttft", systems="")
    ap.add_argument("--concurrency", default="",
                    help="offered concurrencies (quick 1,10,50; full 1,10,50,200)")
    ap.add_argument("--protocols", default="sse,ndjson,json", help="sse, ndjson, json")
    ap.add_argument("--t0-ms", type=float, default=None, help="T₀ (default 20)")
    ap.add_argument("--chunks", type=int, default=0, help="N (quick 5, full 20)")
    ap.add_argument("--gap-ms", type=float, default=None, help="Δ (quick 15, full 50)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per system (2 / 4)")
    ap.add_argument("--requests", type=int, default=0,
                    help="minimum requests per round (10 / 60; at least c / 3c)")
    args = ap.parse_args(argv)
    p = params(args)
    systems = h.systems_arg(args.systems or h.WORKER_COMPARISON[0 if args.quick else 1])

    return h.run_measured("ttft", args, systems, measure, p, report, plot, "rounds")


if __name__ == "__main__":
    sys.exit(main())
