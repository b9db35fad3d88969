"""realtime_wer: word error rate and partial latency of the realtime speech engines, in noise.

    .venv/bin/python benchmarks/realtime_wer.py --quick     # 2 clips, ~2 minutes
    .venv/bin/python benchmarks/realtime_wer.py             # 4 clips, 2 sessions at once

It starts the real gateway with the shipped plugins and the engines installed in
`--engine-dir` (default `.cache/engines`, what `make test` installs) and, for each
engine (pocketsphinx-en-us in pocketsphinx-plugin, whisper-tiny.en in whisper-plugin,
chosen per task by the run-task's `model`) and each noise level (clean, 20 dB and 10 dB
SNR of white Gaussian noise from a fixed seed, relative to the speech's power), streams
every clip over `/aog/v0.2/services/speech-to-text-ws` in 20 ms frames paced at real
time, `--sessions` clients at once (each streams the same clip).

- WER: the finals of a clip joined, against its reference text (case and punctuation
  ignored), summed over the clips' words.
- Partial latency: for each word of a final, the time from the end of that word's audio
  to the first result (partial or final) of the same sentence whose words up to it are
  already those of the final. A word's audio end is estimated by spreading the final's
  [begin_time, end_time] over its words by their length (the engines report no word
  times), so this is an estimate to about a word's length.

Clips: the human recording "go forward ten meters" (pocketsphinx-testdata) and flite
sentences (Debian packages `pocketsphinx-testdata` and `flite`, see `make sysdeps`).
Writes benchmarks/results/realtime_wer.md (and .json) with the load average before and
after: the figures are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import array
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))
from audio import (  # noqa: E402 - the tests' audio helpers (real speech, WER)
    GOFORWARD_TEXT,
    _words,
    flite_pcm,
    frames,
    goforward_pcm,
    silence,
    word_error_rate,
)

ENGINES = {"pocketsphinx": "pocketsphinx-en-us", "whisper": "whisper-tiny.en"}
SNRS: list[float | None] = [None, 20.0, 10.0]
FLITE = ["the quick brown fox jumps over the lazy dog",
         "please call me back tomorrow morning",
         "we will meet at the station at seven"]
FINISH = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})


def start_gateway(engine_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    raise SystemExit("gateway did not start; see its log in " + str(workdir))


def with_noise(pcm: bytes, snr_db: float | None, seed: int = 17) -> bytes:
    if snr_db is None:
        return pcm
    samples = array.array("h", pcm)
    loud = [s for s in samples if abs(s) > 300] or [1]
    sigma = math.sqrt(sum(s * s for s in loud) / len(loud) / 10 ** (snr_db / 10))
    rng = random.Random(seed)
    return array.array("h", (max(-32768, min(32767, round(s + rng.gauss(0.0, sigma))))
                             for s in samples)).tobytes()


def stream(ws_url: str, model: str, pcm: bytes) -> tuple[list[tuple[float, dict]], str]:
    """Events (seconds since the first frame, sentence) of one real-time session."""
    got: list[tuple[float, dict]] = []
    end = ""
    with connect(ws_url, open_timeout=30, max_size=None) as ws:
        ws.send(json.dumps({"task": "speech-to-text-ws", "action": "run-task", "model": model,
                            "parameters": {"format": "pcm", "sample_rate": 16000}}))
        started = json.loads(ws.recv(timeout=120))
        if started["header"]["event"] != "task-started":
            return [], json.dumps(started["header"])
        t0 = time.monotonic()

        def reader() -> None:
            nonlocal end
            while True:
                msg = json.loads(ws.recv(timeout=120))
                name = msg["header"]["event"]
                if name == "result-generated":
                    got.append((time.monotonic() - t0, msg["payload"]["output"]["sentence"]))
                elif name in ("task-finished", "task-failed"):
                    end = name if name == "task-finished" else json.dumps(msg["header"])
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        for i, f in enumerate(frames(pcm, 20)):
            ws.send(f)
            wait = t0 + (i + 1) * 0.020 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        ws.send(FINISH)
        t.join(180)
    return got, end


def latencies(events: list[tuple[float, dict]]) -> list[float]:
    """Per final word: first time a result of its sentence had it (and all before it)
    right, minus the estimated end of the word's audio."""
    out: list[float] = []
    for _, fin in [e for e in events if e[1]["sentence_end"]]:
        words = _words(fin["text"])
        if not words:
            continue
        begin, end = fin["begin_time"] / 1000, fin["end_time"] / 1000
        lengths = [len(w) + 1 for w in words]
        total = sum(lengths)
        for i in range(len(words)):
            audio_end = begin + (end - begin) * sum(lengths[:i + 1]) / total
            seen = next((t for t, s in events if s["begin_time"] == fin["begin_time"]
                         and _words(s["text"])[:i + 1] == words[:i + 1]), None)
            if seen is not None:
                out.append(seen - audio_end)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 clips, 1 session")
    ap.add_argument("--sessions", type=int, default=0,
                    help="clients at once (default: 1 with --quick, else 2)")
    ap.add_argument("--engine-dir", type=Path, default=ROOT / ".cache" / "engines")
    args = ap.parse_args()
    sessions = args.sessions or (1 if args.quick else 2)
    clips = [("goforward (human)", goforward_pcm(), GOFORWARD_TEXT)]
    for text in FLITE[:1 if args.quick else len(FLITE)]:
        clips.append((f"flite: {text[:24]}...", flite_pcm(text), text))
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="realtime-wer-"))
    proc, url = start_gateway(args.engine_dir, work)
    ws_url = url.replace("http://", "ws://") + "/aog/v0.2/services/speech-to-text-ws"
    rows: list[dict[str, Any]] = []
    try:
        for engine, model in ENGINES.items():
            # warm up: the first session waits for the engine to start
            stream(ws_url, model, silence(200) + goforward_pcm())
            for snr in SNRS:
                errs = ref_words = 0
                lats: list[float] = []
                failures: list[str] = []
                for _name, pcm, ref in clips:
                    audio = with_noise(silence(300) + pcm + silence(1000), snr)
                    results: list[tuple[list[tuple[float, dict]], str]] = [([], "")] * sessions

                    def one(k: int, audio: bytes = audio, model: str = model,
                            results: list[Any] = results) -> None:
                        results[k] = stream(ws_url, model, audio)

                    threads = [threading.Thread(target=one, args=(k,)) for k in range(sessions)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(300)
                    for events, end in results:
                        if end != "task-finished":
                            failures.append(end or "no answer")
                        text = " ".join(s["text"] for _, s in events if s["sentence_end"])
                        n = len(_words(ref))
                        errs += round(word_error_rate(ref, text) * n)
                        ref_words += n
                        lats += latencies(events)
                row = {"engine": engine, "model": model,
                       "snr": "clean" if snr is None else f"{snr:g} dB",
                       "wer": errs / max(1, ref_words), "words": ref_words,
                       "latency_p50": statistics.median(lats) if lats else None,
                       "latency_p90": (sorted(lats)[int(0.9 * (len(lats) - 1))]
                                       if lats else None),
                       "latency_max": max(lats) if lats else None, "failures": failures}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()
    write(rows, clips, sessions, load_before, load_after)


def write(rows: list[dict[str, Any]], clips: list[tuple[str, bytes, str]], sessions: int,
          before: tuple[float, float, float], after: tuple[float, float, float]) -> None:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "# Realtime speech: WER and partial latency by engine and noise",
        "",
        f"Clips: {', '.join(c[0] for c in clips)}; 20 ms frames at real time, "
        f"{sessions} session(s) at once; white noise (seed 17) at the given SNR. "
        f"{os.cpu_count()} CPUs; load average before {before[0]:.1f}, after {after[0]:.1f} "
        "(above ~1 the machine was busy with other work and latencies are inflated).",
        "",
        "| engine | model | SNR | WER | words | partial latency p50 (s) | p90 (s) | max (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['model']} | {r['snr']} | {r['wer']:.2f} | "
                     f"{r['words']} | {s(r['latency_p50'])} | {s(r['latency_p90'])} | "
                     f"{s(r['latency_max'])} |"
                     + (f" failures: {len(r['failures'])}" if r["failures"] else ""))
    lines += ["", "Partial latency: end of a word's audio (estimated from the final's "
              "times) to the first result that has it right; negative when a result "
              "arrived before the estimated end of the word. See "
              "benchmarks/realtime_wer.py."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realtime_wer.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "realtime_wer.json").write_text(json.dumps(
        {"rows": rows, "sessions": sessions, "load_before": before, "load_after": after},
        indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
