"""The realtime speech socket end to end: a real WebSocket client speaks recorded and
synthesised speech in small frames through the gateway to the shipped
pocketsphinx-plugin process, and gets AOG's events back while it is still talking.

The gateway is the session's `engines_gateway` (the shipped plugins with the engines and
models installed in the test engine directory); pocketsphinx decodes inside the plugin
process with the engine installed there and the model pulled there."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from audio import (
    GOFORWARD_RAW,
    GOFORWARD_TEXT,
    flite_pcm,
    frames,
    goforward_pcm,
    silence,
    word_error_rate,
)
from conftest import require_engines
from websockets.sync.client import connect

PLUGIN = "pocketsphinx-plugin"


@pytest.fixture(scope="module")
def gateway_url(engines_gateway):
    require_engines([PLUGIN])
    engines_gateway.wait_plugin_running(name=PLUGIN, timeout=30)
    return engines_gateway.service_ws_url("speech-to-text-ws")


def run_task(**params) -> str:
    base = {"format": "pcm", "sample_rate": 16000, "language": "en"}
    base.update(params)
    return json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                       "model": "pocketsphinx-en-us", "parameters": base})


FINISH = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})


def speak(url: str, pcm: bytes, frame_ms: int, pace: float, *,
          partial_before_finish: float = 0.0) -> tuple[list, float, float]:
    """Send `pcm` in `frame_ms` frames at `pace`× real time, collecting every event
    with its arrival time. Returns (events, time finish-task was sent, start time).

    With `partial_before_finish` (seconds), finish-task waits until a partial result
    has arrived, for at most that long after the last frame: a partial the plugin made
    from the streamed audio may reach a busy machine's client after its last frame was
    sent, and finish-task must not be sent before it is seen, or the test would prove
    scheduling rather than the product."""
    events: list[tuple[float, dict]] = []
    partial_seen = threading.Event()
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send(run_task())
        started = json.loads(ws.recv(timeout=20))
        assert started["header"]["event"] == "task-started", started
        assert started["header"]["task_id"], "task-started must carry the connection's id"

        def reader() -> None:
            while True:
                msg = json.loads(ws.recv(timeout=30))
                events.append((time.monotonic(), msg))
                if is_partial(msg):
                    partial_seen.set()
                if msg["header"]["event"] in ("task-finished", "task-failed"):
                    return

        t = threading.Thread(target=reader, daemon=True)
        t0 = time.monotonic()
        t.start()
        for i, f in enumerate(frames(pcm, frame_ms)):
            ws.send(f)
            # real-time pacing: the client is "still talking" while results arrive
            wait = t0 + (i + 1) * frame_ms / 1000 / pace - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if partial_before_finish:
            partial_seen.wait(partial_before_finish)
        finished_at = time.monotonic()
        ws.send(FINISH)
        t.join(30)
        assert not t.is_alive(), "no task-finished within 30 s"
    return events, finished_at, t0


def is_partial(msg: dict) -> bool:
    return msg["header"]["event"] == "result-generated" and \
        not msg["payload"]["output"]["sentence"]["sentence_end"]


def sentences(events):
    return [m["payload"]["output"]["sentence"] for _, m in events
            if m["header"]["event"] == "result-generated"]


def test_recorded_speech_in_20ms_frames_streams_partials_then_final(gateway_url):
    """Partials come from the audio streamed so far, before the client ends the task.

    What the product promises is that partial sentences are made while audio streams
    in, not when finish-task arrives; how soon a busy machine delivers them is not
    promised. So the audio is paced in real time, finish-task waits (bounded) for the
    first partial, and that partial must cover only a prefix of the speech (its
    stream-relative `end_time` is before the recording ends): it was decoded from the
    audio that had arrived, not from the whole stream at its end."""
    speech = goforward_pcm()
    speech_ms = len(speech) // 32  # 16 kHz PCM16 mono: 32 bytes per ms
    events, finished_at, _ = speak(gateway_url, speech + silence(300), 20, pace=1.0,
                                   partial_before_finish=30.0)
    assert events[-1][1]["header"]["event"] == "task-finished"
    partials = [(t, m["payload"]["output"]["sentence"]) for t, m in events if is_partial(m)]
    assert partials, "expected partial results while audio was streaming"
    first_at, first = partials[0]
    assert first_at < finished_at, "a partial must arrive before finish-task is sent"
    assert first["end_time"] < speech_ms, (
        f"the first partial must come from a prefix of the speech ({speech_ms} ms): {first}")
    finals = [s for s in sentences(events) if s["sentence_end"]]
    assert finals, "expected a final sentence"
    text = " ".join(s["text"] for s in finals)
    assert word_error_rate(GOFORWARD_TEXT, text) <= 0.25, text
    assert all(s["end_time"] >= s["begin_time"] >= 0 for s in finals)


def test_synthesised_two_sentences_in_100ms_frames(gateway_url):
    ref1, ref2 = "the weather is nice today", "please open the window"
    pcm = flite_pcm(ref1) + silence(1200) + flite_pcm(ref2) + silence(500)
    events, _, _ = speak(gateway_url, pcm, 100, pace=4.0)
    finals = [s for s in sentences(events) if s["sentence_end"]]
    text = " ".join(s["text"] for s in finals)
    assert word_error_rate(f"{ref1} {ref2}", text) <= 0.3, text
    times = [(s["begin_time"], s["end_time"]) for s in finals]
    assert times == sorted(times), f"sentence times must increase: {times}"


def test_client_mistakes_get_task_failed_and_the_socket_keeps_working(gateway_url):
    with connect(gateway_url, open_timeout=10) as ws:
        ws.send(b"\x00" * 640)  # audio before run-task
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["event"] == "task-failed"
        assert ev["header"]["error_code"] == "CLIENT_ERROR"
        assert "run-task" in ev["header"]["error_message"]
        ws.send("{not json")
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["error_code"] == "CLIENT_ERROR"
        ws.send(FINISH)  # finish without a task
        assert json.loads(ws.recv(timeout=20))["header"]["error_code"] == "CLIENT_ERROR"
        # a proper task still works on the same socket
        ws.send(run_task())
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        for f in frames(goforward_pcm(), 100):
            ws.send(f)
        ws.send(FINISH)
        names = []
        while not names or names[-1] not in ("task-finished", "task-failed"):
            names.append(json.loads(ws.recv(timeout=15))["header"]["event"])
        assert names[-1] == "task-finished", names


def test_unsupported_language_is_a_model_error(gateway_url):
    with connect(gateway_url, open_timeout=10) as ws:
        ws.send(run_task(language="zh"))
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["event"] == "task-failed"
        assert ev["header"]["error_code"] == "MODEL_ERROR"
        assert "English" in ev["header"]["error_message"]


def test_many_concurrent_sessions(gateway_url):
    """Several clients at once each get their own transcript (no cross-talk)."""
    results: dict[int, str] = {}

    def one(i: int) -> None:
        events, _, _ = speak(gateway_url, goforward_pcm(), 100, pace=8.0)
        results[i] = " ".join(s["text"] for s in sentences(events) if s["sentence_end"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    for text in results.values():
        assert word_error_rate(GOFORWARD_TEXT, text) <= 0.25, results


@pytest.mark.skipif(not os.path.exists(GOFORWARD_RAW),
                    reason="needs pocketsphinx-testdata (make sysdeps)")
def test_client_that_leaves_mid_task_frees_the_session(gateway_url):
    for _ in range(3):
        with connect(gateway_url, open_timeout=10) as ws:
            ws.send(run_task())
            ws.recv(timeout=20)
            for f in frames(goforward_pcm()[:16000], 20):
                ws.send(f)
        # leaving without finish-task must not wedge anything
    events, _, _ = speak(gateway_url, goforward_pcm(), 100, pace=8.0)
    assert events[-1][1]["header"]["event"] == "task-finished"


def test_a_model_that_is_not_pulled_fails_the_task_saying_how_to_pull_it(gateway_url):
    with connect(gateway_url, open_timeout=10) as ws:
        ws.send(run_task(model="pocketsphinx-xx-not-pulled"))
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["event"] == "task-failed"
        assert ev["header"]["error_code"] == "MODEL_ERROR"
        message = ev["header"]["error_message"]
        assert "pocketsphinx-xx-not-pulled" in message and "not pulled" in message, message
        assert "PullModel" in message, message
        # the default model still serves on the same socket
        ws.send(run_task())
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        for f in frames(goforward_pcm(), 100):
            ws.send(f)
        ws.send(FINISH)
        names = []
        while not names or names[-1] not in ("task-finished", "task-failed"):
            names.append(json.loads(ws.recv(timeout=15))["header"]["event"])
        assert names[-1] == "task-finished", names


def test_an_aog_model_name_that_is_not_installed_is_a_model_error_naming_the_installed(
        gateway_url):
    """AOG's clients name catalogue models with a "/" (an OpenVINO repository name):
    the answer is MODEL_ERROR listing what is installed, not a plugin's SERVER_ERROR."""
    with connect(gateway_url, open_timeout=10) as ws:
        task = json.loads(run_task())
        task["model"] = "NamoLi/whisper-large-v3-ov"
        ws.send(json.dumps(task))
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["event"] == "task-failed", ev
        assert ev["header"]["error_code"] == "MODEL_ERROR", ev
        message = ev["header"]["error_message"]
        assert "NamoLi/whisper-large-v3-ov" in message, message
        assert "pocketsphinx-en-us" in message, message


def test_finish_task_after_task_failed_gets_an_answer_and_the_socket_goes_on(gateway_url):
    """A client that streams its audio and sends finish-task after its task failed (as
    AOG's clients do, waiting for an answer to finish-task) gets a task-failed that
    restates why, not silence and not one error per late audio frame; the next
    run-task on the same socket works."""
    with connect(gateway_url, open_timeout=10) as ws:
        task = json.loads(run_task())
        task["model"] = "no-such/model"
        ws.send(json.dumps(task))
        first = json.loads(ws.recv(timeout=20))
        assert first["header"]["event"] == "task-failed", first
        for f in frames(goforward_pcm()[:32000], 100):  # the rest of the failed task's audio
            ws.send(f)
        ws.send(FINISH)
        again = json.loads(ws.recv(timeout=20))
        assert again["header"]["event"] == "task-failed", again
        assert again["header"]["error_code"] == "MODEL_ERROR", again
        assert "already failed" in again["header"]["error_message"], again
        ws.send(run_task())
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        for f in frames(goforward_pcm(), 100):
            ws.send(f)
        ws.send(FINISH)
        names = []
        while not names or names[-1] not in ("task-finished", "task-failed"):
            names.append(json.loads(ws.recv(timeout=30))["header"]["event"])
        assert names[-1] == "task-finished", names
