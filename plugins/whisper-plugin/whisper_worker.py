"""Engine process of whisper-plugin: faster-whisper (Whisper on CTranslate2) behind the
worker kit's loopback HTTP. Runs in the engine's own virtualenv.

`/transcribe` takes `{audio_b64}` (an audio file; PyAV decodes it and resamples any
rate to Whisper's 16 kHz) or `{pcm_b64, sample_rate}` (raw PCM16 mono), plus
`language` and `beam_size`, and answers `{language, duration, segments: [{start, end,
text}]}` with times in seconds. Audio that cannot be decoded is the caller's fault
(HTTP 400), never a crash of the engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local folders; never ask a hub

import av
import numpy as np
from engine_worker import ClientError, base_args, serve
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES

RATE = 16000  # what Whisper's feature extractor expects
MAX_AUDIO_S = 15 * 60  # ~80 s of transcribing on 2 cores: within the 120 s timeout
ENGLISH = {"", "en", "en-us", "en_us", "en-gb", "en_gb", "english"}


def pcm16_to_float(raw: bytes, rate: int) -> np.ndarray:
    """Raw little-endian PCM16 mono → float32 in [-1, 1] at 16 kHz (linear interpolation,
    which is plenty for speech recognition and needs nothing beyond numpy)."""
    if len(raw) // 2 > MAX_AUDIO_S * rate:
        raise ClientError(f"audio is longer than {MAX_AUDIO_S // 60} minutes; "
                          f"send it in shorter pieces")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if rate != RATE and samples.size:
        n_out = max(1, round(samples.size * RATE / rate))
        src_t = np.arange(samples.size, dtype=np.float64) / rate
        dst_t = np.arange(n_out, dtype=np.float64) / RATE
        samples = np.interp(dst_t, src_t, samples).astype(np.float32)
    return samples


def _frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """The audio frames of the first audio stream, skipping damaged ones (as
    faster-whisper does) instead of failing the whole file."""
    it = container.decode(audio=0)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def file_to_float(raw: bytes) -> np.ndarray:
    """An audio file's bytes (any container/codec PyAV knows) → float32 16 kHz mono.

    This is faster_whisper.decode_audio without its `metadata_errors` argument, which
    PyAV 19 no longer accepts (faster-whisper 1.2.1 pins only av>=11, so a fresh install
    gets a PyAV its own helper cannot call). It also stops at MAX_AUDIO_S, so a small
    but very long file cannot take the engine's memory and time."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    parts: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(raw), mode="r") as container:
            if not container.streams.audio:
                raise ClientError("could not decode audio: the file has no audio stream")
            for frame in itertools.chain(_frames(container), [None]):
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)
                    parts.append(pcm)
                    total += pcm.size
                if total > MAX_AUDIO_S * RATE:
                    raise ClientError(f"audio is longer than {MAX_AUDIO_S // 60} minutes; "
                                      f"send it in shorter pieces")
    except ClientError:
        raise
    except Exception as exc:  # PyAV raises many error kinds for bad input
        raise ClientError(f"could not decode audio: {type(exc).__name__}: {exc}; send a "
                          f"wav/mp3/flac/ogg/... file, or raw PCM16 with format "
                          f"\"pcm\" and sample_rate") from exc
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32) / 32768.0


def b64(body: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(body[key], validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ClientError(f"could not decode audio: {key} is not base64 ({exc})") from exc


def main() -> None:
    args = base_args("faster-whisper speech-to-text engine").parse_args()
    model = WhisperModel(args.model, device="cpu", compute_type="int8",
                         cpu_threads=args.threads or 0, num_workers=1)
    multilingual = bool(model.model.is_multilingual)
    # Warm up once (first decode allocates buffers), so the first request is not slower.
    list(model.transcribe(np.zeros(RATE // 2, dtype=np.float32), language="en",
                          beam_size=1, vad_filter=False)[0])

    def language_of(body: dict[str, Any]) -> str | None:
        lang = str(body.get("language") or "").strip().lower()
        if lang in ENGLISH:
            return "en"
        if not multilingual:
            raise ClientError(f"{args.name} is English-only (a Whisper .en model): language "
                              f"must be \"en\" or left out, not {lang!r}")
        code = lang.split("-")[0].split("_")[0]
        if code == "auto":
            return None
        if code not in _LANGUAGE_CODES:
            raise ClientError(f"unknown language {lang!r}: use a two-letter Whisper code "
                              f"such as \"en\", \"de\" or \"auto\"")
        return code

    def transcribe(body: dict[str, Any]) -> dict[str, Any]:
        language = language_of(body)
        if body.get("pcm_b64") is not None:
            rate = body.get("sample_rate") or RATE
            if not isinstance(rate, int) or rate <= 0:
                raise ClientError("sample_rate must be a positive integer")
            audio = pcm16_to_float(b64(body, "pcm_b64"), rate)
        elif body.get("audio_b64") is not None:
            audio = file_to_float(b64(body, "audio_b64"))
        else:
            raise ClientError("send audio_b64 (an audio file) or pcm_b64 + sample_rate")
        if audio.size == 0:
            raise ClientError("could not decode audio: it holds no audio samples")
        beam = int(body.get("beam_size") or 1)
        segments, info = model.transcribe(audio, language=language, beam_size=beam,
                                          vad_filter=False, condition_on_previous_text=False)
        out = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
               for s in segments]
        return {"language": info.language, "duration": float(info.duration), "segments": out}

    serve({"/transcribe": transcribe}, port=args.port,
          info={"model": args.name, "multilingual": multilingual, "sample_rate": RATE})


if __name__ == "__main__":
    main()
