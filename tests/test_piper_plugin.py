"""piper-plugin end to end: real Piper speech through the gateway (unary JSON, raw WAV/PCM,
sentence-by-sentence SSE), clear errors for bad requests, and a Piper voice pulled by
local path and by URL bringing its `.onnx.json` along."""

from __future__ import annotations

import array
import base64
import functools
import http.server
import io
import json
import math
import os
import sys
import threading
import wave
from pathlib import Path

import httpx
import pytest
from conftest import EventReader, require_engines
from hostutil import running_plugin

from aogstream import manifest as m

REPO = Path(__file__).resolve().parent.parent
PIPER = REPO / "plugins" / "piper-plugin"
MODEL = "en_US-joe-medium"
RATE = 22050
SILENT_RMS = 300  # int16 RMS; Piper normalises speech to full scale (RMS in the thousands)
SENTENCES = ["The weather is nice today.", "Please open the window.",
             "I would like a cup of tea."]


@pytest.fixture(scope="module", autouse=True)
def _engines():
    require_engines(["piper-plugin"])


def tts(gw, client: httpx.Client, **body) -> httpx.Response:
    return client.post(gw.service_url("text-to-speech"), json=body, timeout=120)


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))


def read_wav(data: bytes):
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getparams(), w.readframes(w.getnframes())


def test_unary_json_is_a_real_spoken_wav(engines_gateway, client):
    text = " ".join(SENTENCES[:2])
    r = tts(engines_gateway, client, text=text)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["model"] == MODEL and body["voice"] == MODEL
    assert body["id"] and body["format"] == "wav" and body["sample_rate"] == RATE
    params, pcm = read_wav(base64.b64decode(body["audio"]))
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, RATE)
    seconds = params.nframes / RATE
    assert abs(seconds - body["duration"]) < 0.01
    assert 1.0 < seconds < 15.0, f"{seconds:.2f} s for two short sentences"
    assert rms(pcm) > SILENT_RMS


def test_male_voice_and_speed(engines_gateway, client):
    """AOG's "male" maps to joe; speed 2.0 makes the same text clearly shorter."""
    normal = tts(engines_gateway, client, text=SENTENCES[1], voice="male")
    fast = tts(engines_gateway, client, text=SENTENCES[1], voice="male", speed=2.0)
    assert normal.status_code == 200 and fast.status_code == 200, (normal.text, fast.text)
    assert normal.json()["voice"] == "male" and normal.json()["model"] == MODEL
    assert fast.json()["duration"] < 0.75 * normal.json()["duration"], \
        (fast.json()["duration"], normal.json()["duration"])


def test_response_format_wav_and_pcm_are_raw_audio(engines_gateway, client):
    r = tts(engines_gateway, client, text=SENTENCES[0], response_format="wav")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    params, pcm = read_wav(r.content)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, RATE)
    assert params.nframes / RATE > 0.5 and rms(pcm) > SILENT_RMS

    r = tts(engines_gateway, client, text=SENTENCES[0], response_format="pcm")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert len(r.content) % 2 == 0 and len(r.content) / 2 / RATE > 0.5
    assert rms(r.content) > SILENT_RMS


def test_stream_relays_each_sentence_before_the_end(engines_gateway):
    reader = EventReader()
    with httpx.Client(timeout=httpx.Timeout(120, connect=5)) as c, \
            c.stream("POST", engines_gateway.service_url("text-to-speech"),
                     json={"text": " ".join(SENTENCES), "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            reader.feed(chunk)
    events = reader.events
    assert len(events) == 4, [{k: v for k, v in e.items() if k != "audio"} for e in events]
    audio, final = events[:3], events[3]
    assert [e["index"] for e in audio] == [0, 1, 2]
    assert [e["text"] for e in audio] == SENTENCES
    assert len({e["id"] for e in events}) == 1
    for e in audio:
        assert e["finished"] is False and e["model"] == MODEL
        assert e["format"] == "pcm_s16le" and e["sample_rate"] == RATE
        pcm = base64.b64decode(e["audio"])
        assert len(pcm) / 2 / RATE > 0.5 and rms(pcm) > SILENT_RMS, e["text"]
    assert final["finished"] is True and final["finish_reason"] == "stop"
    assert final["sentences"] == 3
    # relayed as spoken: the first sentence reached us before the engine finished
    assert reader.times[0] < reader.times[-1]


@pytest.mark.parametrize(("body", "words"), [
    ({}, ["'text'"]),
    ({"text": "   "}, ["'text'"]),
    ({"text": "hello", "voice": "female"}, ["female", "not installed", MODEL]),
    ({"text": "hello", "response_format": "mp3"}, ["mp3", "json, wav, pcm"]),
    ({"text": "hello", "speed": 9}, ["speed", "0.25", "4.0"]),
    ({"text": "word " * 1200}, ["5000"]),
    ({"text": "hello", "stream": True, "voice": "girl"}, ["girl", MODEL]),
])
def test_bad_requests_get_clear_errors(engines_gateway, client, body, words):
    r = tts(engines_gateway, client, **body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    message = r.json()["message"]
    for word in words:
        assert word in message, message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


async def test_pull_by_path_and_url_brings_the_voice_config(tmp_path):
    """A `.onnx` voice named by path or URL is pulled with its `.onnx.json`, so it loads
    and speaks. Uses a fresh model store next to the already installed engine."""
    src = require_engines(["piper-plugin"]) / "piper-plugin"
    engines = tmp_path / "engines"
    (engines / "piper-plugin").mkdir(parents=True)
    os.symlink(src / "engine", engines / "piper-plugin" / "engine")
    onnx = src / "models" / MODEL / f"{MODEL}.onnx"

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(onnx.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{onnx.name}"
    try:
        async with running_plugin(PIPER, engine_dir=engines,
                                  start_engines=False) as (_plugin, client):
            for name, source in (("joe-path", str(onnx)), ("joe-url", url)):
                async with client.pull_model_stream(
                        m.PullModelRequest(model=source, name=name)) as stream:
                    events = [ev async for ev in stream]
                assert events[-1] == {"status": "success"}, events
                folder = engines / "piper-plugin" / "models" / name
                assert (folder / f"{MODEL}.onnx.json").read_bytes() == \
                    Path(f"{onnx}.json").read_bytes()
                assert (folder / f"{MODEL}.onnx").stat().st_size == onnx.stat().st_size
            listed = {i.name: i for i in (await client.list_models()).models}
            assert set(listed) == {"joe-path", "joe-url"}
            assert listed["joe-url"].details.format == "onnx"
            assert listed["joe-url"].details.family == "piper"

            answer = json.loads(await client.invoke_service(
                "text-to-speech", "", json.dumps({"text": "Hello.", "model": "joe-url"}).encode(),
                timeout=120))
            assert answer["model"] == "joe-url"
            _params, pcm = read_wav(base64.b64decode(answer["audio"]))
            assert rms(pcm) > SILENT_RMS
            await client.delete_model(m.DeleteModelRequest(model="joe-url"))
            assert [i.name for i in (await client.list_models()).models] == ["joe-path"]
    finally:
        server.shutdown()
        server.server_close()
