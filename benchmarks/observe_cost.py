"""observe_cost: what the request log, recent-requests ring and metrics add per request
and per streamed chunk, measured on the wrapper itself.

    .venv/bin/python benchmarks/observe_cost.py            # ~1 min
    .venv/bin/python benchmarks/observe_cost.py --rounds 2 # quicker

`cpu.py --observe` measures the whole gateway with metrics on and off, but a whole
gateway's CPU per request moves by more than the difference on a shared machine. This
runs the serving processes' ASGI wrapper (`aogstream.observe.middleware.Observed`)
around an app that answers at once, in one process per setting (the settings are
process-wide), and reads process time (not wall clock): `bare` (no wrapper), `quiet`
(wrapper and ring; metrics and log off), `metrics` (log off), `on` (as shipped: text log
line, ring, metrics). Per request: an answer of one chunk; per chunk: the difference
between answers of 101 and 1 chunks, over 100. The log goes to /dev/null through the
logging module, as the gateway's goes to its stderr. Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"bare": {}, "quiet": {"AOGSTREAM_METRICS": "off", "AOGSTREAM_REQUEST_LOG": "off"},
         "metrics": {"AOGSTREAM_METRICS": "on", "AOGSTREAM_REQUEST_LOG": "off"},
         "on": {"AOGSTREAM_METRICS": "on", "AOGSTREAM_REQUEST_LOG": "text"}}


def child(mode: str, chunks: int, requests: int) -> float:
    """In a fresh process: µs of process time per request through the wrapper."""
    import logging

    import trio

    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aogstream.observe import run
    from aogstream.observe.middleware import Observed

    observer = run.open_process("primary")
    observer.set_routes(["/aog/v0.2/services/{service}"])

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(chunks):
            await send({"type": "http.response.body", "body": b"data: {}\n\n",
                        "more_body": i < chunks - 1})

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(msg):  # type: ignore[no-untyped-def]
        return None

    wrapped = app if mode == "bare" else Observed(app, observer)
    scope = {"type": "http", "method": "POST", "path": "/aog/v0.2/services/chat",
             "server": ("127.0.0.1", 1), "headers": []}

    async def main() -> float:
        for _ in range(200):
            await wrapped(scope, receive, send)
        began = time.process_time()
        for _ in range(requests):
            await wrapped(scope, receive, send)
        return (time.process_time() - began) / requests * 1e6

    return trio.run(main)


def measure(mode: str, chunks: int, requests: int) -> float:
    folder = tempfile.mkdtemp(prefix="aogstream-observe-cost-")
    env = {**os.environ, **MODES[mode], "AOGSTREAM_RUN_DIR": folder,
           "PROMETHEUS_MULTIPROC_DIR": folder}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(chunks),
                          str(requests)], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    subprocess.run(["rm", "-rf", folder], check=False)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(child(args.child[0], int(args.child[1]), int(args.child[2])))
        return 0
    one: dict[str, list[float]] = {m: [] for m in MODES}
    many: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(max(1, args.rounds)):
        for mode in MODES:
            one[mode].append(measure(mode, 1, args.requests))
            many[mode].append(measure(mode, 101, max(1, args.requests // 10)))
    print(f"load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds, medians\n")
    print("| setting | µs per request (1 chunk) | added to bare | µs per chunk | added to bare |")
    print("|---|---:|---:|---:|---:|")
    base_r = statistics.median(one["bare"])
    base_c = (statistics.median(many["bare"]) - base_r) / 100
    for mode in MODES:
        r = statistics.median(one[mode])
        c = (statistics.median(many[mode]) - r) / 100
        print(f"| {mode} | {r:.1f} | {r - base_r:.1f} | {c:.2f} | {c - base_c:.2f} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
