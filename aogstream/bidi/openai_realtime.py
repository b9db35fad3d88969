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
  arrives, so the plugin decodes while the client talks. Appends already waiting on
  the socket behind one are handed on with it (each resampled in order), so the
  plugin's session may pack their audio into one message; a lone append goes at once.
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

The protocol's pure state (session settings and their validation, the session object,
audio decoding, append-only deltas) is `bidi.openai_realtime_protocol`; this module is
the socket loop and the plugin tasks it drives.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any
from urllib.parse import parse_qs

import trio

from aogstream import errors, safejson
from aogstream.asgi_types import Scope
from aogstream.bidi.openai_realtime_protocol import (
    CLIENT_EVENTS,
    ENGINE_RATE,
    FORMATS,
    MAX_APPEND_SECONDS,
    MIN_COMMIT_MS,
    OPENAI_TRANSCRIBE_MODELS,
    PATH,
    SERVICE,
    BadEvent,
    Item,
    Settings,
    apply_update,
    audio_ms,
    decode_audio,
    expired_message,
    new_id,
    session_object,
    wants_beta,
)
from aogstream.bidi.resample import StreamResampler, g711_to_pcm16
from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.gateway import Gateway, Route
from aogstream.invocation import Frame, Invocation, Mode
from aogstream.safejson import short

__all__ = ["PATH", "OpenAIRealtimeSession", "offered_subprotocols", "requested",
           "serve_openai_realtime"]

log = logging.getLogger(__name__)

APPENDS = ("input_audio_buffer.append", "session.input_audio_buffer.append")
# at most this many appends handed on together, as `bidi.realtime_asr` does frames (a
# bound on the work between two schedule points)
BURST_FRAMES = 32


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
        # the session's lifetime (`Config.realtime_session_seconds`; OpenAI's is
        # SESSION_SECONDS): `expires_at` says when, 0 when there is no limit
        self.max_seconds = gateway.config.realtime_session_seconds
        self.deadline = (math.inf if self.max_seconds is None
                         else trio.current_time() + self.max_seconds)
        self.expires_at = (0 if self.max_seconds is None
                           else math.ceil(time.time() + self.max_seconds))
        self.settings = Settings(model=model)
        self.route = self._route(model)
        self.turn: Turn | None = None
        self.turns = 0
        self.audio_ms = 0.0  # the session timeline: ms of input audio appended
        self.buffered_ms = 0.0  # input audio not yet committed
        self.last_item: str | None = None
        self.nursery: trio.Nursery | None = None
        # a message read (with `receive_nowait`) behind a burst of appends that is not
        # one of them: the loop handles it next, in order
        self.waiting: str | bytes | None = None
        self.gone = False  # the client left while a burst was being read

    # ---- events out ----------------------------------------------------------------

    async def emit(self, kind: str, **fields: Any) -> None:
        await self.ws.send_text(json.dumps({"type": kind, "event_id": new_id("event"),
                                            **fields}, ensure_ascii=False))

    async def error(self, code: str | None, message: str, param: str | None = None,
                    event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        await self.emit("error", error={"type": kind, "code": code, "message": message,
                                        "param": param, "event_id": event_id})

    def session_object(self) -> dict[str, Any]:
        return session_object(self.settings, self.session_id, self.expires_at, self.beta)

    # ---- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        created = "transcription_session.created" if self.beta else "session.created"
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self.emit(created, session=self.session_object())
                with trio.move_on_at(self.deadline) as lifetime:
                    await self._loop()
                nursery.cancel_scope.cancel()  # the running turn's plugin call too
        except Disconnected:
            return
        if lifetime.cancelled_caught and self.max_seconds is not None:
            # OpenAI's end of a session at its maximum duration: the error event, then
            # a close (normal: the session ended as it was set to; a client that wants
            # more opens a new one)
            await self.error("session_expired", expired_message(self.max_seconds))
            await self.ws.close(1000, "invalid_request_error.session_expired")

    async def _loop(self) -> None:
        while True:
            msg = self.waiting
            if msg is not None:
                self.waiting = None
            elif self.gone:
                return
            else:
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
        if kind in APPENDS:
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

    def _update(self, session: object, *, beta_shape: bool) -> None:
        """Apply an update whole or not at all (OpenAI discards a bad update entirely)."""
        self.settings, route = apply_update(self.settings, session, beta_shape=beta_shape,
                                            route_for=self._route)
        if route is not None:
            self.route = route

    # ---- audio ---------------------------------------------------------------------

    def _audio(self, audio: object) -> tuple[bytes, float]:
        """One append's raw audio and its duration (ms); BadEvent when it is not audio
        of the session's format or is over the size limit."""
        raw = decode_audio(self.settings.format, audio)
        ms = audio_ms(self.settings.format, raw)
        if ms > MAX_APPEND_SECONDS * 1000:
            raise BadEvent("invalid_value", f"Invalid 'audio': one append carries "
                           f"{ms / 1000:.1f} s of audio, over the {MAX_APPEND_SECONDS} s "
                           "limit; send the audio in smaller appends (20-100 ms each is "
                           "typical).", "audio")
        return raw, ms

    def _feed(self, turn: Turn, raw: bytes, ms: float, burst: list[Frame]) -> None:
        """Count one append's audio on the turn and the session timeline, and add its
        engine PCM to `burst` (nothing once the turn failed: its commit says so)."""
        turn.audio_ms += ms
        self.audio_ms += ms
        self.buffered_ms += ms
        if turn.failed is None:
            pcm = turn.engine_pcm(raw)
            if pcm:
                burst.append(Frame(pcm, "binary"))

    async def _append(self, audio: object) -> None:
        raw, ms = self._audio(audio)
        if not raw:
            return
        turn = self.turn
        if turn is None:
            turn = await self._open_turn()
        burst: list[Frame] = []
        self._feed(turn, raw, ms, burst)
        self._take_waiting_appends(turn, burst)
        if not burst or turn.inv is None:
            return
        try:
            if len(burst) == 1:
                await turn.inv.send(burst[0])
            else:
                await turn.inv.send_many(burst)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the task ended under it; its end was reported as an event

    def _take_waiting_appends(self, turn: Turn, burst: list[Frame]) -> None:
        """The good appends already waiting on the socket behind this one, fed to the
        same turn in order (the resampler runs on as if they came one by one), so their
        audio is handed on together and the plugin's session may pack it into one
        message. Never waits: a lone append goes at once. Anything else (another event,
        an append that is bad, or one after the turn ended) stops the burst and is kept
        in `waiting`, for the loop to handle next as it would have."""
        for _ in range(BURST_FRAMES - 1):
            try:
                msg = self.ws.receive_nowait()
            except trio.WouldBlock:
                return
            except Disconnected:
                self.gone = True  # after this burst's audio, as `receive` would say
                return
            audio = self._good_append(msg, turn)
            if audio is None:
                self.waiting = msg  # answered by the loop, after this burst's audio
                return
            if audio[0]:
                self._feed(turn, *audio, burst)

    def _good_append(self, msg: str | bytes, turn: Turn) -> tuple[bytes, float] | None:
        """The audio of `msg` when it is a good append that `turn` still takes, else
        None (the loop then handles it as any event, error and all)."""
        if isinstance(msg, bytes) or self.turn is not turn:
            return None
        try:
            event = safejson.loads_object(msg, "the event")
            if event.get("type") not in APPENDS:
                return None
            return self._audio(event.get("audio"))
        except (BadEvent, safejson.JSONInputError):
            return None

    async def _open_turn(self) -> Turn:
        assert self.nursery is not None
        self.turns += 1
        turn = Turn(self.turns, self.route, int(self.audio_ms), self.settings.format)
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
        model = turn.route.definition.default_model if not self.settings.model or \
            self.settings.model in OPENAI_TRANSCRIBE_MODELS else self.settings.model
        meta = {"model": model or "", "language": self.settings.language, "format": "pcm",
                "sample_rate": str(ENGINE_RATE), "ws_conn_id": task_id}
        run = {"task": SERVICE, "action": "run-task", "task_id": task_id, "model": model,
               "parameters": {"format": "pcm", "sample_rate": ENGINE_RATE,
                              "language": self.settings.language}}
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
        vad = self.settings.turn_detection is not None and not turn.closing
        if item is None:
            if not text:
                return
            padding = int((self.settings.turn_detection or {}).get("prefix_padding_ms") or 0)
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

