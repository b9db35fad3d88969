"""coldstart: from exec to serving, and the idle footprint.

    .venv/bin/python benchmarks/coldstart.py --quick   # 2 starts per system, ~1.5 minutes
    .venv/bin/python benchmarks/coldstart.py           # 7 starts per system

Each round starts every system from nothing (a fresh data directory, a new process
tree) and polls it every 10 ms from the moment of exec:

- **health**: exec → first `200` on the health endpoint (aogstream `/health`, LiteLLM
  `/health/liveliness`, the stub engine `/health`);
- **first chat**: exec → first successful `POST /v1/chat/completions` (unary, through
  the relay plugin for aogstream, through LiteLLM's OpenAI client for LiteLLM);
- **CPU to first chat**: utime+stime of every process of the system at that moment;
- **idle RSS**: every process of the system 2 s after the first chat (gateway, workers
  and plugin for aogstream).

`direct` is the stub engine alone: the cost of starting a Python process that serves
HTTP, the floor for both gateways. Rounds alternate direct, aogstream, LiteLLM. The
stub engine the gateways relay to is started once, before the rounds. Writes
results/coldstart.md, .json and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

POLL_S = 0.010
IDLE_AFTER_S = 2.0
HEALTH = {"direct": "/health", "aogstream": "/health", "litellm": "/health/liveliness"}


def params(args: argparse.Namespace) -> dict[str, Any]:
    p = {"rounds": args.rounds or (2 if args.quick else 7),
         "timeout": args.start_timeout}
    h.bounded("--rounds", p["rounds"], 1, 50)
    h.bounded("--start-timeout", p["timeout"], 5, 600)
    return p


def http_status(port: int, request: bytes, timeout: float) -> int:
    """One request on a fresh blocking connection; the status (0 if none)."""
    try:
        with socket.create_connection((h.HOST, port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while b"\r\n" not in data:
                more = s.recv(4096)
                if not more:
                    return 0
                data += more
            return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


def argv_for(name: str, tmp: Path, port: int, stub: h.System, workers: int | None
             ) -> tuple[list[str], dict[str, str], Path]:
    """The command line each system is started with — the harness's own (the ones
    start_stub / start_aogstream / start_litellm use), with a fresh data directory per
    start."""
    run = tmp / f"{name}-{time.monotonic_ns()}"
    run.mkdir()
    if name == "direct":
        return h.stub_argv(port), dict(os.environ), run
    if name == "aogstream":
        argv = h.aogstream_argv(port, h.RELAY_PLUGIN_DIR, run / "data", workers)
        return argv, dict(os.environ, **{h.STUB_ENV: f"{h.HOST}:{stub.port}"}), run
    argv = h.litellm_argv(port, run / "litellm.yaml", stub)
    return argv, dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"), run


def role_of(name: str, root: int, pid: int) -> str:
    if pid == root:
        return {"direct": "stub engine", "aogstream": "gateway", "litellm": "litellm"}[name]
    cmd = h.cmdline(pid)
    if "relay-plugin" in cmd:
        return "plugin"
    if "aogstream" in cmd:
        return "worker"
    return "child"


def one_start(name: str, tmp: Path, stub: h.System, p: dict[str, Any],
              workers: int | None) -> dict[str, Any]:
    """Start `name` from nothing, time it, read its footprint, stop it."""
    port = h.free_port()
    argv, env, run = argv_for(name, tmp, port, stub, workers)
    health = (f"GET {HEALTH[name]} HTTP/1.1\r\nHost: {h.HOST}:{port}\r\n"
              "Connection: close\r\n\r\n").encode()
    auth = f"Authorization: Bearer {h.LITELLM_KEY}\r\n" if name == "litellm" else ""
    body = h.chat_body("json", h.model_name(0, 3, 0))
    chat = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {h.HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}"
            "Connection: close\r\n\r\n").encode() + body
    out: dict[str, Any] = {"system": name}
    t0 = time.monotonic()
    proc = h.popen(argv, run / "log.txt", env=env, cwd=run)
    sut = h.System(name, proc, port, run / "log.txt")
    try:
        deadline = t0 + p["timeout"]
        stage, url_req = "health", health
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting; "
                                   f"log:\n{h.tail(run / 'log.txt')}")
            if http_status(port, url_req, 5.0) == 200:
                out[f"{stage}_s"] = time.monotonic() - t0
                if stage == "chat":
                    break
                stage, url_req = "chat", chat
                continue
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"{name}: no {stage} within {p['timeout']:.0f} s; log:\n"
                               f"{h.tail(run / 'log.txt')}")
        pids = h.descendants(proc.pid)
        cpu = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                cpu += h.read_stat(pid)[2]
        out["cpu_s"] = cpu
        time.sleep(IDLE_AFTER_S)
        sut.roles = {pid: role_of(name, proc.pid, pid) for pid in h.descendants(proc.pid)}
        out["rss_kb"] = sut.rss_kb()
        out["rss_total_kb"] = sum(out["rss_kb"].values())
        out["processes"] = len(sut.roles)
    finally:
        h.stop(sut)
    h.progress(f"{name}: health {out['health_s']:.2f} s, first chat {out['chat_s']:.2f} s, "
               f"CPU {out['cpu_s']:.2f} s, idle RSS {out['rss_total_kb'] / 1024:.1f} MB "
               f"({json.dumps({k: round(v / 1024, 1) for k, v in out['rss_kb'].items()})})")
    return out


async def measure(bench: h.Bench, p: dict[str, Any], names: list[str],
                  workers: int | None) -> list[dict[str, Any]]:
    """Blocking on purpose: nothing else runs while a system starts, and the polling
    loop is simplest with plain sockets (trio.run only carries the harness's deadline)."""
    assert bench.stub is not None
    starts = []
    for r in range(p["rounds"]):
        for name in names:
            res = one_start(name, bench.tmp, bench.stub, p, workers)
            res["round"] = r
            starts.append(res)
    return starts


def report(bench: h.Bench, p: dict[str, Any], names: list[str],
           starts: list[dict[str, Any]]) -> str:
    lines = bench.header("coldstart: exec to first answer, and the idle footprint", [
        f"- {p['rounds']} starts per system, alternating {', '.join(names)}; each from a "
        "fresh data directory; polled every 10 ms from exec (a fresh connection per poll)",
        "- direct = the stub engine alone (a Python process serving HTTP: the floor); "
        "aogstream: `server start` with `benchmarks/relay_plugin` (gateway, workers, relay "
        "plugin over gRPC); LiteLLM proxy 1.106.2, one worker, no database",
        "- the figures are medians over the starts",
    ])
    # the Bench ran no long-lived system (each start is its own): say what was started
    lines = [f"- systems started per round: {', '.join(names)}; the stub engine the gateways "
             "relay to runs throughout" if ln.startswith("- systems: ;") else ln
             for ln in lines]
    by = {n: [s for s in starts if s["system"] == n] for n in names}

    def m(n: str, key: str) -> float:
        return h.med(s[key] for s in by[n])

    rows = []
    for n in names:
        roles = sorted({r for s in by[n] for r in s["rss_kb"]})
        split = "; ".join(f"{r} {h.fmt(h.med(s['rss_kb'].get(r, 0) for s in by[n]) / 1024, 1)}"
                          for r in roles)
        rows.append([n, h.fmt(m(n, "health_s")), h.fmt(m(n, "chat_s")),
                     "1.00×" if n == "direct" else h.ratio(m(n, "chat_s"), m("direct", "chat_s")),
                     h.ratio(m(n, "chat_s"), m("litellm", "chat_s"))
                     if "litellm" in by and n != "litellm" else "—",
                     h.fmt(m(n, "cpu_s")), h.fmt(m(n, "rss_total_kb") / 1024, 1),
                     h.ratio(m(n, "rss_total_kb"), m("litellm", "rss_total_kb"))
                     if "litellm" in by and n != "litellm" else "—",
                     split])
    lines += h.md_table(["system", "health s", "first chat s", "chat × direct",
                         "chat × LiteLLM", "CPU s to first chat", "idle RSS MB",
                         "RSS × LiteLLM", "idle RSS by process (MB)"], rows,
                        align="lrrrrrrrl")
    lines += ["", "`first chat`: exec → the first `200` of a unary chat through the system "
              "(aogstream: once the relay plugin process is up and its gRPC handshake "
              "done). `CPU s`: all the system's processes, exec → first chat.", ""]
    return "\n".join(lines)


def plot(names: list[str], starts: list[dict[str, Any]]) -> Any:
    fig, (ax1, ax2) = h.figure(ncols=2)
    for i, n in enumerate(names):
        ss = [s for s in starts if s["system"] == n]
        ax1.scatter([i - 0.1] * len(ss), [s["health_s"] for s in ss], marker="o",
                    color="C0", label="health" if i == 0 else None)
        ax1.scatter([i + 0.1] * len(ss), [s["chat_s"] for s in ss], marker="x",
                    color="C1", label="first chat" if i == 0 else None)
        ax2.bar(i, h.med(s["rss_total_kb"] / 1024 for s in ss), color=f"C{i}")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
    ax1.set_ylabel("seconds from exec")
    ax1.set_yscale("log")
    ax1.set_title("cold start")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("idle RSS, MB (all processes)")
    ax2.set_title("idle footprint")
    return fig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "coldstart")
    ap.add_argument("--rounds", type=int, default=0, help="starts per system (quick 2, full 7)")
    ap.add_argument("--start-timeout", type=float, default=h.START_TIMEOUT,
                    help=f"per start, s ({h.START_TIMEOUT:g}; LiteLLM imports for ~35 s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = params(args)
    names = h.systems_arg(args.systems)
    if "aogstream-ollama" in names:
        raise SystemExit("--systems: coldstart measures direct, aogstream and litellm")

    def body() -> int:
        # only the stub engine (the gateways relay to it); each system is started per round
        with h.Bench("coldstart", args.quick, systems=(), workers=args.workers,
                     keep_logs=args.keep_logs) as bench:
            run_names = [n for n in names if n != "litellm" or not h.litellm_missing()]
            if "litellm" in names and "litellm" not in run_names:
                bench.skipped["litellm"] = h.litellm_missing()
            starts = bench.run(measure, bench, p, run_names, args.workers,
                               max_seconds=args.max_seconds or 3600)
            md = report(bench, p, run_names, starts)
            print(md)
            bench.save(md, {"params": p, "starts": starts}, plot(run_names, starts), args.out)
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
