"""OpenAI's Realtime transcription protocol as pure state: no socket, no plugin, no clock.

`bidi.openai_realtime` runs the socket and the plugin tasks; everything here is what
the protocol says, so it is checked apart from I/O (as hypercorn keeps its protocol
state machines apart from its server loop):

* `Settings` is what `session.update` / `transcription_session.update` sets, and
  `apply_update` checks an update in either generation's shape and applies it whole or
  not at all (OpenAI discards a bad update entirely); `session_object` is the session
  as either generation shows it.
* `decode_audio` / `audio_ms` read `input_audio_buffer.append`'s base64 PCM16 or G.711.
* `Item` turns the engine's partial and final results into append-only deltas.
* `BadEvent` is a refused client event: one `error` event, the socket stays open.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from aogstream.safejson import short, type_name

PATH = "/v1/realtime"
SERVICE = "speech-to-text-ws"
ENGINE_RATE = 16000
PCM_RATE = 24000
MIN_COMMIT_MS = 100
MAX_APPEND_SECONDS = 60
"""The most audio one append may carry: the realtime engines hold at most this much
unprocessed audio per session, and a bigger append would only fail there, later."""
SESSION_SECONDS = 3600
"""OpenAI's session lifetime (60 minutes); the gateway's is `Config.realtime_session_seconds`."""


def expired_message(seconds: float) -> str:
    """OpenAI's `session_expired` message, for a limit of `seconds`."""
    if seconds >= 60 and seconds % 60 == 0:
        count, unit = f"{seconds / 60:g}", "minute"
    else:
        count, unit = f"{seconds:g}", "second"
    return f"Your session hit the maximum duration of {count} {unit}{'' if count == '1' else 's'}."
# OpenAI's names for "the service's default model" (http/openai_audio.py's aliases plus
# the realtime-only ones)
OPENAI_TRANSCRIBE_MODELS = frozenset({
    "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe",
    "gpt-live-transcribe", "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
})
CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                 "input_audio_buffer.commit", "input_audio_buffer.clear")
VAD_TYPES = ("server_vad", "semantic_vad")
DEFAULT_VAD: dict[str, Any] = {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 500}
# format: (rate of the bytes, bytes per sample, G.711 law or "")
FORMATS = {"audio/pcm": (PCM_RATE, ""), "audio/pcmu": (8000, "ulaw"),
           "audio/pcma": (8000, "alaw")}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}



def new_id(prefix: str) -> str:
    """An OpenAI-style id (`sess_...`, `item_...`, `event_...`)."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"



class BadEvent(Exception):
    """A client event the session refuses: becomes one `error` event, the socket stays."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def wants_beta(scope_headers: list[tuple[bytes, bytes]], subprotocols: list[str]) -> bool:
    """The beta generation: `OpenAI-Beta: realtime=v1` or the beta subprotocol."""
    for k, v in scope_headers:
        if k == b"openai-beta" and b"realtime=v1" in v.replace(b" ", b""):
            return True
    return "openai-beta.realtime-v1" in subprotocols


def _words(text: str) -> list[str]:
    return text.split()


class Item:
    """One transcribed turn: its id, its finals so far and what deltas have said."""

    def __init__(self, item_id: str, previous: str | None, begin_ms: int) -> None:
        self.id = item_id
        self.previous = previous
        self.begin_ms = begin_ms
        self.end_ms = begin_ms
        self.finals: list[str] = []
        self.partial = ""
        self.sent = ""  # the concatenation of the deltas sent so far
        self.committed = False

    def candidate(self, partial: str) -> str:
        return " ".join(t for t in (*self.finals, partial) if t)

    def transcript(self) -> str:
        return self.candidate(self.partial)

    def stable_delta(self, partial: str, final: bool) -> str:
        """The new append-only text once `partial` (or a final) arrives, or ""."""
        new = self.candidate(partial)
        if final:
            stable = new
        else:  # the words this partial and the previous one agree on
            a, b = _words(self.candidate(self.partial)), _words(new)
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            stable = " ".join(b[:n])
        self.partial = "" if final else partial
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""
        if self.sent and stable[len(self.sent)] != " ":
            return ""  # a word grew: wait until it is whole
        delta = stable[len(self.sent):]
        self.sent = stable
        return delta


@attrs.frozen
class Settings:
    """What the session updates set: the input format, the transcription model,
    language and prompt, turn detection (None: the client commits), noise reduction and
    `include`, as last accepted."""

    format: str = "audio/pcm"
    model: str | None = None
    language: str = ""
    prompt: str = ""
    turn_detection: dict[str, Any] | None = attrs.field(factory=lambda: dict(DEFAULT_VAD))
    noise_reduction: dict[str, Any] | None = None
    include: list[str] | None = None


def session_object(settings: Settings, session_id: str, expires_at: int,
                   beta: bool) -> dict[str, Any]:
    """The session as `*.created` / `*.updated` show it, in the generation's shape."""
    transcription = {"model": settings.model or "whisper-1",
                     "language": settings.language or None, "prompt": settings.prompt}
    common = {"id": session_id, "object": "realtime.transcription_session",
              "expires_at": expires_at, "include": settings.include}
    if beta:
        beta_format = next(k for k, v in BETA_FORMATS.items() if v == settings.format)
        return {**common, "modalities": ["text"], "input_audio_format": beta_format,
                "input_audio_transcription": transcription,
                "turn_detection": settings.turn_detection,
                "input_audio_noise_reduction": settings.noise_reduction}
    fmt: dict[str, Any] = {"type": settings.format}
    if settings.format == "audio/pcm":
        fmt["rate"] = PCM_RATE
    return {"type": "transcription", **common, "audio": {"input": {
        "format": fmt, "transcription": transcription,
        "noise_reduction": settings.noise_reduction,
        "turn_detection": settings.turn_detection}}}


def apply_update[R](settings: Settings, session: object, *, beta_shape: bool,
                 route_for: Callable[[str | None], R]) -> tuple[Settings, R | None]:
    """`settings` with an update applied whole, and the route of a newly named model
    (None: the model was not named); raises BadEvent naming the first bad field.
    `route_for` resolves a model (raising BadEvent for an unknown one) at the point of
    the checks where OpenAI reports it."""
    if not isinstance(session, dict):
        raise BadEvent("invalid_type", "Invalid type for 'session': expected an object, "
                       f"but got {type_name(session)} instead.", "session")
    if beta_shape:
        fmt_raw = session.get("input_audio_format")
        fmt: str | None = None
        if fmt_raw is not None:
            fmt = BETA_FORMATS.get(fmt_raw) if isinstance(fmt_raw, str) else None
            if fmt is None:
                raise BadEvent("invalid_value", f"Invalid value: {short(fmt_raw)}. "
                               f"Supported values are: {', '.join(BETA_FORMATS)}.",
                               "session.input_audio_format")
        audio_in = {"transcription": session.get("input_audio_transcription", ...),
                    "turn_detection": session.get("turn_detection", ...),
                    "noise_reduction": session.get("input_audio_noise_reduction", ...)}
        names = {"transcription": "session.input_audio_transcription",
                 "turn_detection": "session.turn_detection",
                 "noise_reduction": "session.input_audio_noise_reduction"}
    else:
        stype = session.get("type")
        if stype is not None and stype != "transcription":
            raise BadEvent("invalid_value", f"this gateway serves transcription sessions "
                           f"only; session.type must be 'transcription', not "
                           f"{short(stype)}", "session.type")
        audio = session.get("audio") or {}
        if not isinstance(audio, dict) or not isinstance(audio.get("input") or {}, dict):
            raise BadEvent("invalid_type", "Invalid type for 'session.audio.input': "
                           "expected an object.", "session.audio.input")
        given = audio.get("input") or {}
        fmt = None
        if given.get("format") is not None:
            fmt = ga_format(given["format"])
        audio_in = {k: given.get(k, ...) for k in
                    ("transcription", "turn_detection", "noise_reduction")}
        where = "session.audio.input."
        names = {k: where + k for k in audio_in}
    model, language, prompt = settings.model, settings.language, settings.prompt
    route: R | None = None
    tr = audio_in["transcription"]
    if tr is not ... and tr is not None:
        if not isinstance(tr, dict):
            raise BadEvent("invalid_type", f"Invalid type for '{names['transcription']}'"
                           ": expected an object.", names["transcription"])
        for key in ("model", "language", "prompt"):
            if tr.get(key) is not None and not isinstance(tr[key], str):
                raise BadEvent("invalid_type", f"Invalid type for "
                               f"'{names['transcription']}.{key}': expected a string, "
                               f"but got {type_name(tr[key])} instead.",
                               f"{names['transcription']}.{key}")
        if "model" in tr:
            model = tr.get("model") or None
            try:
                route = route_for(model)
            except BadEvent as exc:
                exc.param = f"{names['transcription']}.model"
                raise
        language = tr.get("language") or "" if "language" in tr else language
        prompt = tr.get("prompt") or "" if "prompt" in tr else prompt
    td = audio_in["turn_detection"]
    if td is not ... and td is not None:
        if not isinstance(td, dict) or td.get("type", "server_vad") not in VAD_TYPES:
            raise BadEvent("invalid_value", f"'{names['turn_detection']}' must be null "
                           "or an object with type 'server_vad' or 'semantic_vad'",
                           names["turn_detection"] + ".type")
    nr = audio_in["noise_reduction"]
    if nr is not ... and nr is not None and not isinstance(nr, dict):
        raise BadEvent("invalid_type", f"Invalid type for '{names['noise_reduction']}': "
                       "expected an object or null.", names["noise_reduction"])
    include = session.get("include", ...)
    if include is not ... and include is not None and not (
            isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise BadEvent("invalid_type", "Invalid type for 'session.include': expected a "
                       "list of strings.", "session.include")
    # all checked: apply
    updated = attrs.evolve(settings, model=model, language=language, prompt=prompt)
    if fmt is not None:
        updated = attrs.evolve(updated, format=fmt)
    if td is not ...:
        updated = attrs.evolve(updated, turn_detection=None if td is None
                               else {**DEFAULT_VAD, **td})
    if nr is not ...:
        updated = attrs.evolve(updated, noise_reduction=nr)
    if include is not ...:
        updated = attrs.evolve(updated, include=include)
    return updated, route


def ga_format(fmt: object) -> str:
    """The GA `session.audio.input.format` object as a FORMATS key."""
    param = "session.audio.input.format"
    if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
        raise BadEvent("invalid_value", "Invalid value for 'session.audio.input.format': "
                       "expected {\"type\": \"audio/pcm\", \"rate\": 24000}, "
                       "{\"type\": \"audio/pcmu\"} or {\"type\": \"audio/pcma\"}.",
                       param + ".type")
    rate = fmt.get("rate")
    if fmt["type"] == "audio/pcm" and rate is not None and rate != PCM_RATE:
        raise BadEvent("integer_below_min_value" if isinstance(rate, int)
                       and rate < PCM_RATE else "invalid_value",
                       f"Invalid 'session.audio.input.format.rate': {short(rate)}. "
                       f"Expected 24000 (PCM16 audio is always 24 kHz).",
                       param + ".rate")
    return str(fmt["type"])


def decode_audio(fmt: str, audio: object) -> bytes:
    """An append's base64 `audio` in format `fmt`, as raw bytes; BadEvent when it is not
    base64 or not whole PCM16 samples."""
    law = FORMATS[fmt][1]
    what = "G.711 at 8kHz" if law else "mono PCM16 at 24kHz"
    bad = BadEvent("invalid_value", f"Invalid 'audio'. Expected base64-encoded audio "
                   f"bytes ({what}) but got an invalid value.", "audio")
    if not isinstance(audio, str):
        raise bad
    try:
        raw = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if not law and len(raw) % 2:
        raise bad
    return raw


def audio_ms(fmt: str, raw: bytes) -> float:
    """How many milliseconds `raw` audio in format `fmt` lasts."""
    rate, law = FORMATS[fmt]
    return len(raw) * 1000 / (rate if law else 2 * rate)
