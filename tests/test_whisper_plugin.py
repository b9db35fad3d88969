"""whisper-plugin through the gateway: real Whisper tiny.en (faster-whisper) transcribing
real speech (a human recording and flite speech) sent as WAV files, data: URIs and raw
PCM at 16 kHz and other rates, in AOG's speech-to-text shape; bad input gets 4xx errors
that say what was wrong, and the plugin keeps serving. A local CTranslate2 folder can be
pulled as a model of its own and used by name."""

from __future__ import annotations

import array
import base64
import json
import re
import sys
from pathlib import Path

import pytest
from audio import (
    GOFORWARD_TEXT,
    RATE,
    flite_pcm,
    goforward_pcm,
    resample_linear,
    wav_bytes,
    word_error_rate,
)
from conftest import require_engines
from hostutil import running_plugin

from aogstream import manifest as m

REPO = Path(__file__).resolve().parent.parent
WHISPER = REPO / "plugins" / "whisper-plugin"
MODEL = "whisper-tiny.en"
TWO_SENTENCES = "The weather is nice today. Please open the window in the kitchen."
NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
           "6": "six", "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
SRT = re.compile(r"^\d\d:\d\d:\d\d,\d\d\d$")


@pytest.fixture(scope="module", autouse=True)
def _engines():
    require_engines(["whisper-plugin"])


def spoken(text: str) -> str:
    """Digits as words: Whisper writes "10" where the reference says "ten"."""
    return re.sub(r"\b\d+\b", lambda mt: NUMBERS.get(mt.group(), mt.group()), text)



def resampled(pcm: bytes, rate: int) -> bytes:
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    out = resample_linear(samples, RATE, rate)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stt(gw, client, **body):
    return client.post(gw.service_url("speech-to-text"), json=body, timeout=120)


def check_shape(body: dict, audio_s: float) -> None:
    """AOG's speech-to-text answer, with segment times in order and inside the audio."""
    assert set(body) == {"id", "model", "text", "language", "duration", "segments"}, body
    assert body["id"] and body["model"] == MODEL and body["language"] == "en"
    assert isinstance(body["duration"], float)
    assert abs(body["duration"] - audio_s) < 0.05, (body["duration"], audio_s)
    segs = body["segments"]
    assert segs, body
    assert body["text"] == " ".join(s["text"] for s in segs).strip()
    last_end = 0
    for i, s in enumerate(segs):
        assert set(s) == {"id", "begin_time", "end_time", "start", "end", "text"}, s
        assert s["id"] == i
        assert isinstance(s["begin_time"], int) and isinstance(s["end_time"], int)
        assert last_end <= s["begin_time"] < s["end_time"] <= round(audio_s * 1000), segs
        last_end = s["end_time"]
        assert SRT.match(s["start"]) and SRT.match(s["end"]), s
        h, mi, rest = s["end"].split(":")
        sec, ms = rest.split(",")
        assert (int(h) * 3600 + int(mi) * 60 + int(sec)) * 1000 + int(ms) == s["end_time"]


def test_human_speech_wav(engines_gateway, client):
    pcm = goforward_pcm()
    r = stt(engines_gateway, client, audio=b64(wav_bytes(pcm)), language="en")
    assert r.status_code == 200, r.text
    body = r.json()
    check_shape(body, len(pcm) / 2 / RATE)
    assert word_error_rate(GOFORWARD_TEXT, spoken(body["text"])) <= 0.15, body["text"]


def test_flite_speech_as_raw_pcm(engines_gateway, client):
    pcm = flite_pcm(TWO_SENTENCES)
    r = stt(engines_gateway, client, audio=b64(pcm), format="pcm", sample_rate=RATE)
    assert r.status_code == 200, r.text
    body = r.json()
    check_shape(body, len(pcm) / 2 / RATE)
    assert word_error_rate(TWO_SENTENCES, body["text"]) < 0.15, body["text"]


@pytest.mark.parametrize("kind", ["wav data URI", "raw pcm"])
def test_other_sample_rate(engines_gateway, client, kind):
    """22.05 kHz audio is resampled to Whisper's 16 kHz: by PyAV for a file, by the
    worker's interpolation for raw PCM."""
    pcm = resampled(flite_pcm(TWO_SENTENCES), 22050)
    if kind == "raw pcm":
        body = {"audio": b64(pcm), "format": "pcm", "sample_rate": 22050}
    else:
        body = {"audio": "data:audio/wav;base64," + b64(wav_bytes(pcm, 22050))}
    r = stt(engines_gateway, client, **body)
    assert r.status_code == 200, r.text
    out = r.json()
    check_shape(out, len(pcm) / 2 / 22050)
    assert word_error_rate(TWO_SENTENCES, out["text"]) < 0.15, out["text"]


def test_bad_input_gets_clear_errors_and_plugin_keeps_serving(engines_gateway, client):
    wav = b64(wav_bytes(goforward_pcm()))
    cases = [
        ({}, ["audio"]),
        ({"audio": ""}, ["audio"]),
        ({"audio": "this is *not* base64!"}, ["could not decode audio", "base64"]),
        ({"audio": b64(b"plain text, not any audio format" * 20)},
         ["could not decode audio"]),
        ({"audio": b64(b"\x01\x02\x03"), "format": "pcm"}, ["could not decode audio"]),
        ({"audio": wav, "language": "fr"}, ["English-only", "fr"]),
        ({"audio": wav, "language": "de-DE"}, ["English-only"]),
    ]
    for body, words in cases:
        r = stt(engines_gateway, client, **body)
        assert 400 <= r.status_code < 500, (body.keys(), r.status_code, r.text)
        message = r.json()["message"]
        for word in words:
            assert word in message, (word, message)
    # English spelled out, and a good request after all that, still work
    r = stt(engines_gateway, client, audio=wav, language="English")
    assert r.status_code == 200, r.text
    assert word_error_rate(GOFORWARD_TEXT, spoken(r.json()["text"])) <= 0.15


async def test_local_ctranslate2_folder_is_pullable(tmp_path):
    """A model folder given by path is copied into the store, listed as a CTranslate2
    Whisper model, and served by name. A fresh engine dir borrows the installed engine."""
    installed = require_engines(["whisper-plugin"]) / "whisper-plugin"
    (tmp_path / "whisper-plugin").mkdir()
    (tmp_path / "whisper-plugin" / "engine").symlink_to(installed / "engine")
    source = installed / "models" / MODEL
    async with running_plugin(WHISPER, engine_dir=tmp_path, start_engines=False) as (_, client):
        async with client.pull_model_stream(
                m.PullModelRequest(model=str(source), name="tiny-local")) as events:
            statuses = [e.get("status") async for e in events]
        assert statuses[-1] == "success", statuses
        assert (await client.get_version()).version == "1.2.1"
        listed = {x.name: x for x in (await client.list_models()).models}
        assert set(listed) == {"tiny-local"}
        assert listed["tiny-local"].details.format == "ctranslate2"
        assert listed["tiny-local"].details.family == "whisper"
        request = {"model": "tiny-local", "audio": b64(wav_bytes(goforward_pcm()))}
        out = json.loads(await client.invoke_service("speech-to-text", "",
                                                     json.dumps(request).encode(), timeout=120))
        assert out["model"] == "tiny-local"
        assert word_error_rate(GOFORWARD_TEXT, spoken(out["text"])) <= 0.15, out
