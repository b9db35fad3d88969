"""cancel: how soon a client that leaves is noticed behind the gateway.

    .venv/bin/python benchmarks/cancel.py --quick    # 2 repetitions per cell, about 1 minute
    .venv/bin/python benchmarks/cancel.py            # more repetitions

A client sends a request and then closes its TCP connection (no goodbye) in one of
three windows:

- `before headers`: 5 ms after writing the request (the system is still parsing,
  routing, calling the plugin / dialing the engine);
- `first token`: 300 ms after writing it, while the engine holds its first token back
  (T₀ = 30 s; no system has sent response headers yet);
- `mid-stream`: after the third content event of a stream (T₀ = 0, Δ = 20 ms).

for unary JSON and SSE (`/v1/chat/completions`), NDJSON (`/api/chat`) and WebSocket
(the realtime socket). Latency = when the plugin noticed − when the client closed, both
`time.monotonic()` (CLOCK_MONOTONIC, one clock for every process of the machine):

- HTTP: the relay plugin aborts its engine connection when the gateway cancels its
  call, and the stub engine records the peer close (`--close-log`), so the engine's
  record is the plugin's notice plus a loopback hop. For `direct` the engine *is* the
  server the client left; for LiteLLM it shows whether LiteLLM tells its upstream at
  all (a record that never comes: "not propagated", the engine kept working).
- WebSocket: the realtime stub plugin (and the direct WebSocket server) record
  `cancelled` when their session is torn down.

Target: ≤ 20 ms in every mode and window. Writes results/cancel.md, .json, .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

TARGET_MS = 20.0
WINDOWS = ("before headers", "first token", "mid-stream")
MODES = ("json", "sse", "ndjson", "ws")
EARLY_S = 0.005  # "before headers": close this long after the request is written
WAITING_S = 0.300  # "first token": close this long after
HOLD_T0_MS = 30_000  # the engine's first token, for the first two windows
MID_GAP_MS = 20
MID_CHUNKS = 600  # a stream a non-propagating system leaves running ends in 12 s
MID_AFTER = 3  # content events read before leaving mid-stream
FRAME = bytes(640)  # 20 ms of PCM16 16 kHz mono silence


def params(args: argparse.Namespace) -> dict[str, Any]:
    p = {
        "reps": args.reps or (2 if args.quick else 20),
        "wait": args.wait or (1.0 if args.quick else 2.0),
        "modes": [m.strip() for m in args.modes.split(",") if m.strip()],
        "timeout": args.request_timeout,
        "max_seconds": args.max_seconds or (900 if args.quick else 3600),
    }
    h.bounded("--reps", p["reps"], 1, 200)
    h.bounded("--wait", p["wait"], 0.1, 60)
    for m in p["modes"]:
        if m not in MODES:
            raise SystemExit(f"--modes: {m!r} is not one of {', '.join(MODES)}")
    return p


class CloseLog:
    """The records a stub wrote (engine closes or realtime session events), read as
    they grow; `wait` polls for the one matching a key."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.seen: dict[str, dict[str, Any]] = {}
        self.started: set[str] = set()  # realtime sessions that reached the stub
        self.offset = 0

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if self.key == "conn" and rec.get("event") not in ("cancelled", "closed"):
                if rec.get("event") == "start":
                    self.started.add(str(rec.get("conn", "")))
                continue
            self.seen.setdefault(str(rec.get(self.key, "")), rec)

    async def wait(self, key: str, timeout: float) -> dict[str, Any] | None:
        deadline = trio.current_time() + timeout
        while True:
            self._poll()
            if key in self.seen:
                return self.seen[key]
            if trio.current_time() >= deadline:
                return None
            await trio.sleep(0.002)


async def stub_requests(stub: h.System) -> int:
    """The stub's request counter (to tell "never forwarded" from "not propagated");
    -1 if it cannot be read."""
    raw = bytearray()
    with trio.move_on_after(5):
        stream = await trio.open_tcp_stream(h.HOST, stub.port)
        async with stream:
            await stream.send_all(f"GET /stats HTTP/1.1\r\nHost: {h.HOST}\r\n"
                                  "Connection: close\r\n\r\n".encode())
            while data := await stream.receive_some(h.RECV):
                raw += data
    try:
        return int(json.loads(bytes(raw[raw.find(b"\r\n\r\n") + 4:]))["requests"])
    except (ValueError, KeyError):
        return -1


async def http_trial(sut: h.System, stub: h.System, log: CloseLog, proto: str,
                     window: str, wait: float) -> dict[str, Any]:
    """One request left in `window`; the engine's close record for it, if any."""
    tag = uuid.uuid4().hex[:12]
    if window == "mid-stream":
        model = h.model_name(0, MID_CHUNKS, MID_GAP_MS, tag)
    else:
        model = h.model_name(HOLD_T0_MS, 1, 0, tag)
    req = h.request_bytes(sut, proto, h.chat_body(proto, model))
    before = await stub_requests(stub)
    out: dict[str, Any] = {"system": sut.name, "mode": proto, "window": window, "tag": tag}
    stream = await trio.open_tcp_stream(h.HOST, sut.port)
    try:
        await stream.send_all(req)
        if window == "mid-stream":
            raw = bytearray()
            with trio.move_on_after(10) as scope:
                while raw.count(b'"tok"') < MID_AFTER:
                    data = await stream.receive_some(h.RECV)
                    if not data:
                        break
                    raw += data
            got = raw.count(b'"tok"')
            if scope.cancelled_caught or got < MID_AFTER:
                out["error"] = f"the stream gave {got} content events: {bytes(raw[:160])!r}"
        else:
            await trio.sleep(EARLY_S if window == "before headers" else WAITING_S)
    finally:
        closed_at = time.monotonic()
        await trio.aclose_forcefully(stream)
    rec = await log.wait(tag, wait)
    if rec is not None:
        out["ms"] = (float(rec["monotonic"]) - closed_at) * 1000
        out["phase"] = rec.get("phase", "")
    else:
        after = await stub_requests(stub)
        out["outcome"] = ("not propagated" if after > before else "never forwarded")
    return out


async def ws_trial(sut: h.System, log: CloseLog, window: str, wait: float
                   ) -> dict[str, Any]:
    """One realtime session left in `window`; the plugin's (or direct server's) record."""
    out: dict[str, Any] = {"system": sut.name.split()[0], "mode": "ws", "window": window}
    ws = await h.WsClient.connect(sut.port, h.REALTIME_PATH)
    try:
        delay = HOLD_T0_MS / 1000 if window == "first token" else 0.0
        await ws.send_text(h.run_task(first_delay=delay))
        _, msg = await ws.receive_text()
        conn = json.loads(msg)["header"]["task_id"]
        out["tag"] = conn
        if window == "first token":
            await ws.send_bytes(FRAME)
            await trio.sleep(WAITING_S)
        elif window == "mid-stream":
            got = 0
            with trio.move_on_after(10):
                while got < MID_AFTER:
                    await ws.send_bytes(FRAME)
                    _, msg = await ws.receive_text()
                    got += h.frame_seq(msg) >= 0
                    await trio.sleep(0.02)
            if got < MID_AFTER:
                out["error"] = f"only {got} answers in 10 s"
    finally:
        closed_at = time.monotonic()
        await ws.abort()
    rec = await log.wait(out.get("tag", ""), wait)
    if rec is not None:
        out["ms"] = (float(rec["t"]) - closed_at) * 1000
        out["phase"] = f"{rec.get('event')} after {rec.get('frames')} frames"
    else:
        out["outcome"] = ("not noticed" if out.get("tag", "") in log.started
                          else "never reached the stub")
    return out


async def measure(bench: h.Bench, p: dict[str, Any], ws_systems: dict[str, h.System],
                  ws_logs: dict[str, CloseLog]) -> list[dict[str, Any]]:
    assert bench.stub is not None and bench.close_log is not None
    stub = bench.stub
    log = CloseLog(bench.close_log, "id")
    trials: list[dict[str, Any]] = []
    # warm-up: one complete request per system and protocol, one realtime session each
    for sut in bench.systems.values():
        for proto in ("json", "sse", "ndjson"):
            if sut.supports(proto) and proto in p["modes"]:
                r = await h.call(sut, proto, h.chat_body(proto, h.model_name(0, 3, 0)),
                                 timeout=p["timeout"], expect=3)
                if not r.ok:
                    raise RuntimeError(f"{sut.name} {proto} warm-up failed: {r.error}")
    for rep in range(p["reps"]):
        for proto in p["modes"]:
            for window in WINDOWS:
                if proto == "json" and window == "mid-stream":
                    continue
                if proto == "ws":
                    for name, sut in ws_systems.items():
                        t = await ws_trial(sut, ws_logs[name], window, p["wait"])
                        trials.append(t)
                    continue
                for sut in bench.systems.values():
                    if not sut.supports(proto):
                        continue
                    sut.check()
                    t = await http_trial(sut, stub, log, proto, window, p["wait"])
                    trials.append(t)
        done = [t for t in trials if "ms" in t]
        h.progress(f"rep {rep + 1}/{p['reps']}: {len(trials)} trials, {len(done)} noticed, "
                   f"median {h.fmt(h.med(t['ms'] for t in done))} ms")
    return trials


def summarise(trials: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        for window in WINDOWS:
            cell: dict[str, Any] = {}
            for s in systems:
                ts = [t for t in trials if t["mode"] == mode and t["window"] == window
                      and t["system"] == s]
                if not ts:
                    continue
                ms = [t["ms"] for t in ts if "ms" in t]
                outcomes: dict[str, int] = {}
                for t in ts:
                    if "ms" not in t:
                        outcomes[t.get("outcome", "?")] = outcomes.get(t.get("outcome", "?"),
                                                                       0) + 1
                cell[s] = {"n": len(ts), "noticed": len(ms), "p50": h.med(ms),
                           "max": max(ms, default=float("nan")), "outcomes": outcomes,
                           "errors": sorted({t["error"] for t in ts if "error" in t})[:3]}
            if cell:
                out[f"{mode}|{window}"] = cell
    return out


def vs_litellm(s: str, c: dict[str, Any], cell: dict[str, Any], has_litellm: bool) -> str:
    """The × LiteLLM cell; LiteLLM never telling its engine is said as such."""
    if s == "litellm" or not has_litellm or "litellm" not in cell:
        return "—"
    lt = cell["litellm"]
    if not lt["noticed"] and c["noticed"]:
        return "LiteLLM never"
    return h.ratio(c["p50"], lt["p50"])


def report(bench: h.Bench, p: dict[str, Any], summary: dict[str, Any],
           systems: list[str]) -> str:
    lines = bench.header("cancel: how soon a client that leaves is noticed", [
        f"- {p['reps']} repetitions per mode, window and system, interleaved; the client "
        "closes its TCP connection (no WebSocket close frame either)",
        f"- windows: `before headers` = {EARLY_S * 1000:g} ms after the request is "
        f"written; `first token` = {WAITING_S * 1000:g} ms after, the engine holding its "
        f"first token (T₀ = {HOLD_T0_MS / 1000:g} s); `mid-stream` = after "
        f"{MID_AFTER} content events (Δ = {MID_GAP_MS} ms). WebSocket: the realtime "
        "socket (`before headers` = right after task-started; `first token` = one frame "
        "sent, the stub holding its answer; `mid-stream` = after 3 answers, frames every "
        "20 ms)",
        "- noticed: HTTP — the stub engine's peer-close record for the request (the relay "
        "plugin aborts its engine connection when its call is cancelled; for direct the "
        "engine is the server the client left); WebSocket — the realtime stub plugin's "
        "(direct: the server's) `cancelled` record. Times are `time.monotonic()` in every "
        "process",
        f"- waited up to {p['wait']:g} s for each record; `not propagated` = the engine got "
        "the request and was never told (it kept generating); `never forwarded` = the "
        "engine never got it (nothing to cancel); WebSocket: `never reached the stub` = the "
        "session was gone before the plugin's session opened",
    ])
    lines += ["## Client close → noticed behind the system (ms)", ""]
    has_litellm = "litellm" in systems
    rows = []
    for key, cell in summary.items():
        mode, window = key.split("|")
        for s in systems:
            if s not in cell:
                continue
            c = cell[s]
            d = cell.get("direct", {}).get("p50", float("nan"))
            notes = ", ".join(f"{v} {k}" for k, v in c["outcomes"].items())
            if c["errors"]:
                notes = (notes + "; " if notes else "") + "; ".join(c["errors"])
            p50 = (h.target(c["p50"], TARGET_MS, " ms", digits=1) if s == "aogstream"
                   else h.fmt(c["p50"], 1))
            rows.append([mode, window, s, p50, h.fmt(c["max"], 1),
                         f"{c['noticed']}/{c['n']}",
                         "1.00×" if s == "direct" else h.ratio(c["p50"], d),
                         vs_litellm(s, c, cell, has_litellm),
                         notes or ""])
    lines += h.md_table(["mode", "window", "system", "p50", "max", "noticed", "× direct",
                         "× LiteLLM", "not noticed / errors"], rows, align="lllrrrrrl")
    lines += [
        "",
        "`p50`/`max`: over the repetitions that were noticed; the target (≤ "
        f"{TARGET_MS:g} ms, every mode and window) is judged on p50, `max` shows the tail. "
        "LiteLLM has no NDJSON door and no realtime socket (no row).",
        "",
    ]
    return "\n".join(lines)


def plot(trials: list[dict[str, Any]], systems: list[str], wait: float) -> Any:
    fig, (ax,) = h.figure(ncols=1, width=11, height=4.2)
    cells = [(m, w) for m in MODES for w in WINDOWS
             if any(t["mode"] == m and t["window"] == w for t in trials)]
    width = 0.8 / max(len(systems), 1)
    for j, s in enumerate(systems):
        xs, ys, xm, ym = [], [], [], []
        for i, (m, w) in enumerate(cells):
            x = i + (j - (len(systems) - 1) / 2) * width
            for t in trials:
                if t["mode"] != m or t["window"] != w or t["system"] != s:
                    continue
                if "ms" in t:
                    xs.append(x)
                    ys.append(max(t["ms"], 0.01))
                elif t.get("outcome") in ("not propagated", "not noticed"):
                    xm.append(x)
                    ym.append(wait * 1000)
        ax.scatter(xs, ys, s=12, label=s, alpha=0.7, color=f"C{j}")
        if xm:
            ax.scatter(xm, ym, s=30, marker="x", color=f"C{j}",
                       label=f"{s}: not noticed within {wait:g} s")
    ax.axhline(TARGET_MS, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{m}\n{w}" for m, w in cells], fontsize=7)
    ax.set_ylabel("client close → noticed, ms (log)")
    ax.set_title("cancellation latency per mode and window (dotted: 20 ms target)")
    ax.legend(fontsize=8)
    return fig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    h.common_args(ap, "cancel")
    ap.add_argument("--reps", type=int, default=0,
                    help="repetitions per mode, window and system (quick 2, full 20)")
    ap.add_argument("--wait", type=float, default=0.0,
                    help="how long to wait for the notice of one close, s (quick 1, full 2)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, from {', '.join(MODES)}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = params(args)
    systems = h.systems_arg(args.systems)

    def body() -> int:
        with h.Bench("cancel", args.quick, systems, workers=args.workers, close_log=True,
                     keep_logs=args.keep_logs) as bench:
            assert bench.stub is not None
            ws_systems: dict[str, h.System] = {}
            ws_logs: dict[str, CloseLog] = {}
            if "ws" in p["modes"]:
                for name, start in (
                    ("direct", lambda ev: h.start_direct_ws(bench.tmp, ev, "direct ws")),
                    ("aogstream", lambda ev: h.start_realtime_gateway(
                        bench.tmp, bench.stub, ev, workers=args.workers,
                        name="aogstream ws")),
                ):
                    if name not in systems:
                        continue
                    events = bench.tmp / f"{name}-ws-events.jsonl"
                    ws_systems[name] = bench.adopt(start(events))
                    ws_logs[name] = CloseLog(events, "conn")
            trials = bench.run(measure, bench, p, ws_systems, ws_logs,
                               max_seconds=p["max_seconds"])
            names = [s for s in systems if s in bench.systems]
            summary = summarise(trials, names)
            md = report(bench, p, summary, names)
            print(md)
            bench.save(md, {"params": p, "summary": summary, "trials": trials},
                       plot(trials, names, p["wait"]), args.out)
        return 0

    return h.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
