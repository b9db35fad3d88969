"""Engine process of whisper-plugin: faster-whisper (Whisper on CTranslate2) behind the
worker kit's loopback HTTP. Runs in the engine's own virtualenv.

`/transcribe` takes `{audio_b64}` (an audio file; PyAV decodes it and resamples any
rate to Whisper's 16 kHz) or `{pcm_b64, sample_rate}` (raw PCM16 mono), plus
`language` and `beam_size`, and answers `{language, duration, segments: [{start, end,
text}]}` with times in seconds. Audio that cannot be decoded is the caller's fault
(HTTP 400), never a crash of the engine.

`/stream_step` is one step of a realtime session (the plugin keeps the session; see
`whisper_realtime.py`): it takes the session's current window of raw PCM16 (bounded by
the plugin), runs faster-whisper's bundled silero VAD over it, and decodes the open
utterance (from its first speech to the window's end, or to where VAD heard it end)
with word timestamps. It is stateless, so a session that ends costs the engine nothing
and one step is the most the engine ever spends on a client that left.
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
from faster_whisper.vad import get_vad_model

RATE = 16000  # what Whisper's feature extractor expects
MAX_AUDIO_S = 15 * 60  # ~80 s of transcribing on 2 cores: within the 120 s timeout
ENGLISH = {"", "en", "en-us", "en_us", "en-gb", "en_gb", "english"}
VAD_CHUNK = 512  # samples per silero VAD decision (32 ms at 16 kHz)
VAD_ON, VAD_OFF = 0.5, 0.35  # speech starts above VAD_ON, ends below VAD_OFF (hysteresis)
MAX_STEP_S = 40  # a realtime window is bounded by the plugin well below this
PAD_S = 0.2  # audio kept before the first speech and after the last when decoding


def speech_runs(probs: np.ndarray) -> list[tuple[int, int]]:
    """Speech as [start, end) VAD chunk indices, with hysteresis between VAD_ON and VAD_OFF."""
    runs: list[tuple[int, int]] = []
    start = -1
    for i, p in enumerate(probs):
        if start < 0 and p >= VAD_ON:
            start = i
        elif start >= 0 and p < VAD_OFF:
            runs.append((start, i))
            start = -1
    if start >= 0:
        runs.append((start, len(probs)))
    return runs


def utterance(runs: list[tuple[int, int]], n_chunks: int, min_gap: int, final: bool,
              split: bool) -> tuple[int, int, bool] | None:
    """The first utterance in the window as (start chunk, end chunk, ended), or None
    when there is no speech. It ends at the first pause of at least `min_gap` chunks
    (including a pause that reaches the window's end), at the last speech when `final`
    (the client finished), or, when `split` (the plugin's window is full of speech
    with no such pause), at the last shorter pause, else at the window's end."""
    if not runs:
        return None
    start, end = runs[0]
    for s, e in runs[1:]:
        if s - end >= min_gap:
            return start, end, True
        end = e
    if n_chunks - end >= min_gap or final:
        return start, end, True
    if split:
        pauses = [e for (_, e), (s, _) in itertools.pairwise(runs) if s > e]
        return start, (pauses[-1] if pauses else n_chunks), True
    return start, n_chunks, False


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

    vad = get_vad_model()  # silero VAD, shipped as ONNX inside faster-whisper
    vad(np.zeros(VAD_CHUNK, dtype=np.float32))

    def stream_step(body: dict[str, Any]) -> dict[str, Any]:
        """One realtime step: VAD over the window, then decode its open utterance.

        Answers `{speech: false}` when the window holds no speech, else `{speech: true,
        start, end, ended, words: [{start, end, word}]}` with times in seconds from the
        window's start; `ended` says VAD heard the utterance end at `end` (or the
        client finished)."""
        language = language_of(body)
        rate = body.get("sample_rate") or RATE
        if not isinstance(rate, int) or rate <= 0:
            raise ClientError("sample_rate must be a positive integer")
        audio = pcm16_to_float(b64(body, "pcm_b64"), rate)
        if audio.size > MAX_STEP_S * RATE:
            raise ClientError(f"a realtime window is at most {MAX_STEP_S} s")
        final = bool(body.get("final"))
        min_gap = max(1, round(float(body.get("min_silence_s") or 0.6) * RATE / VAD_CHUNK))
        n = audio.size // VAD_CHUNK
        if n == 0:
            return {"speech": False}
        probs = np.asarray(vad(audio[: n * VAD_CHUNK])).reshape(-1)
        utt = utterance(speech_runs(probs), n, min_gap, final, bool(body.get("split")))
        if utt is None:
            return {"speech": False}
        c0, c1, ended = utt
        start_s, end_s = c0 * VAD_CHUNK / RATE, c1 * VAD_CHUNK / RATE
        if c1 >= n:
            end_s = audio.size / RATE
        lo = max(0.0, start_s - PAD_S)
        hi = min(audio.size / RATE, end_s + PAD_S) if ended else audio.size / RATE
        texts: list[str] = []
        if hi - lo >= 0.3:
            # no word timestamps: on tiny.en they cost ~6x the decode itself and make
            # whisper run on past the speech ("Thanks for watching!")
            prompt = str(body.get("prompt") or "").strip() or None
            segments, _ = model.transcribe(
                audio[round(lo * RATE): round(hi * RATE)], language=language, beam_size=1,
                vad_filter=False, condition_on_previous_text=False, without_timestamps=True,
                initial_prompt=prompt)
            for seg in segments:
                if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                    continue  # whisper's own verdict: this was not speech
                texts.append(seg.text.strip())
        return {"speech": True, "start": round(start_s, 3), "end": round(end_s, 3),
                "ended": ended, "text": " ".join(t for t in texts if t)}

    serve({"/transcribe": transcribe, "/stream_step": stream_step}, port=args.port,
          info={"model": args.name, "multilingual": multilingual, "sample_rate": RATE})


if __name__ == "__main__":
    main()
