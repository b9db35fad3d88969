"""Speech round trip through one gateway: Piper speaks, the recognisers listen.

Text → piper-plugin (text-to-speech) → whisper-plugin (speech-to-text) must give the
text back, sentence by sentence; and Piper's streamed PCM, resampled to 16 kHz and sent
in 20 ms frames over the realtime socket (pocketsphinx-plugin, AOG's run-task /
finish-task protocol), must be transcribed too. Nothing is mocked: real engines on both
sides, so this proves the audio each plugin produces and accepts is real speech.
"""

from __future__ import annotations

import array
import base64
import json
import sys
import threading
import time

import httpx
import pytest
from audio import frames, resample_linear, silence, word_error_rate
from conftest import EventReader, require_engines
from websockets.sync.client import connect

SENTENCES = ["The weather is nice today.", "Please open the window.",
             "Turn off the lights in the kitchen."]
PIPER_RATE = 22050


@pytest.fixture(scope="module", autouse=True)
def _engines():
    require_engines(["piper-plugin", "whisper-plugin", "pocketsphinx-plugin"])


def test_piper_speech_is_understood_by_whisper(engines_gateway, client):
    for sentence in SENTENCES:
        spoken = client.post(engines_gateway.service_url("text-to-speech"),
                             json={"text": sentence}, timeout=120)
        assert spoken.status_code == 200, spoken.text
        heard = client.post(engines_gateway.service_url("speech-to-text"),
                            json={"audio": spoken.json()["audio"], "language": "en"},
                            timeout=120)
        assert heard.status_code == 200, heard.text
        text = heard.json()["text"]
        assert word_error_rate(sentence, text) < 0.15, (sentence, text)


def _piper_stream_pcm(gw, text: str) -> tuple[bytes, int]:
    reader = EventReader()
    with httpx.Client(timeout=httpx.Timeout(120, connect=5)) as c, \
            c.stream("POST", gw.service_url("text-to-speech"),
                     json={"text": text, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_raw():
            reader.feed(chunk)
    audio = [e for e in reader.events if not e["finished"]]
    assert audio and reader.events[-1]["finished"] is True, reader.events
    rate = audio[0]["sample_rate"]
    return b"".join(base64.b64decode(e["audio"]) for e in audio), rate


def _to_16k(pcm: bytes, rate: int) -> bytes:
    samples = array.array("h", pcm)
    if sys.byteorder == "big":  # PCM on the wire is little-endian
        samples.byteswap()
    out = resample_linear(samples, rate, 16000)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def test_streamed_piper_speech_over_the_realtime_socket(engines_gateway):
    sentence = SENTENCES[1]
    pcm, rate = _piper_stream_pcm(engines_gateway, sentence)
    assert rate == PIPER_RATE
    speech = silence(200) + _to_16k(pcm, rate) + silence(500)

    events: list[dict] = []
    url = engines_gateway.service_ws_url("speech-to-text-ws")
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({
            "task": "speech-to-text-ws", "action": "run-task", "model": "pocketsphinx-en-us",
            "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en"}}))
        started = json.loads(ws.recv(timeout=30))
        assert started["header"]["event"] == "task-started", started

        def reader() -> None:
            while True:
                msg = json.loads(ws.recv(timeout=60))
                events.append(msg)
                if msg["header"]["event"] in ("task-finished", "task-failed"):
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t0 = time.monotonic()
        for i, frame in enumerate(frames(speech, 20)):
            ws.send(frame)
            wait = t0 + (i + 1) * 0.020 / 4 - time.monotonic()  # 4x real time
            if wait > 0:
                time.sleep(wait)
        ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
        t.join(60)
        assert not t.is_alive(), "no task-finished within 60 s"

    assert events[-1]["header"]["event"] == "task-finished", events[-1]
    finals = [m["payload"]["output"]["sentence"] for m in events
              if m["header"]["event"] == "result-generated"
              and m["payload"]["output"]["sentence"]["sentence_end"]]
    text = " ".join(s["text"] for s in finals)
    assert word_error_rate(sentence, text) <= 0.25, (sentence, text)
