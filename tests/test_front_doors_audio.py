"""OpenAI's audio front doors, driven by the official `openai` client.

A real gateway serves whisper-plugin (speech-to-text, Whisper tiny.en) and piper-plugin
(text-to-speech, Piper) with their real engines. `/v1/audio/transcriptions` takes the
client's multipart upload of a human recording ("go forward ten meters") and answers in
each of OpenAI's response formats; `/v1/audio/speech` speaks a sentence that whisper
then has to hear back; `GET /v1/models/{id}` retrieves models. Mistakes (malformed
multipart, no file, empty audio, a too-large body, unknown models and formats) must come
back in OpenAI's error shape so the client raises its own exception types.
"""

from __future__ import annotations

import io
import re
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest
from audio import GOFORWARD_TEXT, goforward_pcm, wav_bytes, word_error_rate
from conftest import Gateway, shipped_plugins_gateway

from aogstream.errors import GatewayError
from aogstream.http.audio import parse_form, srt, vtt

MAX_BODY = 2_000_000  # this gateway's body limit, for the oversized-upload test
SENTENCE = "Please open the window in the kitchen."
PIPER_RATE = 22050
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("front-doors-audio"),
                                 ["whisper-plugin", "piper-plugin"],
                                 {"AOGSTREAM_MAX_BODY_BYTES": str(MAX_BODY)}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120)



@pytest.fixture(scope="module")
def goforward_wav() -> bytes:
    return wav_bytes(goforward_pcm())


def heard(text: str) -> str:
    """Whisper writes numbers as digits; the reference spells them."""
    return text.replace("10", "ten")


# ---- transcriptions --------------------------------------------------------------------

def test_transcription_in_every_response_format(oa: openai.OpenAI, goforward_wav: bytes) -> None:
    upload = ("goforward.wav", goforward_wav, "audio/wav")
    out = {fmt: oa.audio.transcriptions.create(model="whisper-1", file=upload,
                                               response_format=fmt)  # type: ignore[call-overload]
           for fmt in FORMATS}

    assert word_error_rate(GOFORWARD_TEXT, heard(out["json"].text)) <= 0.25, out["json"]
    text = out["text"]
    assert isinstance(text, str) and text.endswith("\n")
    assert heard(text.strip()) == heard(out["json"].text)

    verbose = out["verbose_json"]
    assert verbose.text == out["json"].text and verbose.language == "en"
    assert 2.0 < verbose.duration < 4.0  # the recording is ~2.8 s
    assert verbose.segments and all(0 <= s.start < s.end <= verbose.duration + 0.01
                                    for s in verbose.segments)
    assert " ".join(s.text for s in verbose.segments) == verbose.text

    cue = r"(\d\d:\d\d:\d\d)[,.](\d\d\d) --> (\d\d:\d\d:\d\d)[,.](\d\d\d)"
    srt_text, vtt_text = out["srt"], out["vtt"]
    assert isinstance(srt_text, str) and srt_text.startswith("1\n")
    assert re.search(cue.replace("[,.]", ","), srt_text)
    assert isinstance(vtt_text, str) and vtt_text.startswith("WEBVTT\n\n")
    assert re.search(cue.replace("[,.]", r"\."), vtt_text)
    for subtitle in (srt_text, vtt_text):
        assert verbose.segments[0].text in subtitle


def test_transcription_with_the_real_model_name_and_options(gw: Gateway,
                                                           goforward_wav: bytes) -> None:
    """The same door under /aog/v0.2/api_flavors/openai, with a real model name and
    OpenAI's optional fields."""
    oa = openai.OpenAI(base_url=f"{gw.url}/aog/v0.2/api_flavors/openai/v1", api_key="x",
                       max_retries=0, timeout=120)
    r = oa.audio.transcriptions.with_raw_response.create(
        model="whisper-tiny.en", file=("speech.wav", goforward_wav, "audio/wav"),
        language="en", prompt="Robot commands.", temperature=0)
    assert r.http_response.headers["x-aogstream-plugin"] == "whisper-plugin"
    assert word_error_rate(GOFORWARD_TEXT, heard(r.parse().text)) <= 0.25


# ---- speech ----------------------------------------------------------------------------

def test_speech_is_heard_back_by_whisper(oa: openai.OpenAI) -> None:
    spoken = oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE,
                                    response_format="wav")
    assert spoken.response.headers["content-type"] == "audio/wav"
    wav = spoken.content
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, PIPER_RATE)
        seconds = w.getnframes() / PIPER_RATE
    assert 1.0 < seconds < 6.0
    text = oa.audio.transcriptions.create(model="whisper-1",
                                          file=("speech.wav", wav, "audio/wav")).text
    assert word_error_rate(SENTENCE, text) < 0.15, text

    # no response_format: WAV too (OpenAI's default, mp3, is not produced here)
    default = oa.audio.speech.create(model="tts-1", voice="nova", input=SENTENCE)
    assert default.response.headers["content-type"] == "audio/wav"
    assert default.content[:4] == b"RIFF"

    # pcm is OpenAI's: raw 24 kHz 16-bit mono (Piper's timing varies a little from one
    # synthesis to the next, so the length is compared loosely; the transcript is the proof)
    pcm = oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE,
                                 response_format="pcm")
    assert pcm.response.headers["content-type"] == "audio/pcm"
    assert pcm.content[:4] != b"RIFF"
    assert abs(len(pcm.content) / 2 / 24000 - seconds) < 0.15 * seconds
    text = oa.audio.transcriptions.create(
        model="whisper-1", file=("pcm.wav", wav_bytes(pcm.content, 24000), "audio/wav")).text
    assert word_error_rate(SENTENCE, text) < 0.15, text


def test_pcm_speech_streams_sentence_by_sentence(oa: openai.OpenAI) -> None:
    """OpenAI's pcm is its low-latency format: the first sentence's audio arrives while
    the later ones are still being spoken (Piper streams one chunk per sentence)."""
    sentences = ["The weather is nice today.", "Please open the window.",
                 "Turn off the lights in the kitchen."]
    arrivals: list[float] = []
    pcm = b""
    t0 = time.monotonic()
    with oa.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=" ".join(sentences),
            response_format="pcm") as r:
        assert r.headers["content-type"] == "audio/pcm"
        for chunk in r.iter_bytes(4096):
            arrivals.append(time.monotonic() - t0)
            pcm += chunk
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 24000 > 3.0
    assert arrivals[-1] - arrivals[0] > 0.1, arrivals  # not one blob at the end
    print(f"pcm stream: first audio after {arrivals[0]:.2f} s, last after {arrivals[-1]:.2f} s")
    text = oa.audio.transcriptions.create(
        model="whisper-1", file=("pcm.wav", wav_bytes(pcm, 24000), "audio/wav")).text
    assert word_error_rate(" ".join(sentences), text) < 0.15, text


def test_speech_with_a_real_voice_and_speed(oa: openai.OpenAI) -> None:
    normal = oa.audio.speech.create(model="en_US-joe-medium", voice="en_US-joe-medium",
                                    input=SENTENCE, response_format="wav").content
    fast = oa.audio.speech.create(model="tts-1", voice="echo", input=SENTENCE,
                                  response_format="wav", speed=1.5).content
    assert len(fast) < 0.85 * len(normal)


# ---- models ----------------------------------------------------------------------------

def test_models_retrieve(oa: openai.OpenAI) -> None:
    listed = {m.id for m in oa.models.list()}
    assert {"whisper-tiny.en", "en_US-joe-medium"} <= listed
    m = oa.models.retrieve("whisper-tiny.en")
    assert m.id == "whisper-tiny.en" and m.object == "model"
    assert oa.models.retrieve("whisper-1").id == "whisper-1"  # OpenAI's name: the default
    with pytest.raises(openai.NotFoundError) as exc:
        oa.models.retrieve("no-such-model")
    assert exc.value.code == "model_not_found" and "whisper-tiny.en" in exc.value.message


# ---- errors ----------------------------------------------------------------------------

def test_transcription_errors_raise_the_client_exceptions(oa: openai.OpenAI, gw: Gateway,
                                                          goforward_wav: bytes) -> None:
    upload = ("speech.wav", goforward_wav, "audio/wav")
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b"", "audio/wav"))
    assert "empty" in exc.value.message
    with pytest.raises(openai.NotFoundError) as exc:
        oa.audio.transcriptions.create(model="no-such-model", file=upload)
    assert exc.value.code == "model_not_found" and "no-such-model" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.transcriptions.create(model="whisper-1", file=upload,
                                       response_format="xml")  # type: ignore[arg-type]
    assert "json, text, srt, verbose_json, vtt" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.transcriptions.create(model="whisper-1", file=upload,
                                       temperature="warm")  # type: ignore[arg-type]
    assert "temperature" in exc.value.message
    with pytest.raises(openai.APIStatusError) as big:
        oa.audio.transcriptions.create(model="whisper-1",
                                       file=("big.wav", bytes(MAX_BODY + 1), "audio/wav"))
    assert big.value.status_code == 413 and "AOGSTREAM_MAX_BODY_BYTES" in big.value.message

    url = f"{gw.url}/v1/audio/transcriptions"
    # no file field at all (a multipart form with only the model)
    r = httpx.post(url, files={"model": (None, "whisper-1")}, timeout=30)
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"], r.text
    # not multipart
    r = httpx.post(url, json={"model": "whisper-1", "file": "x"}, timeout=30)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    # malformed multipart: the boundary never appears, or the body is cut short
    for body in (b"garbage", b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nab"):
        r = httpx.post(url, content=body, timeout=30,
                       headers={"content-type": "multipart/form-data; boundary=XyZ"})
        err = r.json()["error"]
        assert r.status_code == 400 and err["type"] == "invalid_request_error", r.text
        assert "multipart" in err["message"]
    # bytes that are no audio at all: the plugin says so, still as a 4xx OpenAI error
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.transcriptions.create(model="whisper-1",
                                       file=("notes.txt", b"not audio at all", "text/plain"))
    assert exc.value.message


def test_speech_errors_raise_the_client_exceptions(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.speech.create(model="tts-1", voice="alloy", input="Hi", response_format="mp3")
    assert "wav, pcm" in exc.value.message and "mp3" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        oa.audio.speech.create(model="tts-1", voice="alloy", input="  ")
    assert "'input'" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        oa.audio.speech.create(model="no-such-voice-model", voice="alloy", input="Hi")
    with pytest.raises(openai.BadRequestError) as exc:  # not an OpenAI voice, not installed
        oa.audio.speech.create(model="tts-1", voice="nobody", input="Hi")
    assert "nobody" in exc.value.message and "en_US-joe-medium" in exc.value.message


# ---- the pieces, directly ----------------------------------------------------------------

def form(*parts: bytes, boundary: bytes = b"b0und") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + \
        b"--" + boundary + b"--\r\n"


def test_multipart_parser_edge_cases() -> None:
    tricky = b"\r\n--b0un\r\n\r\n--\x00\xff\r"  # CRLFs, a near-boundary, binary, a lone CR
    body = b"preamble\r\n" + form(
        b'Content-Disposition: form-data; name="file"; filename="a b.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + tricky,
        b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1',
        b"Content-Disposition: form-data; name=\"language\"\r\n\r\n",
        b"Content-Disposition: form-data; name*=UTF-8''prompt\r\n\r\nh\xc3\xa9") + b"epilogue"
    fields = parse_form(body, 'multipart/form-data; boundary="b0und"')
    assert fields["file"].data == tricky and fields["file"].filename == "a b.wav"
    assert fields["file"].content_type == "audio/wav"
    assert fields["model"].text() == "whisper-1" and fields["language"].data == b""
    assert fields["prompt"].text() == "hé"

    for ctype, raw, words in (
            ("application/json", b"{}", "multipart/form-data"),
            ("multipart/form-data", form(b""), "boundary"),
            ("multipart/form-data; boundary=zz", form(b""), "never appears"),
            ("multipart/form-data; boundary=b0und",
             form(b"Content-Disposition: form-data\r\n\r\nx"), "no Content-Disposition name"),
            ("multipart/form-data; boundary=b0und",
             form(b'Content-Disposition: attachment; name="f"\r\n\r\nx'), "form-data"),
            ("multipart/form-data; boundary=b0und",
             b'--b0und\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
             "closing boundary"),
            ("multipart/form-data; boundary=b0und",
             b"--b0und\nContent-Disposition: form-data; name=\"x\"\n\nv\n--b0und--",
             "CRLF")):
        with pytest.raises(GatewayError) as exc:
            parse_form(raw, ctype)
        assert exc.value.status == 400 and words in exc.value.message, (raw, exc.value.message)


def test_subtitles_from_a_verbose_transcript() -> None:
    verbose = {"text": "a b", "segments": [{"id": 0, "start": 0, "end": 1.25, "text": " a"},
                                           {"id": 1, "start": 3661.5, "end": 3662, "text": "b"}]}
    assert srt(verbose) == ("1\n00:00:00,000 --> 00:00:01,250\na\n\n"
                            "2\n01:01:01,500 --> 01:01:02,000\nb\n\n")
    assert vtt(verbose) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\na\n\n"
                            "01:01:01.500 --> 01:01:02.000\nb\n\n")
    assert srt({"text": "", "segments": []}) == ""
    # a provider's odd fields cost a cue its time or its place, never the answer
    odd = {"text": "whole", "duration": "2.5",
           "segments": ["junk", {"start": "1.5", "end": None, "text": "seg"}]}
    assert srt(odd) == "1\n00:00:01,500 --> 00:00:00,000\nseg\n\n"
    assert vtt({"text": " whole ", "duration": True, "segments": "junk"}) == \
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.000\nwhole\n\n"
