"""AOG's local-file audio forms, against a real gateway serving whisper-plugin and
piper-plugin with their real engines, over real HTTP on loopback.

Proven here: speech-to-text takes `"audio": <path of a local file>` as AOG's SDK sends
it (a human recording is transcribed); the limits hold (no such file, a directory, a
device, a FIFO, a file that is not audio, a file over the size cap: each a 400 that
names the problem, never a hang or a 500; base64 still works); text-to-speech in AOG's
form answers the saved WAV's path in `url` beside the inline audio, while the
`response_format` forms stay inline only; with `AOGSTREAM_LOCAL_AUDIO_PATHS=0` a path is
refused. The loopback check itself is a unit test of `is_loopback` (every client here
is on loopback).
"""

from __future__ import annotations

import base64
import os
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from audio import goforward_pcm, wav_bytes
from conftest import Gateway, shipped_plugins_gateway

from aogstream.http.local_audio import is_audio, is_loopback

MAX_FILE = 400_000  # this gateway's cap on files read by path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("local-audio"),
                                 ["whisper-plugin", "piper-plugin"],
                                 {"AOGSTREAM_LOCAL_AUDIO_MAX_BYTES": str(MAX_FILE)}) as g:
        yield g


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(180.0, connect=5.0)) as c:
        yield c


def stt(client: httpx.Client, gw: Gateway, audio: str) -> httpx.Response:
    return client.post(gw.service_url("speech-to-text"), json={"audio": audio})


def test_a_local_wav_path_is_transcribed(gw: Gateway, client, tmp_path: Path):
    wav = tmp_path / "goforward.wav"
    wav.write_bytes(wav_bytes(goforward_pcm()))
    r = stt(client, gw, str(wav))
    assert r.status_code == 200, r.text
    assert "forward" in r.text.lower(), r.text
    # base64, as before
    b64 = stt(client, gw, base64.b64encode(wav.read_bytes()).decode())
    assert b64.status_code == 200 and "forward" in b64.text.lower(), b64.text


def test_paths_outside_the_limits_are_refused_clearly(gw: Gateway, client, tmp_path: Path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    text = tmp_path / "secret.wav"
    text.write_text("not audio at all, a key perhaps\n")
    big = tmp_path / "big.wav"
    with wave.open(str(big), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0" * (MAX_FILE + 2))
    cases = [(str(tmp_path / "missing.wav"), "does not exist"), (str(tmp_path), "regular"),
             ("/dev/zero", "regular"), (str(fifo), "regular"), (str(text), "not audio"),
             (str(big), f"at most {MAX_FILE}")]
    for path, words in cases:
        r = stt(client, gw, path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert words in r.json()["message"], (path, r.text)
        assert str(tmp_path) not in r.json()["message"]  # no path in the answer
    assert stt(client, gw, "/dev/zero").status_code == 400  # still serving


def test_text_to_speech_in_aogs_form_answers_the_saved_wav(gw: Gateway, client):
    r = client.post(gw.service_url("text-to-speech"), json={"text": "Hello there.",
                                                            "voice": "male"})
    assert r.status_code == 200, r.text
    body = r.json()
    saved = Path(body["url"])
    assert saved.is_file() and saved.read_bytes() == base64.b64decode(body["audio"])
    with wave.open(str(saved), "rb") as w:
        assert w.getnframes() > 0
    # the inline forms stay inline
    inline = client.post(gw.service_url("text-to-speech"),
                         json={"text": "Hello there.", "response_format": "json"})
    assert inline.status_code == 200 and "url" not in inline.json()
    raw = client.post(gw.service_url("text-to-speech"),
                      json={"text": "Hello there.", "response_format": "wav"})
    assert raw.status_code == 200 and raw.content[:4] == b"RIFF"
    # AOG's other local voice names: a 400 that lists the installed ones
    girl = client.post(gw.service_url("text-to-speech"), json={"text": "hi", "voice": "girl"})
    assert girl.status_code == 400 and "en_US-joe-medium" in girl.text, girl.text


def test_paths_can_be_turned_off(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(goforward_pcm()))
    with shipped_plugins_gateway(tmp_path_factory.mktemp("no-paths"), ["whisper-plugin"],
                                 {"AOGSTREAM_LOCAL_AUDIO_PATHS": "0"}) as off:
        r = httpx.post(off.service_url("speech-to-text"), json={"audio": str(wav)},
                       timeout=60)
        assert r.status_code == 400 and "turned off" in r.json()["message"], r.text


def test_loopback_and_audio_sniffing_units():
    assert is_loopback({"client": ("127.0.0.1", 5)}) and is_loopback({"client": ("::1", 5)})
    assert not is_loopback({"client": ("192.0.2.7", 5)}) and not is_loopback({})
    assert is_audio(b"RIFF\0\0\0\0WAVEfmt ", "x") and is_audio(b"ID3\x04", "x")
    assert is_audio(b"fLaC", "x") and is_audio(b"OggS", "x") and is_audio(b"", "a.pcm")
    assert not is_audio(b"-----BEGIN", "key.wav")
