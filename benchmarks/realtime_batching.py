"""realtime_batching: frame packing on the bidi path, on and off, in the same run.

    .venv/bin/python benchmarks/realtime_batching.py            # paced and bursty clients
    .venv/bin/python benchmarks/realtime_batching.py --bursts 1 --rounds 10

The realtime benchmark's sessions (benchmarks/realtime.py: AOG's run-task, 640-byte
PCM frames, the stub plugin answering each at once) against three systems started side
by side: the direct WebSocket server, the gateway as shipped (packing frames that are
already waiting into one gRPC message, `aogstream.rpc.wire`), and the same gateway with
AOGSTREAM_BIDI_BATCH_FRAMES=1 (one frame per message, as before packing). Each round
runs the three back to back, the two gateways in alternating order; the table gives
medians over rounds. `burst` is how many 20 ms frames a client writes at once (1: one
every 20 ms; 5: 100 ms of audio every 100 ms, as frames): packing only ever finds work
when frames wait, so paced clients on an idle gateway should see no difference at all.
Markdown on stdout and in benchmarks/results/realtime_batching.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h
import realtime as rt

SYSTEMS = ("direct", "packed", "unpacked")


async def measure(bench: h.Bench, p: dict[str, Any]) -> list[dict[str, Any]]:
    h.raise_fd_limit(4 * max(p["sessions"]) + 256)
    for name in SYSTEMS:  # warm-up
        await rt.run_round(bench.systems[name], 2, 25, p["timeout"])
    out: list[dict[str, Any]] = []
    for burst in p["bursts"]:
        for c in p["sessions"]:
            for k in range(p["rounds"]):
                order = SYSTEMS if k % 2 == 0 else ("direct", "unpacked", "packed")
                for name in order:
                    load = os.getloadavg()[0]
                    r = await rt.run_round(bench.systems[name], c, p["frames"], p["timeout"],
                                           burst)
                    n = max(r.frames_answered, 1)
                    row = {"system": name, "burst": burst, "sessions": c, "round": k,
                           "load": load, "p50": r.p50, "p99": r.p99,
                           "cpu_us": r.cpu_s / n * 1e6,
                           "roles": {role: v / n * 1e6 for role, v in r.cpu_by_role.items()},
                           "kept_up": rt.kept_up(r), "answered": r.frames_answered,
                           "sent": r.frames_sent, "out_of_order": r.out_of_order,
                           "errors": r.errors[:3]}
                    h.progress(f"burst {burst} c={c} round {k + 1} {name}: load {load:.1f}, "
                               f"p50 {r.p50:.2f} p99 {r.p99:.2f} ms, CPU {row['cpu_us']:.0f} "
                               f"µs/frame, {r.frames_answered}/{r.frames_sent}")
                    out.append(row)
                    await trio.sleep(0.3)
    return out


def report(bench: h.Bench, p: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    med = statistics.median
    lines = bench.header("realtime_batching: bidi frame packing on and off", [
        f"- {p['rounds']} rounds per system and point, {p['frames']} frames per session; "
        "direct, then the two gateways in alternating order",
        "- packed: the gateway as shipped; unpacked: AOGSTREAM_BIDI_BATCH_FRAMES=1",
        "- CPU µs/frame: all of a system's processes over the streaming phase / frames "
        "answered; medians over rounds; load: the 1-minute load average at each round",
    ])
    table = []
    for burst in p["bursts"]:
        for c in p["sessions"]:
            for name in SYSTEMS:
                rs = [r for r in rows if (r["burst"], r["sessions"], r["system"])
                      == (burst, c, name)]
                roles = sorted({k for r in rs for k in r["roles"]})
                table.append([
                    str(burst), str(c), name, h.fmt(med(r["p50"] for r in rs)),
                    h.fmt(med(r["p99"] for r in rs)), h.fmt(med(r["cpu_us"] for r in rs), 0),
                    ", ".join(f"{role} {med(r['roles'].get(role, 0.0) for r in rs):.0f}"
                              for role in roles),
                    f"{sum(r['kept_up'] for r in rs)}/{len(rs)}",
                    f"{sum(r['answered'] for r in rs)}/{sum(r['sent'] for r in rs)}",
                    str(sum(r["out_of_order"] for r in rs)),
                    h.fmt(med(r["load"] for r in rs), 1)])
    lines += h.md_table(["burst", "sessions", "system", "p50 ms", "p99 ms", "CPU µs/frame",
                         "by process", "real time", "answered/sent", "out of order",
                         "load"], table, align="rrl" + "r" * 8)
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="10,50")
    ap.add_argument("--bursts", default="1,5", help="frames per client write, per point")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    p = {"sessions": [int(x) for x in args.sessions.split(",")],
         "bursts": [int(x) for x in args.bursts.split(",")],
         "rounds": int(h.bounded("--rounds", args.rounds, 1, 50)),
         "frames": round(h.bounded("--seconds", args.seconds, 0.2, 600) / rt.FRAME_S),
         "timeout": 30.0}
    for b in p["bursts"]:
        h.bounded("--bursts", b, 1, 50)

    def body() -> int:
        with h.Bench("realtime_batching", False, systems=()) as bench:
            assert bench.stub is not None
            bench.adopt(h.start_direct_ws(bench.tmp))
            bench.adopt(h.start_realtime_gateway(bench.tmp, bench.stub, name="packed"))
            os.environ["AOGSTREAM_BIDI_BATCH_FRAMES"] = "1"
            try:
                bench.adopt(h.start_realtime_gateway(bench.tmp, bench.stub,
                                                     name="unpacked"))
            finally:
                os.environ.pop("AOGSTREAM_BIDI_BATCH_FRAMES", None)
            rows = bench.run(measure, bench, p, max_seconds=3600)
            md = report(bench, p, rows)
            print(md)
            bench.save(md, {"params": p, "rounds": rows}, None,
                       Path(args.out) if args.out else None)
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
