"""OpenAI's audio front doors: `/v1/audio/transcriptions` and `/v1/audio/speech`.

They need more than a flavor template: transcriptions arrive as multipart forms and
leave as json/text/srt/vtt/verbose_json, speech leaves as audio bytes (WAV whole, or
OpenAI's raw 24 kHz `pcm` streamed sentence by sentence when the provider streams).
The form parsing, subtitle and PCM helpers are `aogstream.http.audio`; the call itself
goes through `FlavorCalls` like every other front door (same routing, same fallback).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import trio

from aogstream import errors
from aogstream.asgi_types import Headers, Receive, Scope, Send
from aogstream.convert import PIVOT, ConvertError, TemplateError
from aogstream.engines.pcm import resample
from aogstream.gateway import Route
from aogstream.http import audio
from aogstream.http.asgi import header, parse_object
from aogstream.http.flavor_calls import AogBody, Door, FlavorCalls, send_bytes, strip_sse
from aogstream.http.flavor_errors import template_error
from aogstream.invocation import Frame, Invocation, Response

log = logging.getLogger(__name__)

# OpenAI's own model names stand for "the gateway's default model" of their service.
OPENAI_MODEL_ALIASES = {
    "whisper-1": "speech-to-text", "gpt-4o-transcribe": "speech-to-text",
    "gpt-4o-mini-transcribe": "speech-to-text", "tts-1": "text-to-speech",
    "tts-1-hd": "text-to-speech", "gpt-4o-mini-tts": "text-to-speech",
}
# OpenAI's voices are not local voices: they mean "the default voice".
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova",
                           "sage", "shimmer", "verse", "marin", "cedar"})
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = {"wav": b"audio/wav", "pcm": b"audio/pcm"}
OPENAI_PCM_RATE = 24000  # OpenAI's `pcm`: 24 kHz 16-bit signed little-endian mono
TEXT_PLAIN = b"text/plain; charset=utf-8"


class OpenAIAudio:
    """The two audio endpoints of the `openai` flavor (the front doors hand them over)."""

    def __init__(self, calls: FlavorCalls) -> None:
        self.calls = calls

    def _routed(self, door: Door, request: dict[str, Any], model: str | None
                ) -> tuple[AogBody, list[Route]]:
        """The AOG request built from the form or JSON (with `model` only when the app
        named a real one) and the routes that may serve it."""
        if model:
            request["model"] = model
        aog, aog_obj = self.calls.to_aog(door, json.dumps(request).encode(), request, model,
                                         False)
        return aog, self.calls.gateway.routes(door.service, aog_obj)

    async def transcribe(self, scope: Scope, door: Door, body: bytes,
                         receive: Receive, send: Send) -> None:
        """`POST /v1/audio/transcriptions`: a multipart form with the audio file → AOG
        speech-to-text (base64 audio) → OpenAI's json/text/srt/vtt/verbose_json."""
        form = audio.parse_form(body, header(scope, b"content-type").decode("latin-1"))
        upload = form.get("file")
        if upload is None:
            raise audio.bad("the form has no 'file' field; send the audio file (wav, mp3, "
                            "flac, ogg ...) as a multipart file field named 'file'")
        if not upload.data:
            raise audio.bad(f"the uploaded 'file' ({upload.filename or 'no name'}) is empty; "
                            "send the audio file's bytes")

        def text(name: str) -> str | None:
            part = form.get(name)
            value = part.text().strip() if part is not None else ""
            return value or None

        fmt = text("response_format") or "json"
        if fmt not in TRANSCRIPT_FORMATS:
            raise audio.bad(f"response_format {fmt!r} is not supported; use one of "
                            f"{', '.join(TRANSCRIPT_FORMATS)}")
        if (text("stream") or "").lower() in ("true", "1"):
            raise audio.bad("streamed transcription is not supported here; send the "
                            "request without 'stream'")
        model = text("model")
        if model in OPENAI_MODEL_ALIASES:
            model = None  # "whisper-1": whatever the gateway's default model is
        request: dict[str, Any] = {"file": base64.b64encode(upload.data).decode()}
        for name in ("language", "prompt"):
            if (value := text(name)) is not None:
                request[name] = value
        if (temp := text("temperature")) is not None:
            try:
                request["temperature"] = float(temp)
            except ValueError:
                raise audio.bad(f"'temperature' must be a number from 0 to 1, not "
                                f"{temp!r}") from None
        aog, routes = self._routed(door, request, model)

        async def reply(data: bytes, ctype: bytes, served_by: Headers
                        ) -> None:
            try:
                verbose = json.loads(data)
            except ValueError:
                verbose = None
            if not isinstance(verbose, dict):
                raise errors.GatewayError(errors.INVOKE_FAILED,
                                          "the speech-to-text provider answered no JSON "
                                          "transcript")
            text_out = str(verbose.get("text") or "")
            if fmt == "json":
                out, ctype = json.dumps({"text": text_out}, ensure_ascii=False).encode(), \
                    b"application/json"
            elif fmt == "verbose_json":
                out, ctype = json.dumps(verbose, ensure_ascii=False).encode(), \
                    b"application/json"
            elif fmt == "text":
                out, ctype = (text_out + "\n").encode(), TEXT_PLAIN
            elif fmt == "srt":
                out, ctype = audio.srt(verbose).encode(), TEXT_PLAIN
            else:
                out, ctype = audio.vtt(verbose).encode(), TEXT_PLAIN
            await send_bytes(send, 200, out, ctype, served_by)

        await self.calls.dispatch(door, routes, aog, model, False, receive, send, reply=reply)

    async def speech(self, door: Door, body: bytes, receive: Receive, send: Send) -> None:
        """`POST /v1/audio/speech`: OpenAI's JSON → AOG text-to-speech → audio bytes.

        OpenAI's default format is mp3, which nothing local produces: without
        `response_format` the answer is WAV; asking for a format that cannot be made is
        a 400 listing the ones that can."""
        obj = parse_object(body, 'with "input" (the text), "model" and "voice"')
        text = obj.get("input")
        if not isinstance(text, str) or not text.strip():
            raise audio.bad("'input' must be a non-empty string: the text to speak")
        fmt = obj.get("response_format") or "wav"
        if fmt not in SPEECH_FORMATS:
            raise audio.bad(f"response_format {fmt!r} cannot be produced here; use one of "
                            f"{', '.join(SPEECH_FORMATS)}")
        if obj.get("stream_format") not in (None, "audio"):
            raise audio.bad(f"stream_format {obj['stream_format']!r} is not supported; "
                            "use 'audio' (or leave it out)")
        voice = obj.get("voice")
        if isinstance(voice, dict):  # newer clients may send {"id": "..."}
            voice = voice.get("id")
        if voice is not None and not isinstance(voice, str):
            raise audio.bad(f"'voice' must be a string, not {type(voice).__name__}")
        if voice and voice.lower() in OPENAI_VOICES:
            voice = None  # an OpenAI voice: the default local voice speaks instead
        speed = obj.get("speed")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)):
            raise audio.bad(f"'speed' must be a number from 0.25 to 4.0, not {speed!r}")
        model = obj.get("model") if isinstance(obj.get("model"), str) else None
        if model in OPENAI_MODEL_ALIASES:
            model = None  # "tts-1": the gateway's default text-to-speech model
        request: dict[str, Any] = {"input": text, "response_format": "wav"}
        if voice:
            request["voice"] = voice
        if speed is not None:
            request["speed"] = speed
        aog, routes = self._routed(door, request, model)

        async def stream_pcm(inv: Invocation, route: Route, served_by: Headers
                             ) -> errors.GatewayError | None:
            return await self._stream_pcm(inv, route, door.service, send, served_by)

        async def reply(data: bytes, ctype: bytes, served_by: Headers
                        ) -> None:
            wav = data
            if ctype == b"application/json":  # a provider answering base64 audio in JSON
                try:
                    wav = base64.b64decode(json.loads(data).get("audio") or "")
                except (ValueError, AttributeError):
                    wav = b""
            if wav[:4] != b"RIFF":
                raise errors.GatewayError(errors.INVOKE_FAILED,
                                          "the text-to-speech provider answered no WAV audio")
            if fmt == "pcm":
                pcm, rate = audio.wav_pcm(wav)
                pcm = await trio.to_thread.run_sync(resample, pcm, rate,
                                                    OPENAI_PCM_RATE)
                await send_bytes(send, 200, pcm, SPEECH_FORMATS["pcm"], served_by)
            else:
                await send_bytes(send, 200, wav, SPEECH_FORMATS["wav"], served_by)

        # pcm is OpenAI's low-latency format: streamed sentence by sentence when the
        # provider streams (WAV needs its length up front, so it is sent whole)
        await self.calls.dispatch(door, routes, aog, model, fmt == "pcm", receive, send,
                                  reply=reply, streamer=stream_pcm)

    async def _stream_pcm(self, inv: Invocation, route: Route, service: str, send: Send,
                          served_by: Headers
                          ) -> errors.GatewayError | None:
        """A text-to-speech stream (AOG events with base64 PCM16 `audio` and its
        `sample_rate`) written as OpenAI's `pcm`: raw 24 kHz samples, each piece sent as
        soon as the provider has spoken it. Returns the error when nothing came."""
        try:
            to_aog = self.calls.between(service, PIVOT, route).stream(
                {"Content-Type": "text/event-stream"})
        except TemplateError as exc:
            return template_error(exc, route.provider_name)

        async def pcm_of(item: Response) -> bytes:
            out = bytearray()
            for event in item if isinstance(item, list) else (item,):
                if isinstance(event, Frame):
                    continue  # frames belong to bidi sessions, never to a stream
                try:
                    chunk = to_aog.convert(strip_sse(bytes(event)))
                    obj = json.loads(chunk) if chunk else None
                except (ConvertError, ValueError) as exc:
                    raise errors.GatewayError(errors.TASK_FAILED, "cannot read a speech chunk: "
                                              f"{errors.without_paths(str(exc))}") from None
                if not isinstance(obj, dict) or not obj.get("audio"):
                    continue  # the closing {finished: true} event
                try:
                    pcm = base64.b64decode(obj["audio"])
                    rate = int(obj.get("sample_rate") or OPENAI_PCM_RATE)
                except (ValueError, TypeError) as exc:
                    raise errors.GatewayError(errors.TASK_FAILED,
                                              f"a speech chunk has no PCM audio: {exc}") from None
                out += await trio.to_thread.run_sync(resample, pcm, rate,
                                                     OPENAI_PCM_RATE)
            return bytes(out)

        try:
            first = await inv.responses.receive()
        except trio.EndOfChannel:
            return inv.error or errors.GatewayError(
                errors.PLUGIN_SERVICE_ERROR, f"{route.provider_name}: the speech stream "
                "ended without audio")
        body = await pcm_of(first)  # a bad first chunk is still a proper error status
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", SPEECH_FORMATS["pcm"]), *served_by]})
        try:
            while True:
                if body:
                    await send({"type": "http.response.body", "body": body,
                                "more_body": True})
                try:
                    body = await pcm_of(await inv.responses.receive())
                except trio.EndOfChannel:
                    break
        except errors.GatewayError as err:  # headers are out: all we can do is stop
            log.warning("speech stream cut short: %s", err.message)
        if inv.error is not None:
            log.warning("speech stream cut short: %s", inv.error.message)
        with trio.CancelScope(shield=True):  # or hypercorn never closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None
