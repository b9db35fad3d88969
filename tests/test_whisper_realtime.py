"""Streaming Whisper on the realtime speech socket, end to end.

Real parts: the gateway subprocess with the shipped plugins (`engines_gateway`), the
shipped whisper-plugin process and its faster-whisper engine process (tiny.en and the
silero VAD model bundled in faster-whisper, installed in the test engine directory),
and a real `websockets` client that names `whisper-tiny.en` in its run-task and speaks
a human recording (goforward) or flite speech in 20 ms frames.

Proven: partial results arrive while the client is still talking and the final is
accurate (WER ≤ 0.25); two sentences separated by silence give two finals with
increasing times; speech with white noise mixed at 10 dB SNR (fixed seed) is still
transcribed (WER ≤ 0.5); a final is never revised or repeated; two sessions at once
each get their own transcript; and a client that leaves mid-utterance stops the
decoding (the engine process goes idle) and frees its session; and pocketsphinx stays
the service's default model, however the two plugins' start-ups interleave.
"""

from __future__ import annotations

import array
import json
import math
import random
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
from audio import GOFORWARD_TEXT, flite_pcm, frames, goforward_pcm, silence, word_error_rate
from conftest import require_engines
from websockets.sync.client import connect

PLUGIN = "whisper-plugin"
MODEL = "whisper-tiny.en"
FINISH = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})
FOX = "the quick brown fox jumps over the lazy dog"
CALL = "please call me back tomorrow morning"


@pytest.fixture(scope="module")
def gateway(engines_gateway):
    require_engines([PLUGIN])
    engines_gateway.wait_plugin_running(name=PLUGIN, timeout=60)
    # the first session after the gateway starts waits for the engine process to start
    # and load tiny.en; pay that here, so the tests see a running engine
    speak(engines_gateway.service_ws_url("speech-to-text-ws"), goforward_pcm(), pace=8.0)
    return engines_gateway


@pytest.fixture(scope="module")
def url(gateway) -> str:
    return gateway.service_ws_url("speech-to-text-ws")


def run_task(model: str = MODEL) -> str:
    return json.dumps({"task": "speech-to-text-ws", "action": "run-task", "model": model,
                       "parameters": {"format": "pcm", "sample_rate": 16000,
                                      "language": "en"}})


def speak(url: str, pcm: bytes, pace: float = 1.0) -> tuple[list[tuple[float, dict]], float]:
    """Send `pcm` in 20 ms frames at `pace`× real time and collect every event with its
    arrival time. Returns (events, the time finish-task was sent)."""
    events: list[tuple[float, dict]] = []
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send(run_task())
        started = json.loads(ws.recv(timeout=60))
        assert started["header"]["event"] == "task-started", started

        def reader() -> None:
            while True:
                msg = json.loads(ws.recv(timeout=90))
                events.append((time.monotonic(), msg))
                if msg["header"]["event"] in ("task-finished", "task-failed"):
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t0 = time.monotonic()
        for i, f in enumerate(frames(pcm, 20)):
            ws.send(f)
            wait = t0 + (i + 1) * 0.020 / pace - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        finished_at = time.monotonic()
        ws.send(FINISH)
        t.join(90)
        assert not t.is_alive(), "no task-finished within 90 s"
    assert events[-1][1]["header"]["event"] == "task-finished", events[-1]
    return events, finished_at


def results(events: list[tuple[float, dict]]) -> list[dict[str, Any]]:
    return [m["payload"]["output"]["sentence"] for _, m in events
            if m["header"]["event"] == "result-generated"]


def finals(events: list[tuple[float, dict]]) -> list[dict[str, Any]]:
    return [s for s in results(events) if s["sentence_end"]]


def assert_finals_never_flip(events: list[tuple[float, dict]]) -> None:
    """After a final, nothing speaks about its stretch of audio again: every later
    result begins at or after the final's end, and no final is sent twice."""
    closed_at = -1
    for s in results(events):
        assert s["begin_time"] >= closed_at, (s, closed_at)
        assert s["end_time"] >= s["begin_time"] >= 0, s
        if s["sentence_end"]:
            closed_at = s["end_time"]


def with_noise(pcm: bytes, snr_db: float, seed: int = 17) -> bytes:
    """`pcm` with white Gaussian noise at `snr_db` below the speech's power (the power
    of the samples that are not near-silent), from a fixed seed."""
    samples = array.array("h", pcm)
    loud = [s for s in samples if abs(s) > 300] or [1]
    power = sum(s * s for s in loud) / len(loud)
    sigma = math.sqrt(power / 10 ** (snr_db / 10))
    rng = random.Random(seed)
    out = array.array("h", (max(-32768, min(32767, round(s + rng.gauss(0.0, sigma))))
                            for s in samples))
    return out.tobytes()


def test_recorded_speech_at_real_time_gives_partials_before_finish_and_an_accurate_final(url):
    # the trailing silence is the client still listening; the first decode that hears
    # speech is sent mid-utterance, so its partial comes before finish-task unless one
    # decode takes longer than ~3.5 s (a very busy machine)
    events, finished_at = speak(url, silence(300) + goforward_pcm() + silence(2000))
    partial_times = [t for t, m in events if m["header"]["event"] == "result-generated"
                     and not m["payload"]["output"]["sentence"]["sentence_end"]]
    assert partial_times, "expected partial results while the client was talking"
    assert min(partial_times) < finished_at, "partials must arrive before finish-task"
    got = finals(events)
    assert len(got) == 1, got
    assert word_error_rate(GOFORWARD_TEXT, got[0]["text"]) <= 0.25, got
    # the speech is at 0.3-3.1 s of the stream
    assert 0 <= got[0]["begin_time"] < 1500 and got[0]["end_time"] <= 4300, got
    assert_finals_never_flip(events)


def test_two_sentences_separated_by_silence_give_two_finals_in_order(url):
    pcm = flite_pcm(FOX) + silence(1500) + flite_pcm(CALL) + silence(300)
    events, _ = speak(url, pcm, pace=2.0)
    got = finals(events)
    assert len(got) == 2, got
    assert word_error_rate(FOX, got[0]["text"]) <= 0.25, got
    assert word_error_rate(CALL, got[1]["text"]) <= 0.25, got
    assert got[0]["begin_time"] < got[0]["end_time"] <= got[1]["begin_time"] \
        < got[1]["end_time"], got
    assert_finals_never_flip(events)


def test_speech_with_noise_at_10_db_snr_is_still_transcribed(url):
    events, _ = speak(url, with_noise(silence(300) + goforward_pcm() + silence(800), 10.0),
                      pace=2.0)
    text = " ".join(s["text"] for s in finals(events))
    assert word_error_rate(GOFORWARD_TEXT, text) <= 0.5, text
    assert_finals_never_flip(events)


def test_two_sessions_at_once_each_get_their_own_transcript(url):
    texts: dict[str, str] = {}

    def one(name: str, pcm: bytes, ref: str) -> None:
        events, _ = speak(url, pcm, pace=1.0)
        texts[name] = " ".join(s["text"] for s in finals(events))
        assert_finals_never_flip(events)

    threads = [threading.Thread(target=one, args=("goforward", goforward_pcm() + silence(800),
                                                  GOFORWARD_TEXT)),
               threading.Thread(target=one, args=("fox", flite_pcm(FOX) + silence(800), FOX))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert word_error_rate(GOFORWARD_TEXT, texts["goforward"]) <= 0.25, texts
    assert word_error_rate(FOX, texts["fox"]) <= 0.25, texts


def engine_process(gateway) -> psutil.Process:
    """The gateway's whisper engine process (a descendant running whisper_worker.py)."""
    root = psutil.Process(gateway.proc.pid)
    for p in root.children(recursive=True):
        try:
            if any("whisper_worker.py" in a for a in p.cmdline()):
                return p
        except psutil.Error:
            continue
    raise AssertionError("no whisper engine process under the gateway")


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def test_a_client_that_leaves_stops_the_decoding_and_frees_its_session(url, gateway):
    long_speech = b"".join(flite_pcm(FOX) + silence(300) for _ in range(4))
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send(run_task())
        assert json.loads(ws.recv(timeout=60))["header"]["event"] == "task-started"
        for f in frames(long_speech, 20):  # all at once: a backlog of decoding
            ws.send(f)
        first = json.loads(ws.recv(timeout=60))
        assert first["header"]["event"] == "result-generated", first
    # the client is gone with ~12 s of speech undecoded: the engine must go idle soon
    engine = engine_process(gateway)
    deadline = time.monotonic() + 10.0
    idle = False
    while time.monotonic() < deadline and not idle:
        before = cpu_seconds(engine)
        time.sleep(1.0)
        idle = cpu_seconds(engine) - before < 0.1
    assert idle, "the engine kept decoding for a client that left"
    # and its session slot is free: a new session is served
    events, _ = speak(url, goforward_pcm() + silence(800), pace=4.0)
    text = " ".join(s["text"] for s in finals(events))
    assert word_error_rate(GOFORWARD_TEXT, text) <= 0.25, text


def test_pocketsphinx_stays_the_default_realtime_model(gateway):
    """whisper-plugin serves the realtime socket on the side: it never takes the
    service's default from pocketsphinx-plugin, whichever plugin came up first."""
    gateway.wait_plugin_running(name="pocketsphinx-plugin", timeout=60)
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        models = httpx.get(gateway.url + "/aog/v0.2/services/models", timeout=10).json()
        rows = [r for r in models["models"] if r["service_name"] == "speech-to-text-ws"]
        if {r["name"] for r in rows} >= {"pocketsphinx-en-us", MODEL}:
            break
        time.sleep(0.2)
    defaults = {r["name"] for r in rows if r["is_default"]}
    assert defaults == {"pocketsphinx-en-us"}, rows
