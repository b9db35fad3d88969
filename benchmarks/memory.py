"""memory: what an open stream costs in memory, whether it all comes back, and whether
1,000 slow streams stay on time.

    .venv/bin/python benchmarks/memory.py --quick    # 100 and 300 streams, 2 cycles
    .venv/bin/python benchmarks/memory.py            # 100 and 1,000 streams

Each system (direct = the stub engine itself, aogstream through its relay plugin,
LiteLLM) is sent N SSE chat streams of 1 token/s (`/v1/chat/completions`, the stub's
T₀ = 0, Δ = 1 s), opened over a few seconds and then held open. Then:

- **memory per open stream** = (RSS of all the system's processes with N streams open
  − RSS just before opening) / N, for N = 100 and N = 1,000 (quick: 300);
- **gap inflation** while held: each gap between two tokens of a stream − 1 s, p50/p99
  over every gap of every stream (target at 1,000 streams: p99 ≤ 25 ms);
- **leak check**: every client closes its connection (no goodbye), the system is left
  to settle, and its RSS is read again; three cycles of the large N (quick: two).
  Target: RSS back within 10 % of the idle RSS before the first cycle, each time.

Systems are interleaved phase by phase (direct, aogstream, LiteLLM, direct, …). The
stub engine's streams last only a few seconds past the hold, and every system settles
until they would all have ended, so a system that does not tell its engine about a
client that left (see cancel.py) is not charged for the engine still streaming.
Writes results/memory.md, .json and .png (RSS per phase, gap CDFs).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

GAP_S = 1.0  # 1 token/s
TARGET_KB = 64.0
TARGET_GAP_P99_MS = 25.0
TARGET_BACK = 0.10  # RSS after closing within 10 % of idle
TARGET_N = 1000
OPEN_RATE = 200.0  # streams opened per second
# stream length beyond opening + hold (first-token wait, margin); quick: 2 s, since every
# phase lasts about as long as its streams
STREAM_EXTRA_S = 10.0
STREAM_EXTRA_QUICK_S = 2.0
SETTLE_S = 1.5  # after the last stream would have ended


def params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    small = args.small or 100
    big = args.big or (300 if quick else 1000)
    p = {
        "small": small, "big": big,
        "cycles": args.cycles or (2 if quick else 3),
        "hold": args.hold or (2.0 if quick else 15.0),
        "stream_extra": STREAM_EXTRA_QUICK_S if quick else STREAM_EXTRA_S,
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (1200 if quick else 3600),
    }
    h.bounded("--small", small, 1, 5000)
    h.bounded("--big", big, 1, 5000)
    h.bounded("--cycles", p["cycles"], 1, 10)
    h.bounded("--hold", p["hold"], 2, 600)
    return p


class Stream:
    """One held-open SSE stream: the arrival time of each content event."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.status = 0
        self.error = ""


class Settled:
    """Counts streams that got their first token or failed; fires when all did."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.event = trio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.n:
            self.event.set()


async def hold_stream(sut: h.System, body: bytes, st: Stream, settled: Settled) -> None:
    """Open one stream and read it until cancelled; the socket is closed on the way out
    (a client that leaves without a goodbye)."""
    req = h.request_bytes(sut, "sse", body)
    try:
        stream = await trio.open_tcp_stream(h.HOST, sut.port)
    except OSError as exc:
        st.error = f"connect: {exc}"
        settled.one()
        return
    try:
        await stream.send_all(req)
        tail = b""
        head = b""
        while True:
            data = await stream.receive_some(h.RECV)
            now = time.monotonic()
            if not data:
                st.error = st.error or (f"the system ended the stream (HTTP {st.status}: "
                                        f"{head[head.find(b'{'):][:100]!r})")
                return
            if not st.status and data.startswith(b"HTTP/1.1 "):
                st.status = int(data[9:12])
            if len(head) < 2048:
                head += data[:2048]
            # count content events; keep 4 bytes so an event split across reads counts
            got = (tail + data).count(b'"tok"') - tail.count(b'"tok"')
            tail = data[-4:]
            if got:
                if not st.times:
                    settled.one()
                st.times.extend([now] * got)
    except (trio.BrokenResourceError, OSError) as exc:
        st.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not st.times:
            settled.one()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def rss(sut: h.System) -> int:
    return sum(sut.rss_kb().values())


async def phase(sut: h.System, engine: h.System, n: int, p: dict[str, Any], label: str
                ) -> dict[str, Any]:
    """Open n streams, hold them, measure, close them all, settle, measure again.
    The engine must live throughout (else every later figure would be about errors)."""
    sut.check()
    engine.check()
    open_s = n / OPEN_RATE
    chunks = math.ceil(open_s + p["hold"] + p["stream_extra"])
    body = h.chat_body("sse", h.model_name(0, chunks, GAP_S * 1000))
    await trio.sleep(0.5)
    idle_roles = sut.rss_kb()
    idle = sum(idle_roles.values())
    streams = [Stream() for _ in range(n)]
    settled = Settled(n)
    rss_open = 0
    open_roles: dict[str, int] = {}
    t_hold0 = t_hold1 = 0.0
    waited_first = 0.0
    t_begin = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i, st in enumerate(streams):
            await trio.sleep_until(t_begin + i / OPEN_RATE)
            nursery.start_soon(hold_stream, sut, body, st, settled)
        t_opened = trio.current_time()
        with trio.move_on_after(p["timeout"]):
            await settled.event.wait()
        waited_first = trio.current_time() - t_opened
        t_hold0 = time.monotonic()
        await trio.sleep(p["hold"])
        t_hold1 = time.monotonic()
        open_roles = sut.rss_kb()
        rss_open = sum(open_roles.values())
        nursery.cancel_scope.cancel()
    closed_at = trio.current_time()
    # settle until every engine stream of this phase would have ended by itself
    await trio.sleep_until(max(closed_at + 3.0, t_begin + open_s + chunks + SETTLE_S))
    after = rss(sut)
    engine.check()
    live = [st for st in streams if st.times]
    gaps = [b - a - GAP_S for st in live for a, b in itertools.pairwise(st.times)
            if t_hold0 <= a and b <= t_hold1]
    errors = sorted({st.error for st in streams if st.error and not st.times})[:5]
    out = {
        "system": sut.name, "n": n, "label": label, "opened": len(live),
        "idle_kb": idle, "open_kb": rss_open, "after_kb": after,
        "kb_per_stream": (rss_open - idle) / max(len(live), 1),
        "kb_per_stream_by_role": {r: (open_roles.get(r, 0) - idle_roles.get(r, 0))
                                  / max(len(live), 1) for r in sorted(open_roles)},
        "gap_p50_ms": h.pct(gaps, 50) * 1000, "gap_p99_ms": h.pct(gaps, 99) * 1000,
        "gap_max_ms": max(gaps, default=float("nan")) * 1000, "gaps": len(gaps),
        "first_wait_s": waited_first, "errors": errors,
        "gap_sample": [round(g * 1000, 2) for g in gaps[:: max(1, len(gaps) // 2000)]],
    }
    h.progress(f"{label} {sut.name}: {len(live)}/{n} open, RSS {idle / 1024:.1f} → "
               f"{rss_open / 1024:.1f} → {after / 1024:.1f} MB "
               f"({out['kb_per_stream']:.1f} KB/stream), gap p99 "
               f"{h.fmt(out['gap_p99_ms'])} ms" + (f"; errors {errors[:2]}" if errors else ""))
    return out


async def measure(bench: h.Bench, p: dict[str, Any]) -> list[dict[str, Any]]:
    h.raise_fd_limit(3 * p["big"] + 512)
    assert bench.stub is not None
    engine = bench.stub
    systems = list(bench.systems.values())
    for sut in systems:  # warm-up: a short stream each
        r = await h.call(sut, "sse", h.chat_body("sse", h.model_name(0, 3, 0)),
                         timeout=p["timeout"], expect=3)
        if not r.ok:
            raise RuntimeError(f"{sut.name} warm-up failed: {r.error}")
    phases = []
    for sut in systems:
        phases.append(await phase(sut, engine, p["small"], p, f"N={p['small']}"))
    for cycle in range(1, p["cycles"] + 1):
        for sut in systems:
            phases.append(await phase(sut, engine, p["big"], p,
                                      f"N={p['big']} cycle {cycle}"))
    return phases


def report(bench: h.Bench, p: dict[str, Any], phases: list[dict[str, Any]]) -> str:
    names = list(bench.systems)
    lines = bench.header("memory: RSS per open stream, leak check, 1 token/s streams", [
        f"- SSE streams of 1 token/s (`/v1/chat/completions`, stub T₀ = 0, Δ = 1 s), "
        f"opened at {OPEN_RATE:g}/s and held {p['hold']:g} s once every stream has its "
        f"first token; N = {p['small']} once, then N = {p['big']} × {p['cycles']} cycles; "
        "phases interleaved across systems",
        "- RSS: every process of the system (direct: the stub engine; aogstream: gateway, "
        "workers and relay plugin; LiteLLM: its processes), from /proc/PID/statm; the "
        "engine behind aogstream and LiteLLM is not counted",
        "- closing: each client closes its TCP connection; RSS is read again once every "
        "engine stream of the phase would have ended by itself (+1.5 s)",
    ])
    by = {s: [x for x in phases if x["system"] == s] for s in names}

    lines += ["## Memory per open stream", ""]
    rows = []
    for n in sorted({p["small"], p["big"]}):
        for s in names:
            ph = [x for x in by[s] if x["n"] == n]
            if not ph:
                continue
            kb = ph[0]["kb_per_stream"]  # the first time this system held n streams
            again = h.med(x["kb_per_stream"] for x in ph[1:])

            def first_kb(name: str, n: int = n) -> float:
                return next((x["kb_per_stream"] for x in by.get(name, []) if x["n"] == n),
                            float("nan"))

            cell = (h.target(kb, TARGET_KB, " KB", digits=1) if s == "aogstream"
                    else h.fmt(kb, 1))
            rows.append([str(n), s, h.fmt(ph[0]["idle_kb"] / 1024, 1),
                         h.fmt(ph[0]["open_kb"] / 1024, 1), cell,
                         "1.00×" if s == "direct" else h.ratio(kb, first_kb("direct")),
                         h.ratio(kb, first_kb("litellm"))
                         if "litellm" in by and s != "litellm" else "—",
                         h.fmt(again, 1), f"{ph[0]['opened']}/{n}"])
    lines += h.md_table(["N", "system", "idle MB", "N open MB", "KB / open stream",
                         "× direct", "× LiteLLM", "KB / stream, later cycles", "opened"],
                        rows, align="rlrrrrrrr")
    split = []
    for s in names:
        ph = [x for x in by[s] if x["n"] == p["big"] and x.get("kb_per_stream_by_role")]
        roles = ph[0]["kb_per_stream_by_role"] if ph else {}
        if len(roles) > 1:  # the first cycle, like the table
            split.append(f"{s}: " + ", ".join(f"{r} {h.fmt(v, 1)}" for r, v in roles.items()))
    lines += ["", "`KB / open stream`: the first time the system held N streams (memory it had "
              "to take); `later cycles`: the median of the next cycles of the same N, when "
              "the allocator reuses what the first cycle freed (n/a for the single small N); "
              "`opened`: streams that got their first token within --request-timeout "
              f"({p['timeout']:g} s; the others are left out of the per-stream figures)."
              + (f" KB per open stream by process at N = {p['big']}: " + "; ".join(split)
                 + "." if split else ""), "",
              f"## Gap inflation while {p['big']} streams are held (ms)", ""]
    rows = []
    for s in names:
        ph = [x for x in by[s] if x["n"] == p["big"]]
        p99 = h.med(x["gap_p99_ms"] for x in ph)
        cell = (h.target(p99, TARGET_GAP_P99_MS, " ms", digits=1)
                if s == "aogstream" and p["big"] >= TARGET_N else h.fmt(p99, 1))
        rows.append([s, h.fmt(h.med(x["gap_p50_ms"] for x in ph), 1), cell,
                     h.fmt(max((x["gap_max_ms"] for x in ph), default=float("nan")), 1),
                     "—" if s == "direct" else h.fmt(
                         p99 - h.med(x["gap_p99_ms"] for x in by["direct"]
                                     if x["n"] == p["big"]), 1, sign=True),
                     str(sum(x["gaps"] for x in ph))])
    lines += h.md_table(["system", "p50", "p99", "max", "p99 − direct", "gaps"], rows,
                        align="lrrrrr")
    lines += ["", "Each gap between two tokens of one stream − 1 s (the stub's Δ), "
              "measured at the client during the hold; p50/p99: median over the cycles. "
              "A negative p50/p99 means tokens arriving in bursts: a system behind its "
              "streams catching up (then its tokens are late, not on time). "
              f"The target (p99 ≤ {TARGET_GAP_P99_MS:g} ms) applies at 1,000 streams"
              + ("" if p["big"] >= TARGET_N else
                 f"; this run held {p['big']}, so it is shown but not judged") + ".",
              "", "## Leak check: RSS after closing every stream", ""]
    rows = []
    for s in names:
        ph = [x for x in by[s] if x["n"] == p["big"]]
        if not ph:
            continue
        base = ph[0]["idle_kb"]
        for x in ph:
            back = x["after_kb"] / base - 1
            rows.append([s, x["label"], h.fmt(x["idle_kb"] / 1024, 1),
                         h.fmt(x["open_kb"] / 1024, 1), h.fmt(x["after_kb"] / 1024, 1),
                         h.target(back * 100, TARGET_BACK * 100, " %", digits=1)
                         if s == "aogstream" else h.fmt(back * 100, 1, sign=True) + " %",
                         h.fmt((x["after_kb"] - x["idle_kb"]) / 1024, 1, sign=True)])
    lines += h.md_table(["system", "phase", "idle before MB", "open MB", "after close MB",
                         "after vs idle of cycle 1", "after − idle before (MB)"], rows)
    lines += ["", "Target: after each cycle, RSS within 10 % of the idle RSS measured "
              "before the first cycle (a steady climb from cycle to cycle is a leak; a "
              "one-off step is the allocator keeping freed pages).", ""]
    errs = sorted({e for x in phases for e in x["errors"]})
    if errs:
        lines += ["Errors seen (streams that never got a token): " + "; ".join(errs[:8]), ""]
    return "\n".join(lines)


def plot(bench: h.Bench, p: dict[str, Any], phases: list[dict[str, Any]]) -> Any:
    fig, (ax1, ax2) = h.figure(ncols=2)
    for s in bench.systems:
        ph = [x for x in phases if x["system"] == s]
        xs, ys = [], []
        for i, x in enumerate(ph):
            xs += [3 * i, 3 * i + 1, 3 * i + 2]
            ys += [x["idle_kb"] / 1024, x["open_kb"] / 1024, x["after_kb"] / 1024]
        ax1.plot(xs, ys, marker="o", markersize=3, label=s)
        big = [g / 1000 for x in ph if x["n"] == p["big"] for g in x["gap_sample"]]
        h.cdf(ax2, big, s)
    ax1.set_xlabel("phase × (idle, open, after close)")
    ax1.set_ylabel("RSS of the system, MB")
    ax1.set_title(f"RSS through N={p['small']}, then N={p['big']} × {p['cycles']}")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("gap − 1 s, ms")
    ax2.set_ylabel("fraction of gaps")
    ax2.set_title(f"gap inflation, {p['big']} streams of 1 token/s")
    ax2.legend(fontsize=8)
    return fig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "memory")
    ap.add_argument("--small", type=int, default=0, help="the small N (100)")
    ap.add_argument("--big", type=int, default=0, help="the large N (quick 300, full 1000)")
    ap.add_argument("--cycles", type=int, default=0, help="cycles of the large N (quick 2, full 3)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="seconds streams are held open (quick 2, full 15)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = params(args)
    systems = h.systems_arg(args.systems)

    return h.run_measured("memory", args, systems, measure, p, report, plot, "phases")


if __name__ == "__main__":
    sys.exit(main())
