"""realtime: the realtime speech socket, 20 ms PCM frames through the gateway.

    .venv/bin/python benchmarks/realtime.py --quick    # 10 and 50 sessions, under a minute
    .venv/bin/python benchmarks/realtime.py            # more sessions and rounds

Each client session opens `/aog/v0.2/services/speech-to-text-ws`, sends AOG's run-task,
then one 640-byte frame (20 ms of PCM16 16 kHz mono) every 20 ms, in real time, then
finish-task. Three systems answer every frame at once with a `result-generated` partial
naming the frame's sequence number (the same bytes from all three):

- direct:    benchmarks/realtime_plugin/direct_ws.py, a trio + wsproto WebSocket
             server (the physical limit: no relay, no ASGI, frames that arrive
             together answered with one write);
- floor:     benchmarks/floor_app.py's WebSocket side, a bare ASGI WebSocket handler on
             hypercorn's trio worker, configured like the gateway's serving process
             (the same process and settings as the HTTP floor ttft.py and cpu.py
             use): what the stack the gateway cannot do without costs per frame
             (one ASGI receive and one send, each its own socket write) before any
             gateway logic;
- aogstream: the real gateway relaying benchmarks/realtime_plugin/realtime-plugin
             (aogstream.sdk) over gRPC, the way it relays a speech engine's plugin.

Rounds alternate direct, floor, aogstream. Per frame the client measures answer time −
send time; "added" is a system's percentile minus direct's in the round run just
before it. CPU per frame is also given against the floor (`CPU × floor`): issue 17
asks aogstream for ≤ 2× direct, and the floor shows how much of that budget hypercorn
and ASGI alone take. At each number of
concurrent sessions it reports p50/p99 latency, the added latency (target: ≤ 1 ms per
frame with 200 sessions), whether the sessions kept up in real time (every frame
answered, p99 under one frame period, 20 ms), CPU per frame, and memory per session
(RSS of all the system's processes with the sessions open − before, / sessions).
Markdown on stdout and in benchmarks/results/realtime.md, raw rounds in
realtime.json, a plot in realtime.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h
from harness import (
    FINISH_TASK,
    REALTIME_PATH,
    WsClient,
    WsError,
    event_name,
    frame_seq,
    run_task,
)

FRAME_S = 0.020  # one frame: 20 ms of audio
FRAME_BYTES = 640  # PCM16, 16 kHz, mono, 20 ms
OPEN_AT_ONCE = 50  # sessions being opened concurrently (handshake + run-task)
BROKEN = (WsError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


# ---- one round: c sessions streaming 20 ms frames in real time --------------------


@dataclass
class Session:
    """One client session's bookkeeping."""

    ws: WsClient
    offset: float  # its place in the 20 ms period, s
    sent: list[float] = field(default_factory=list)  # send time per frame seq
    latency: list[float] = field(default_factory=list)  # s, per answered frame
    answered: int = 0
    out_of_order: int = 0
    finished: bool = False
    error: str = ""


async def _open(port: int, sessions: list[Session | None], i: int, offset: float,
                limit: trio.CapacityLimiter, errors: list[str]) -> None:
    async with limit:
        try:
            ws = await WsClient.connect(port, REALTIME_PATH)
            await ws.send_text(run_task())
            _, msg = await ws.receive_text()
            if event_name(msg) != "task-started":
                raise WsError(f"expected task-started, got {msg[:200]}")
            sessions[i] = Session(ws, offset)
        except (OSError, WsError, trio.BrokenResourceError) as exc:
            errors.append(f"open: {exc}")


async def _read(s: Session) -> None:
    """Pair each partial with its frame's send time, until task-finished."""
    expect = 0
    try:
        while True:
            for t, msg in await s.ws.receive():
                if not isinstance(msg, str):
                    continue
                seq = frame_seq(msg)
                if seq >= 0:
                    if seq != expect:
                        s.out_of_order += 1
                    expect = seq + 1
                    if seq < len(s.sent):
                        s.latency.append(t - s.sent[seq])
                    s.answered += 1
                    continue
                if event_name(msg) == "task-finished":
                    s.finished = True
                    return
                s.error = f"unexpected event: {msg[:200]}"
                return
    except (WsError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        s.error = str(exc)


async def _send_all(sessions: list[Session], frames: int, start: float,
                    lags: list[float], burst: int = 1) -> None:
    """Every session's frames on its schedule: frame k of a session at
    start + offset + k·20 ms. Sessions are grouped by their 1 ms slot so the sender
    wakes at most 20 times per period, whatever the number of sessions. With `burst`
    > 1 a session sends that many frames back to back every burst·20 ms instead (a
    client that writes 100 ms of audio at a time as 20 ms frames)."""
    slots: dict[float, list[Session]] = {}
    for s in sessions:
        slots.setdefault(s.offset, []).append(s)
    order = sorted(slots.items())
    pcm = bytes(FRAME_BYTES)
    for k in range(0, frames, burst):
        for offset, group in order:
            due = start + offset * burst + k * FRAME_S
            now = trio.current_time()
            if due > now:
                await trio.sleep_until(due)
            else:
                lags.append(now - due)
            for s in group:
                for _ in range(min(burst, frames - k)):
                    if s.error:
                        break
                    s.sent.append(time.monotonic())
                    try:
                        await s.ws.send_bytes(pcm)
                    except (trio.BrokenResourceError, trio.ClosedResourceError,
                            OSError) as exc:
                        s.error = f"send: {exc}"
    for s in sessions:
        if not s.error:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await s.ws.send_text(FINISH_TASK)


@dataclass
class RoundResult:
    """What one round of `sessions` concurrent sessions measured on one system."""

    system: str
    sessions: int
    opened: int
    frames_sent: int
    frames_answered: int
    finished: int
    out_of_order: int
    p50: float  # ms
    p90: float
    p99: float
    latency_ms: list[float]
    send_lag_max_ms: float
    cpu_s: float  # the system's processes, streaming phase
    cpu_by_role: dict[str, float]  # the same, per process role
    client_cpu_s: float
    rss_idle_kb: int  # before the sessions opened
    rss_open_kb: int  # sessions open, before audio
    rss_stream_kb: int  # mid-stream
    errors: list[str]


def own_cpu() -> float:
    return h.read_stat(os.getpid())[2]


def rss_total(sut: h.System) -> int:
    return sum(sut.rss_kb().values())


async def run_round(sut: h.System, sessions: int, frames: int, timeout: float,
                    burst: int = 1) -> RoundResult:
    """Open `sessions` sessions, stream `frames` frames on each in real time, finish."""
    sut.check()
    errors: list[str] = []
    rss_idle = rss_total(sut)
    slots: list[Session | None] = [None] * sessions
    limit = trio.CapacityLimiter(OPEN_AT_ONCE)
    # offsets spread the sessions over the period, at 1 ms resolution (sender groups)
    offsets = [round(i * FRAME_S / sessions, 3) for i in range(sessions)]
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for i in range(sessions):
                nursery.start_soon(_open, sut.port, slots, i, offsets[i], limit, errors)
    opened = [s for s in slots if s is not None]
    await trio.sleep(0.2)
    rss_open = rss_total(sut)
    lags: list[float] = []
    rss_stream = 0
    cpu0, own0 = sut.cpu(), own_cpu()
    cpu1: dict[str, float] = dict(cpu0)
    own1 = own0
    try:
        with trio.move_on_after(frames * FRAME_S + timeout) as scope:
            async with trio.open_nursery() as nursery:
                for s in opened:
                    nursery.start_soon(_read, s)

                async def sample_rss() -> None:
                    nonlocal rss_stream
                    await trio.sleep(frames * FRAME_S / 2)
                    rss_stream = rss_total(sut)

                nursery.start_soon(sample_rss)
                await _send_all(opened, frames, trio.current_time() + 0.05, lags, burst)
        if scope.cancelled_caught:
            errors.append(f"round did not finish within {frames * FRAME_S + timeout:.0f} s")
        cpu1, own1 = sut.cpu(), own_cpu()
    finally:
        with trio.CancelScope(shield=True):
            for s in opened:
                await s.ws.aclose()
    for s in opened:
        if s.error:
            errors.append(s.error)
    lat = [x * 1000 for s in opened for x in s.latency]
    return RoundResult(
        system=sut.name, sessions=sessions, opened=len(opened),
        frames_sent=sum(len(s.sent) for s in opened),
        frames_answered=sum(s.answered for s in opened),
        finished=sum(s.finished for s in opened),
        out_of_order=sum(s.out_of_order for s in opened),
        p50=h.pct(lat, 50), p90=h.pct(lat, 90), p99=h.pct(lat, 99), latency_ms=lat,
        send_lag_max_ms=max(lags, default=0.0) * 1000,
        cpu_s=sum(cpu1.values()) - sum(cpu0.values()),
        cpu_by_role={k: cpu1[k] - cpu0[k] for k in cpu0}, client_cpu_s=own1 - own0,
        rss_idle_kb=rss_idle, rss_open_kb=rss_open, rss_stream_kb=rss_stream,
        errors=sorted(set(errors))[:10],
    )


# ---- the run ------------------------------------------------------------------------

TARGET_SESSIONS = 200
TARGET_ADDED_MS = 1.0
SYSTEMS = ("direct", "floor", "aogstream")  # the order rounds run in


def params(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    levels = args.sessions or ("10,50" if quick else "1,10,50,100,200,300")
    p = {
        "sessions": [int(x) for x in levels.split(",") if x.strip()],
        "seconds": args.seconds or (2.0 if quick else 10.0),
        "rounds": args.rounds or (2 if quick else 3),
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (900 if quick else 3600),
    }
    for c in p["sessions"]:
        h.bounded("--sessions", c, 1, 2000)
    h.bounded("--seconds", p["seconds"], 0.2, 600)
    h.bounded("--rounds", p["rounds"], 1, 50)
    p["frames"] = round(p["seconds"] / FRAME_S)
    return p


async def measure(bench: h.Bench, p: dict[str, Any]) -> dict[str, Any]:
    systems = [bench.systems[s] for s in SYSTEMS]
    h.raise_fd_limit(4 * max(p["sessions"]) + 256)
    # warm-up: a session on each (imports, first gRPC stream, caches)
    for sut in systems:
        r = await run_round(sut, 2, 25, p["timeout"])
        if r.errors or r.frames_answered != r.frames_sent:
            raise RuntimeError(f"{sut.name} warm-up failed: {r.errors or 'frames lost'}")
    rounds: list[RoundResult] = []
    for c in p["sessions"]:
        for k in range(p["rounds"]):
            for sut in systems:
                r = await run_round(sut, c, p["frames"], p["timeout"])
                h.progress(f"c={c} round {k + 1}/{p['rounds']} {sut.name}: p50 "
                           f"{h.fmt(r.p50)} p99 {h.fmt(r.p99)} ms, {r.frames_answered}/"
                           f"{r.frames_sent} answered, CPU {r.cpu_s:.2f} s"
                           + (f", errors: {r.errors[:2]}" if r.errors else ""))
                rounds.append(r)
                await trio.sleep(0.3)
    return {"rounds": rounds}


def kept_up(r: RoundResult) -> bool:
    """Real time: every session opened and finished, every frame answered, p99 under one
    frame period (else answers fall further behind the audio)."""
    return (r.opened == r.sessions and r.finished == r.opened and not r.errors
            and r.frames_answered == r.frames_sent and r.p99 <= FRAME_S * 1000)


def summarise(p: dict[str, Any], rounds: list[RoundResult]) -> dict[str, Any]:
    """Per (sessions, system): medians over rounds; added = aogstream − direct per round
    pair (run back to back), median over pairs; floor_added the same for the floor."""
    out: dict[str, Any] = {}
    for c in p["sessions"]:
        by = {s: [r for r in rounds if r.sessions == c and r.system == s]
              for s in SYSTEMS}
        row: dict[str, Any] = {}
        for s, rs in by.items():
            frames = [r.frames_answered for r in rs]
            row[s] = {
                "p50": h.med(r.p50 for r in rs), "p90": h.med(r.p90 for r in rs),
                "p99": h.med(r.p99 for r in rs),
                "kept_up": sum(kept_up(r) for r in rs), "rounds": len(rs),
                "cpu_us_per_frame": h.med(r.cpu_s / f * 1e6 for r, f in zip(rs, frames,
                                                                          strict=True) if f),
                "cpu_us_by_role": {role: h.med(r.cpu_by_role.get(role, 0.0) / f * 1e6
                                               for r, f in zip(rs, frames, strict=True) if f)
                                   for role in sorted({k for r in rs for k in r.cpu_by_role})},
                "client_cpu_share": h.med(r.client_cpu_s / (p["frames"] * FRAME_S)
                                          for r in rs),
                "kb_per_session_open": h.med((r.rss_open_kb - r.rss_idle_kb) / max(r.opened, 1)
                                             for r in rs),
                "kb_per_session_stream": h.med((r.rss_stream_kb - r.rss_idle_kb)
                                               / max(r.opened, 1) for r in rs),
                "answered": sum(frames), "sent": sum(r.frames_sent for r in rs),
                "lag_ms": max((r.send_lag_max_ms for r in rs), default=0.0),
                "errors": sorted({e for r in rs for e in r.errors})[:5],
            }
        for key, s in (("added", "aogstream"), ("floor_added", "floor")):
            pairs = list(zip(by["direct"], by[s], strict=False))
            row[key] = {q: h.med(b_[q] - a_[q] for a_, b_ in
                                 ((vars(a), vars(b)) for a, b in pairs))
                        for q in ("p50", "p90", "p99")}
        out[str(c)] = row
    return out


def report(bench: h.Bench, p: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = bench.header("realtime: 20 ms PCM frames through the speech-to-text-ws socket", [
        f"- each session: run-task, then a {FRAME_BYTES}-byte frame (20 ms of PCM16 16 kHz "
        f"mono) every 20 ms for {p['seconds']:g} s ({p['frames']} frames), then "
        f"finish-task; sessions spread evenly over the 20 ms period; {p['rounds']} rounds "
        "per system and session count, alternating direct, floor, aogstream",
        "- direct: `benchmarks/realtime_plugin/direct_ws.py` (trio + wsproto, answers each "
        "frame at once); floor: `benchmarks/floor_app.py`'s WebSocket side, a bare ASGI "
        "WebSocket handler on hypercorn's trio worker configured like the gateway's serving "
        "process, answering like direct (what hypercorn + ASGI WebSocket handling cost per "
        "frame before any gateway logic); aogstream: the gateway relaying "
        "`benchmarks/realtime_plugin/realtime-plugin` (aogstream.sdk) over gRPC; all three "
        "send the same bytes; the stub engine is not used here",
        "- latency: answer received − frame sent, per frame, at the client (p50/p99: median "
        "over rounds); added = system − direct, per round pair, median over pairs",
    ])
    lines += ["## Per-frame latency and cost", ""]
    rows = []
    for c, row in summary.items():
        for s in SYSTEMS:
            r = row[s]
            if s == "direct":
                added50 = added99 = cpu_xf = "—"
                x50 = cpu_x = "1.00×"
            else:
                added = row["added" if s == "aogstream" else "floor_added"]
                a50 = added["p50"]
                added50 = (h.target(a50, TARGET_ADDED_MS, " ms")
                           if int(c) == TARGET_SESSIONS and s == "aogstream"
                           else h.fmt(a50, 2, sign=True))
                added99 = h.fmt(added["p99"], 2, sign=True)
                x50 = h.ratio(r["p50"], row["direct"]["p50"])
                cpu_x = h.ratio(r["cpu_us_per_frame"], row["direct"]["cpu_us_per_frame"])
                cpu_xf = h.ratio(r["cpu_us_per_frame"], row["floor"]["cpu_us_per_frame"])
            rows.append([c, s, h.fmt(r["p50"]), h.fmt(r["p99"]), added50, added99, x50,
                         f"{r['kept_up']}/{r['rounds']}", h.fmt(r["cpu_us_per_frame"], 0),
                         cpu_x, cpu_xf, h.fmt(r["kb_per_session_open"], 1),
                         h.fmt(r["kb_per_session_stream"], 1),
                         f"{r['answered']}/{r['sent']}", h.fmt(r["lag_ms"], 1)])
    lines += h.md_table(
        ["sessions", "system", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
         "p50 × direct", "real time", "CPU µs/frame", "CPU × direct", "CPU × floor",
         "KB/session open", "KB/session streaming", "answered/sent", "client lag max ms"],
        rows, align="rl" + "r" * 13)
    sustained = {}
    for s in SYSTEMS:
        ok = [int(c) for c, row in summary.items()
              if row[s]["kept_up"] * 2 >= row[s]["rounds"] > 0]
        sustained[s] = max(ok, default=0)
    lines += [
        "",
        "CPU µs per frame by process (median over rounds): " + "; ".join(
            f"{c} sessions: " + ", ".join(
                f"{s} " + " + ".join(f"{role} {h.fmt(v, 0)}"
                                      for role, v in row[s]["cpu_us_by_role"].items())
                for s in SYSTEMS)
            for c, row in summary.items()) + ". The client's own CPU (share of one CPU while "
        "streaming): " + "; ".join(
            f"{c} sessions: " + ", ".join(f"{s} {h.fmt(row[s]['client_cpu_share'])}"
                                          for s in SYSTEMS)
            for c, row in summary.items()) + ".",
        "",
        "`real time`: rounds in which every session opened and finished, every frame was "
        "answered and p99 stayed under one frame period (20 ms). `CPU µs/frame`: CPU of all "
        "the system's processes during the streaming phase / frames answered (each frame is "
        "one message in and one out). `CPU × floor`: the same ÷ the floor's in the same "
        "run, the floor being hypercorn's trio worker and its ASGI WebSocket handling "
        "alone (the floor's own excess over direct is that stack's price: one ASGI receive "
        "and one send per frame, each send its own socket write, where direct answers "
        "frames that arrived together with one write). `KB/session`: (RSS of all the "
        "system's processes with the sessions open, before audio / mid-stream − before "
        "opening) / sessions. "
        "`client lag max`: how late the client's sender was against the schedule at worst "
        "(the client shares the 2 CPUs; a large value means the client, not the system, "
        "fell behind).",
        "",
        "## Sessions sustained in real time",
        "",
    ]
    lines += h.md_table(["system", "largest session count kept up (≥ half the rounds)",
                         "target"], [
        [s, str(sustained[s]), (f"{TARGET_SESSIONS} with ≤ {TARGET_ADDED_MS:g} ms added"
                                if s == "aogstream" else "—")]
        for s in SYSTEMS], align="lrl")
    errs = sorted({e for row in summary.values() for s in SYSTEMS
                   for e in row[s]["errors"]})
    if errs:
        lines += ["", "Errors seen: " + "; ".join(errs[:8])]
    lines.append("")
    return "\n".join(lines)


def plot(p: dict[str, Any], rounds: list[RoundResult], summary: dict[str, Any]) -> Any:
    fig, (ax1, ax2) = h.figure(ncols=2)
    top = max(p["sessions"])
    for i, s in enumerate(SYSTEMS):
        vals = [x / 1000 for r in rounds if r.sessions == top and r.system == s
                for x in r.latency_ms]
        h.cdf(ax1, vals, s)
        cs = [int(c) for c in summary]
        color = f"C{i}"  # one colour per system in both panels
        ax2.plot(cs, [summary[c][s]["p50"] for c in summary], marker="o", color=color,
                 label=f"{s} p50")
        ax2.plot(cs, [summary[c][s]["p99"] for c in summary], marker="x", linestyle="--",
                 color=color, label=f"{s} p99")
    ax1.set_xlabel("per-frame latency, ms")
    ax1.set_ylabel("fraction of frames")
    ax1.set_title(f"{top} concurrent sessions")
    ax1.set_xscale("log")
    ax1.legend()
    ax2.set_xlabel("concurrent sessions")
    ax2.set_ylabel("latency, ms")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.axhline(FRAME_S * 1000, color="grey", linewidth=0.8, linestyle=":")
    ax2.set_title("latency vs sessions (dotted: one frame period)")
    ax2.legend(fontsize=7)
    return fig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "realtime", systems="direct,floor,aogstream")
    ap.add_argument("--sessions", default="",
                    help="concurrent session counts (quick 10,50; full "
                         "1,10,50,100,200,300)")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="audio per session per round, s (quick 2, full 10)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per system (quick 2, full 3)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = params(args)

    def body() -> int:
        # the harness's own systems are not used: the stub engine only (it always starts)
        with h.Bench("realtime", args.quick, systems=(), workers=args.workers,
                     keep_logs=args.keep_logs) as bench:
            assert bench.stub is not None
            bench.adopt(h.start_direct_ws(bench.tmp))
            bench.adopt(h.start_realtime_floor(bench.tmp))
            bench.adopt(h.start_realtime_gateway(bench.tmp, bench.stub,
                                                 workers=args.workers))
            for name, sut in bench.systems.items():
                h.progress(f"{name} on :{sut.port}: " + ", ".join(
                    f"{role} {pid}" for pid, role in sut.roles.items()))
            data = bench.run(measure, bench, p, max_seconds=p["max_seconds"])
            rounds = data["rounds"]
            summary = summarise(p, rounds)
            md = report(bench, p, summary)
            print(md)
            raw_rounds = [{k: v for k, v in vars(r).items() if k != "latency_ms"}
                          for r in rounds]
            bench.save(md, {"params": p, "summary": summary, "rounds": raw_rounds},
                       plot(p, rounds, summary), args.out)
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
