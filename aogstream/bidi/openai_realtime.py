"""OpenAI's Realtime transcription protocol on `/v1/realtime`, served by the same
realtime speech plugins as AOG's `speech-to-text-ws` socket.

The client speaks OpenAI's events (JSON text frames); each *turn* of audio becomes one
task of the realtime plugin (AOG's run-task, PCM frames, finish-task), and the plugin's
`result-generated` sentences come back as OpenAI's item and transcription events:

* Both generations. GA (the SDK's default): `session.created`, `session.update` with
  `session.type: "transcription"` and the audio config under `session.audio.input`,
  items announced by `conversation.item.added` + `.done`. Beta (`OpenAI-Beta:
  realtime=v1`, or the `openai-beta.realtime-v1` subprotocol): `transcription_session.*`
  with flat `input_audio_*` fields, items announced by `conversation.item.created`.
  Either update event is answered in its own name, whatever the generation.
* Audio: `input_audio_buffer.append` carries base64 PCM16 at 24 kHz (or G.711 at
  8 kHz); a stateful resampler (`bidi.resample`) turns it into the engine's 16 kHz as it
  arrives, so the plugin decodes while the client talks.
* Turns. With `turn_detection: null` a turn is everything appended until the client's
  `input_audio_buffer.commit`. With `server_vad` (the default, and `semantic_vad`) the
  engine's own end-of-utterance detection (whisper's silero VAD, pocketsphinx's
  endpointer) ends each item: its first words send `speech_started`, its final sends
  `speech_stopped`, `committed`, the item events and `completed`. The VAD's knobs
  (`threshold`, `silence_duration_ms`, ...) are accepted and echoed, but the engine's
  endpointing decides. A client `commit` ends the turn at once in either mode.
* Deltas are append-only, as OpenAI's clients require: only the words two consecutive
  partial results agree on (and every final) are sent, so a revised partial never has
  to be taken back; `completed.transcript` is the engine's final text. Deltas flow while
  the client is still talking (before the commit), carrying the id of the item they
  will belong to.
* Errors are `error` events on the open socket with OpenAI's codes (`invalid_value` on
  `type` for an unknown event, `invalid_value` on `audio` for audio that is not base64
  PCM16 or is over `MAX_APPEND_SECONDS`, `input_audio_buffer_commit_empty`, ...), the
  client's `event_id` echoed; only a connect-time refusal (a conversation session, an
  unknown model in the URL) closes, with 4000, as OpenAI does.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import trio

from aogstream import errors, safejson
from aogstream.asgi_types import Scope
from aogstream.bidi.resample import StreamResampler, g711_to_pcm16
from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.gateway import Gateway, Route
from aogstream.invocation import Frame, Invocation, Mode
from aogstream.safejson import short, type_name

log = logging.getLogger(__name__)

PATH = "/v1/realtime"
SERVICE = "speech-to-text-ws"
ENGINE_RATE = 16000
PCM_RATE = 24000
MIN_COMMIT_MS = 100
MAX_APPEND_SECONDS = 60
"""The most audio one append may carry: the realtime engines hold at most this much
unprocessed audio per session, and a bigger append would only fail there, later."""
SESSION_SECONDS = 3600
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


class Turn:
    """One plugin task: the audio since the last commit (or a whole VAD stream)."""

    def __init__(self, number: int, route: Route, offset_ms: int, fmt: str) -> None:
        self.number = number
        self.route = route
        self.offset_ms = offset_ms
        rate, self.law = FORMATS[fmt]
        self.resampler = StreamResampler(8000 if self.law else rate, ENGINE_RATE)
        self.inv: Invocation | None = None
        self.scope = trio.CancelScope()
        self.item: Item | None = None
        self.closing = False  # committed by the client: finish-task sent
        # (code, message) once the engine refused or failed the task: the rest of the
        # turn's audio is dropped, and its commit answers `transcription.failed`
        self.failed: tuple[str, str] | None = None
        self.audio_ms = 0.0

    def engine_pcm(self, raw: bytes) -> bytes:
        return self.resampler.feed(g711_to_pcm16(raw, self.law) if self.law else raw)


class OpenAIRealtimeSession:
    """One `/v1/realtime` socket."""

    def __init__(self, ws: AsgiWebSocket, gateway: Gateway, conn_id: str, *, beta: bool,
                 model: str | None) -> None:
        self.ws = ws
        self.gateway = gateway
        self.conn_id = conn_id
        self.beta = beta
        self.session_id = new_id("sess")
        self.expires_at = int(time.time()) + SESSION_SECONDS
        self.format = "audio/pcm"
        self.model = model
        self.language = ""
        self.prompt = ""
        self.turn_detection: dict[str, Any] | None = dict(DEFAULT_VAD)
        self.noise_reduction: dict[str, Any] | None = None
        self.include: list[str] | None = None
        self.route = self._route(model)
        self.turn: Turn | None = None
        self.turns = 0
        self.audio_ms = 0.0  # the session timeline: ms of input audio appended
        self.buffered_ms = 0.0  # input audio not yet committed
        self.last_item: str | None = None
        self.nursery: trio.Nursery | None = None

    # ---- events out ----------------------------------------------------------------

    async def emit(self, kind: str, **fields: Any) -> None:
        await self.ws.send_text(json.dumps({"type": kind, "event_id": new_id("event"),
                                            **fields}, ensure_ascii=False))

    async def error(self, code: str | None, message: str, param: str | None = None,
                    event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        await self.emit("error", error={"type": kind, "code": code, "message": message,
                                        "param": param, "event_id": event_id})

    def session_object(self) -> dict[str, Any]:
        transcription = {"model": self.model or "whisper-1", "language": self.language or None,
                         "prompt": self.prompt}
        common = {"id": self.session_id, "object": "realtime.transcription_session",
                  "expires_at": self.expires_at, "include": self.include}
        if self.beta:
            beta_format = next(k for k, v in BETA_FORMATS.items() if v == self.format)
            return {**common, "modalities": ["text"], "input_audio_format": beta_format,
                    "input_audio_transcription": transcription,
                    "turn_detection": self.turn_detection,
                    "input_audio_noise_reduction": self.noise_reduction}
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = PCM_RATE
        return {"type": "transcription", **common, "audio": {"input": {
            "format": fmt, "transcription": transcription,
            "noise_reduction": self.noise_reduction, "turn_detection": self.turn_detection}}}

    # ---- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        created = "transcription_session.created" if self.beta else "session.created"
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self.emit(created, session=self.session_object())
                await self._loop()
                nursery.cancel_scope.cancel()
        except Disconnected:
            return

    async def _loop(self) -> None:
        while True:
            try:
                msg = await self.ws.receive()
            except Disconnected:
                return
            event_id: str | None = None
            try:
                if isinstance(msg, bytes):
                    raise BadEvent("invalid_event", "Expected a text WebSocket message; "
                                   "binary frames are not supported. Send audio as base64 "
                                   "in input_audio_buffer.append events.")
                try:
                    event = safejson.loads_object(msg, "the event")
                except safejson.JSONInputError as exc:
                    raise BadEvent("invalid_json", f"Invalid event: {exc}") from None
                raw_id = event.get("event_id")
                event_id = raw_id if isinstance(raw_id, str) else None
                await self._dispatch(event)
            except BadEvent as exc:
                await self.error(exc.code, exc.message, exc.param, event_id)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind is None:
            raise BadEvent("invalid_event", "The 'type' field is missing.")
        if kind == "input_audio_buffer.append" or kind == "session.input_audio_buffer.append":
            await self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            self._drop_turn()
            self.buffered_ms = 0.0
            await self.emit("input_audio_buffer.cleared")
        elif kind in ("session.update", "transcription_session.update"):
            self._update(event.get("session"), beta_shape=kind != "session.update")
            await self.emit(kind.replace(".update", ".updated"),
                            session=self.session_object())
        else:
            raise BadEvent("invalid_value", f"Invalid value: {short(kind)}. Supported values "
                           f"in a transcription session are: {', '.join(CLIENT_EVENTS)}.",
                           "type")

    # ---- session.update ------------------------------------------------------------

    def _route(self, model: str | None) -> Route:
        """The realtime plugin for `model` (OpenAI's names mean the service's default);
        an unknown model is a BadEvent naming the installed ones."""
        local = None if not model or model in OPENAI_TRANSCRIBE_MODELS else model
        try:
            return self.gateway.route(SERVICE, {"model": local} if local else None)
        except errors.GatewayError as exc:
            raise BadEvent("invalid_model" if local else "server_error", exc.message,
                           "model") from None

    def _update(self, session: Any, *, beta_shape: bool) -> None:
        """Apply an update whole or not at all (OpenAI discards a bad update entirely)."""
        if not isinstance(session, dict):
            raise BadEvent("invalid_type", "Invalid type for 'session': expected an object, "
                           f"but got {type_name(session)} instead.", "session")
        where = "session."
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
                fmt = self._ga_format(given["format"])
            audio_in = {k: given.get(k, ...) for k in
                        ("transcription", "turn_detection", "noise_reduction")}
            where = "session.audio.input."
            names = {k: where + k for k in audio_in}
        model, language, prompt = self.model, self.language, self.prompt
        route = self.route
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
                    route = self._route(model)
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
        if fmt is not None:
            self.format = fmt
        self.model, self.language, self.prompt, self.route = model, language, prompt, route
        if td is not ...:
            self.turn_detection = None if td is None else {**DEFAULT_VAD, **td}
        if nr is not ...:
            self.noise_reduction = nr
        if include is not ...:
            self.include = include

    def _ga_format(self, fmt: Any) -> str:
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

    # ---- audio ---------------------------------------------------------------------

    def _decode(self, audio: Any) -> bytes:
        law = FORMATS[self.format][1]
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

    def _ms(self, raw: bytes) -> float:
        rate, law = FORMATS[self.format]
        return len(raw) * 1000 / (rate if law else 2 * rate)

    async def _append(self, audio: Any) -> None:
        raw = self._decode(audio)
        ms = self._ms(raw)
        if ms > MAX_APPEND_SECONDS * 1000:
            raise BadEvent("invalid_value", f"Invalid 'audio': one append carries "
                           f"{ms / 1000:.1f} s of audio, over the {MAX_APPEND_SECONDS} s "
                           "limit; send the audio in smaller appends (20-100 ms each is "
                           "typical).", "audio")
        if not raw:
            return
        turn = self.turn
        if turn is None:
            turn = await self._open_turn()
        turn.audio_ms += ms
        self.audio_ms += ms
        self.buffered_ms += ms
        if turn.failed is not None:
            return  # already answered with an error event; the commit says failed
        pcm = turn.engine_pcm(raw)
        if pcm and turn.inv is not None:
            try:
                await turn.inv.send(Frame(pcm, "binary"))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the task ended under it; its end was reported as an event

    async def _open_turn(self) -> Turn:
        assert self.nursery is not None
        self.turns += 1
        turn = Turn(self.turns, self.route, int(self.audio_ms), self.format)
        self.turn = turn
        await self.nursery.start(self._run_turn, turn)
        return turn

    def _drop_turn(self) -> None:
        """`clear`: the uncommitted audio is forgotten, its plugin task cancelled."""
        if self.turn is not None:
            self.turn.scope.cancel()
            self.turn = None

    def _new_item(self, begin_ms: int) -> Item:
        item = Item(new_id("item"), self.last_item, begin_ms)
        self.last_item = item.id
        return item

    async def _commit(self) -> None:
        if self.buffered_ms < MIN_COMMIT_MS or self.turn is None:
            raise BadEvent("input_audio_buffer_commit_empty", "Error committing input audio "
                           "buffer: buffer too small. Expected at least 100ms of audio, but "
                           f"buffer only has {self.buffered_ms:.2f}ms of audio.")
        turn, self.turn = self.turn, None
        self.buffered_ms = 0.0
        turn.closing = True
        if turn.item is None:
            turn.item = self._new_item(int(self.audio_ms - turn.audio_ms))
        await self._announce(turn.item)
        if turn.failed is not None:
            await self._failed(turn, *turn.failed)
            return
        if turn.inv is not None:
            finish = {"task": SERVICE, "action": "finish-task", "task_id": self._task_id(turn)}
            await turn.inv.send(Frame(json.dumps(finish).encode(), "text"))

    async def _announce(self, item: Item) -> None:
        """`committed` and the item events (GA: added + done; beta: created)."""
        if item.committed:
            return
        item.committed = True
        await self.emit("input_audio_buffer.committed", item_id=item.id,
                        previous_item_id=item.previous)
        body = {"id": item.id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        if self.beta:
            await self.emit("conversation.item.created", previous_item_id=item.previous,
                            item=body)
        else:
            await self.emit("conversation.item.added", previous_item_id=item.previous,
                            item=body)
            await self.emit("conversation.item.done", previous_item_id=item.previous,
                            item=body)

    # ---- one plugin task -----------------------------------------------------------

    def _task_id(self, turn: Turn) -> str:
        return f"{self.conn_id}-{turn.number}"

    async def _run_turn(self, turn: Turn, task_status: Any = trio.TASK_STATUS_IGNORED
                        ) -> None:
        task_id = self._task_id(turn)
        model = turn.route.definition.default_model if not self.model or \
            self.model in OPENAI_TRANSCRIBE_MODELS else self.model
        meta = {"model": model or "", "language": self.language, "format": "pcm",
                "sample_rate": str(ENGINE_RATE), "ws_conn_id": task_id}
        run = {"task": SERVICE, "action": "run-task", "task_id": task_id, "model": model,
               "parameters": {"format": "pcm", "sample_rate": ENGINE_RATE,
                              "language": self.language}}
        try:
            with turn.scope:
                async with self.gateway.invoke(turn.route, Mode.BIDI, b"",
                                               metadata=meta) as inv:
                    await inv.send(Frame(json.dumps(run).encode(), "text", meta))
                    turn.inv = inv
                    task_status.started()
                    await self._results(turn, inv)
        finally:
            if self.turn is turn and turn.failed is None:
                # the task ended by itself (the engine stopped): the next append
                # starts a new one rather than feeding a closed invocation
                self.turn = None

    async def _events(self, turn: Turn, inv: Invocation) -> tuple[bool, tuple[str, str] | None]:
        """Relay the plugin's events of one task: (finished, failure) at its end."""
        async for frame in inv.frames():
            if frame.kind != "text":
                continue
            try:
                msg = json.loads(frame.data)
                header, payload = msg.get("header") or {}, msg.get("payload") or {}
            except (ValueError, AttributeError):
                continue
            name = header.get("event")
            if name == "result-generated":
                sentence = (payload.get("output") or {}).get("sentence") or {}
                await self._sentence(turn, sentence)
            elif name == "task-finished":
                return True, None
            elif name == "task-failed":
                return False, (str(header.get("error_code") or "server_error"),
                               str(header.get("error_message") or "the engine failed"))
        return False, None

    async def _results(self, turn: Turn, inv: Invocation) -> None:
        try:
            finished, failure = await self._events(turn, inv)
        except errors.GatewayError as exc:  # a provider that broke the bidi contract
            finished, failure = False, ("server_error", exc.message)
        if failure is None and inv.error is not None:
            failure = ("server_error", inv.error.message)
        if failure is None and not finished and turn.closing:
            failure = ("server_error", f"{turn.route.provider.name} ended the task without "
                       "a transcript")
        if failure is not None:
            if not turn.closing and self.turn is turn:
                # one error now; the turn's further audio is dropped until the client
                # commits (answered with transcription.failed) or clears it
                turn.failed = failure
                await self.error(failure[0].lower(), f"transcription failed: {failure[1]}",
                                 kind="server_error")
                return
            await self._failed(turn, *failure)
            return
        if turn.closing and turn.item is not None:
            await self._complete(turn, turn.item, turn.audio_ms / 1000)

    async def _sentence(self, turn: Turn, sentence: dict[str, Any]) -> None:
        text = str(sentence.get("text") or "").strip()
        final = bool(sentence.get("sentence_end"))
        begin = int(sentence.get("begin_time") or 0) + turn.offset_ms
        end = int(sentence.get("end_time") or 0) + turn.offset_ms
        item = turn.item
        vad = self.turn_detection is not None and not turn.closing
        if item is None:
            if not text:
                return
            padding = int((self.turn_detection or {}).get("prefix_padding_ms") or 0)
            item = turn.item = self._new_item(max(turn.offset_ms, begin - padding))
            if vad:
                await self.emit("input_audio_buffer.speech_started",
                                audio_start_ms=item.begin_ms, item_id=item.id)
        item.end_ms = max(item.end_ms, end)
        delta = item.stable_delta(text, final)
        if final and text:
            item.finals.append(text)
        if delta:
            await self.emit("conversation.item.input_audio_transcription.delta",
                            item_id=item.id, content_index=0, delta=delta)
        if final and vad and item.finals:
            # the engine heard the end of an utterance: it is the item, committed now
            await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=item.end_ms,
                            item_id=item.id)
            if self.turn is turn:
                self.buffered_ms = max(0.0, self.audio_ms - item.end_ms)
            await self._announce(item)
            await self._complete(turn, item, (item.end_ms - item.begin_ms) / 1000)
            turn.item = None

    async def _complete(self, turn: Turn, item: Item, seconds: float) -> None:
        transcript = item.transcript()
        await self.emit("conversation.item.input_audio_transcription.completed",
                        item_id=item.id, content_index=0, transcript=transcript,
                        usage={"type": "duration", "seconds": round(max(0.0, seconds), 3)},
                        logprobs=None)

    async def _failed(self, turn: Turn, code: str, message: str) -> None:
        item = turn.item
        if item is not None and item.committed:
            await self.emit("conversation.item.input_audio_transcription.failed",
                            item_id=item.id, content_index=0,
                            error={"type": "server_error", "code": code.lower(),
                                   "message": message, "param": None})
        else:
            await self.error(code.lower(), f"transcription failed: {message}",
                             kind="server_error")


def requested(scope: Scope) -> tuple[str | None, str | None]:
    """(`model`, `intent`) from the URL's query string."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    model = (query.get("model") or [None])[0]
    intent = (query.get("intent") or [None])[0]
    return model, intent


def offered_subprotocols(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols") or []]


async def serve_openai_realtime(ws: AsgiWebSocket, scope: Scope, gateway: Gateway,
                                conn_id: str) -> None:
    """Run one `/v1/realtime` socket (already accepted)."""
    beta = wants_beta(list(scope.get("headers") or []), offered_subprotocols(scope))
    model, intent = requested(scope)
    refusal: BadEvent | None = None
    session: OpenAIRealtimeSession | None = None
    if intent not in (None, "", "transcription"):
        refusal = BadEvent("invalid_value", f"intent {short(intent)} is not served here: this "
                           "gateway offers transcription sessions only; connect with "
                           "?intent=transcription", "intent")
    if refusal is None:
        try:
            session = OpenAIRealtimeSession(ws, gateway, conn_id, beta=beta, model=model)
        except BadEvent as exc:
            refusal = exc
    if refusal is not None or session is None:
        refusal = refusal or BadEvent("server_error", "the session could not start")
        await ws.send_text(json.dumps({"type": "error", "event_id": new_id("event"), "error": {
            "type": "invalid_request_error", "code": refusal.code, "message": refusal.message,
            "param": refusal.param, "event_id": None}}))
        await ws.close(4000, f"invalid_request_error.{refusal.code}")
        return
    try:
        await session.run()
    except Exception:  # a bug still tells the client, as an error event, then 1011
        log.exception("OpenAI realtime session %s failed", conn_id)
        await session.error("server_error", "the gateway failed on this session; see its "
                            "log", kind="server_error")
        await ws.close(1011)
