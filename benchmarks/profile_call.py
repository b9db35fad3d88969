"""profile_call: where a call's CPU goes, per process and per thread, with py-spy profiles.

    .venv/bin/python benchmarks/profile_call.py                 # JSON, 10 s, --workers 1
    .venv/bin/python benchmarks/profile_call.py --proto sse --seconds 15 --workers 2
    .venv/bin/python benchmarks/profile_call.py --no-spy        # CPU split only

Starts the stub engine and the gateway with `relay-plugin` (as every benchmark does),
runs a closed loop of short calls through it (`--proto json`: non-stream requests over
keep-alive connections; `sse`/`ndjson`: 5-chunk streams, a fresh connection each, so
the opening of a call dominates), and meanwhile:

- reads every thread's utime + stime and context switches of the gateway, its workers
  and the plugin from /proc before and after, and prints CPU-ms and switches (a thread
  sleeping or being woken: the thread and process hops) per call per thread: the trio
  thread (the process's main thread), the grpc-aio loop thread of the trio⇄grpc
  bridge, grpc's own `event_engine` threads, the plugin's asyncio thread;
- unless `--no-spy`, runs `py-spy record --gil` (in the bench extra) on each process
  and writes one collapsed-stack file per process, flamegraph-ready
  (`results/profiles/call/<proto>-<role>-<pid>.txt`, not committed), then prints the
  functions with the largest inclusive share of the samples taken in the trio thread
  (`--top`). `--gil` samples only the thread holding the GIL, which approximates CPU on
  a busy machine far better than wall-clock samples (a thread waiting for the GIL
  after a syscall would otherwise look busy).

py-spy needs ptrace rights over the gateway (same user; on some systems
`kernel.yama.ptrace_scope` must be 0, or run as root). The figures are the same
closed-loop CPU as cpu.py's, without its rounds: compare runs only against a same-run
baseline (cpu.py's floor and direct rows).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

CALL_CHUNKS = 5


def thread_cpu(sut: h.System) -> dict[tuple[str, int, str], tuple[float, int, float]]:
    """CPU seconds and context switches so far of every thread of the system:
    (role, tid, thread name) → (s, voluntary + involuntary switches, s in the kernel).
    A switch is a thread going to sleep or being woken: the hops between threads and
    processes; the kernel's share is the syscalls (socket I/O, wake-ups) py-spy does not
    see."""
    out: dict[tuple[str, int, str], tuple[float, int, float]] = {}
    for pid, role in sut.roles.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            switches = sum(int(line.split()[1]) for line in status.splitlines()
                           if "ctxt_switches:" in line)
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            label = ("main (trio)" if role in ("gateway", "worker") else "main") \
                if int(tid) == pid else name
            out[(role, int(tid), label)] = ((int(fields[11]) + int(fields[12])) / h.CLK_TCK,
                                            switches, int(fields[12]) / h.CLK_TCK)
    return out


async def closed_loop(sut: h.System, proto: str, seconds: float, conc: int,
                      timeout: float) -> int:
    body = h.chat_body(proto, h.model_name(0, CALL_CHUNKS, 0))
    done = 0
    end = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done
        if proto == "json":
            async with h.KeepAlive(sut, timeout) as conn:
                while trio.current_time() < end:
                    r = await conn.call("json", body)
                    if not r.ok:
                        raise RuntimeError(f"a call failed: {r.error}")
                    done += 1
        else:
            while trio.current_time() < end:
                r = await h.call(sut, proto, body, timeout, expect=CALL_CHUNKS)
                if not r.ok:
                    raise RuntimeError(f"a call failed: {r.error}")
                done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(conc):
            nursery.start_soon(worker)
    return done


def top_frames(path: Path, must: str, n: int) -> list[tuple[float, str]]:
    """The n frames with the largest inclusive share of the samples whose stack
    contains `must` (py-spy's raw format: `frame;frame;... count`)."""
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = {re.sub(r":\d+\)", ")", f) for f in stack.split(";")}
        if not any(must in f for f in frames):
            continue
        total += int(count)
        for f in frames:
            incl[f] += int(count)
    return [(100 * v / total, k) for k, v in incl.most_common(n)] if total else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proto", default="json", choices=list(h.PROTOCOLS))
    ap.add_argument("--seconds", type=float, default=10.0, help="closed loop length (10)")
    ap.add_argument("--concurrency", type=int, default=4, help="clients in the loop (4)")
    ap.add_argument("--workers", type=int, default=1, help="gateway --workers (1)")
    ap.add_argument("--system", default="aogstream",
                    choices=[s for s in h.ALL_SYSTEMS if s.startswith("aogstream")],
                    help="the gateway system profiled (aogstream; aogstream-native for "
                    "the in-process native executor)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    ap.add_argument("--top", type=int, default=40, help="frames printed per profile (40)")
    ap.add_argument("--on-cpu", action="store_true",
                    help="sample every thread running on a CPU, not only the one holding "
                    "the GIL (time in C and syscalls counts too; idle threads never)")
    ap.add_argument("--no-spy", action="store_true", help="CPU split only, no py-spy")
    ap.add_argument("--out", type=Path, default=h.RESULTS / "profiles" / "call",
                    help="where the collapsed stacks go")
    ap.add_argument("--request-timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    h.bounded("--seconds", args.seconds, 1, 600)
    h.bounded("--concurrency", args.concurrency, 1, 200)
    h.bounded("--workers", args.workers, 1, 64)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
        "py-spy")
    if not args.no_spy and spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]' (or --no-spy)")

    def body() -> int:
        with h.Bench("profile_call", quick=True, systems=("direct", args.system),
                     workers=args.workers) as bench:
            sut = bench.systems[args.system]
            # warm-up: templates load and connections open on the first calls
            trio.run(closed_loop, sut, args.proto, 1.0, args.concurrency,
                     args.request_timeout)
            args.out.mkdir(parents=True, exist_ok=True)
            spies: list[tuple[subprocess.Popen[bytes], Path, str]] = []
            for pid, role in ([] if args.no_spy else sut.roles.items()):
                path = args.out / f"{args.proto}-{role}-{pid}.txt"
                assert spy is not None
                spies.append((subprocess.Popen(
                    [spy, "record", "-p", str(pid), "-d", str(int(args.seconds)),
                     "-r", str(args.rate), "-f", "raw", *([] if args.on_cpu else ["--gil"]),
                     "--nonblocking", "-o", str(path)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE), path, role))
            before, cpu0 = thread_cpu(sut), sut.cpu()
            calls = trio.run(closed_loop, sut, args.proto, args.seconds, args.concurrency,
                             args.request_timeout)
            after, cpu1 = thread_cpu(sut), sut.cpu()
            sut.check()
            print(f"{args.system}: {calls} {args.proto} calls in {args.seconds:g} s, --workers "
                  f"{args.workers}, load average {h.loadavg()}")
            per_role = {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1000 / calls for k in cpu1}
            print("CPU-ms per call: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                  per_role.items())
                  + f"; total {sum(per_role.values()):.3f}")
            rows: list[tuple[float, float, Any, float]] = []
            for key, (sec, sw, sys_s) in after.items():
                sec0, sw0, sys0 = before.get(key, (0.0, 0, 0.0))
                d, hops = (sec - sec0) * 1000 / calls, (sw - sw0) / calls
                if d > 0 or hops >= 0.05:
                    rows.append((d, hops, key, (sys_s - sys0) * 1000 / calls))
            for role in sut.roles.values():
                hops = sum(r[1] for r in rows if r[2][0] == role)
                print(f"  {role}: {hops:.1f} context switches per call, all threads")
            for d, hops, (role, tid, name), ker in sorted(rows, key=lambda r: r[:2],
                                                          reverse=True):
                print(f"  {role:8} {name:16} tid {tid:<8} {d:.3f} ms/call "
                      f"({ker:.3f} in the kernel), {hops:.2f} switches/call")
            for proc, path, role in spies:
                _, err = proc.communicate(timeout=args.seconds + 30)
                if proc.returncode != 0 or not path.exists():
                    print(f"py-spy on the {role} failed: {err.decode(errors='replace')[-300:]}")
                    continue
                must = "unrolled_run" if role in ("gateway", "worker") else ""
                print(f"\n{role}: {path} (inclusive share of GIL-holding samples"
                      f"{' in the trio thread' if must else ''})")
                for share, frame in top_frames(path, must, args.top):
                    print(f"  {share:5.1f}% {frame[:120]}")
            bench.failed = False
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
