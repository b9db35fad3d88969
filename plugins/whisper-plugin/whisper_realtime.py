"""Realtime speech-to-text (AOG's `speech-to-text-ws`) with streaming Whisper.

Where the decoding runs
-----------------------
In the model's engine process, the same one that serves batch `speech-to-text`: each
session's step is a POST of the session's current window to the engine's
`/stream_step`. This keeps memory bounded (one copy of the model and of the silero VAD
model for every session and for batch requests; a session holds only its own window of
PCM, bounded below), keeps the plugin process free of numpy/CTranslate2/onnxruntime
(which would otherwise share a process with the gateway's own packages), and keeps
cancellation prompt: the engine is stateless, so a session that ends (finish, client
gone, host cancel) sends no further step, and at most the one step in flight (a bounded
window, well under a second of CPU on tiny.en) is still finished by the engine.
Decoding in the plugin process as pocketsphinx does would not make a Whisper step any
cheaper (its ~0.3-0.5 s of CPU dwarfs the loopback hop), and would load the model a
second time beside the batch engine.

The policy
----------
* Voice activity detection: faster-whisper's bundled silero VAD runs in the engine over
  the window each step. An utterance begins at the first speech and ends at the first
  pause of `MIN_SILENCE_S`; then its final is sent and the window starts after it. When
  the window holds no speech, only its last `LEAD_S` is kept (a word may be beginning).
* The window is the open utterance only, never the session's history: a step decodes at
  most `MAX_WINDOW_S` of audio. An utterance that runs longer without a pause is split
  at its last short pause (or at the window's end) and finalised there.
* Stable prefix (local agreement): each step decodes the whole open utterance; the
  words two consecutive decodes agree on (past what is already committed) are committed
  and never change. A partial (`sentence_end: false`) is the committed words plus the
  newest decode's tail, sent when it changes. The final (`sentence_end: true`) is the
  committed words plus what the last decode adds after them, sent once per utterance:
  finals never flip, and a final never contradicts a committed word.
* Pacing: a step runs once `STEP_S` of new audio has arrived and the previous step has
  answered, so a slow engine means fewer, larger steps rather than a growing queue.
  The engine serialises inference, so with N sessions each partial lags by about N
  decode times; with tiny.en on 2 cores that keeps 2 sessions within ~1 s of the audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aogstream import manifest as m
from aogstream.engines.realtime import (
    SessionCap,
    SessionError,
    envelope,
    run_task,
    sentence,
    session_error,
    task_failed,
)
from aogstream.sdk import BidiMessage

STEP_S = 0.3
"""New audio (seconds) that makes a session take its next decoding step."""
MIN_SILENCE_S = 0.6
"""A pause this long ends an utterance (its final is sent)."""
LEAD_S = 0.5
"""Audio kept from a window without speech: the start of a word may be in it."""
MAX_WINDOW_S = 15.0
"""The longest window a step decodes; a longer utterance is split and finalised."""
MAX_BACKLOG_S = 60.0
"""Audio a session may hold when the engine cannot keep up, before the task fails."""
DEFAULT_MAX_SESSIONS = 4
"""Realtime sessions decoded at once (every step shares the one engine process)."""
ENGLISH = {"", "en", "en-us", "en_us", "en-gb", "en_gb", "english"}

SendFn = Callable[[BidiMessage], Awaitable[None]]
StepFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def session_cap() -> SessionCap:
    """The plugin's cap on realtime sessions (`WHISPER_MAX_SESSIONS`)."""
    return SessionCap("whisper-plugin", "WHISPER_MAX_SESSIONS", DEFAULT_MAX_SESSIONS)


def _norm(word: str) -> str:
    """A word as compared between decodes: case and punctuation do not count."""
    return re.sub(r"[^\w']", "", word.lower())


class StablePrefix:
    """Local agreement between consecutive decodes of one growing utterance.

    `committed` only ever grows; `tail` is the newest decode's words past it."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.tail: list[str] = []

    def _beyond(self, words: list[str]) -> list[str]:
        """The part of a decode that comes after the committed words. A decode usually
        starts with them again; when it words them differently, the last committed
        words are looked for near where they should be, else their count is skipped."""
        k = len(self.committed)
        if not k:
            return words
        norm = [_norm(w) for w in words]
        mine = [_norm(w) for w in self.committed]
        if norm[:k] == mine:
            return words[k:]
        for span in (2, 1):
            if k < span:
                continue
            hits = [i for i in range(len(norm) - span + 1) if norm[i:i + span] == mine[-span:]]
            if hits:
                i = min(hits, key=lambda j: abs(j - (k - span)))
                return words[i + span:]
        return words[k:]

    def update(self, text: str) -> bool:
        """Take a decode; commit what it agrees on with the previous one. True when
        the visible text changed."""
        before = self.text()
        new = self._beyond(text.split())
        agree = 0
        for a, b in zip(self.tail, new, strict=False):
            if _norm(a) != _norm(b):
                break
            agree += 1
        self.committed += new[:agree]
        self.tail = new[agree:]
        return self.text() != before

    def finish(self, text: str) -> str:
        """The final text: the committed words, then what the last decode adds."""
        return " ".join(self.committed + self._beyond(text.split())).strip()

    def text(self) -> str:
        return " ".join(self.committed + self.tail).strip()


class Session:
    """One task: the audio window, the open utterance and the decoding loop."""

    def __init__(self, task_id: str, rate: int, language: str, step: StepFn,
                 send: SendFn) -> None:
        self.task_id = task_id
        self.rate = rate
        self.language = language
        self.step = step
        self.send = send
        self.window = bytearray()  # PCM16 at `rate`, from `window_at` on
        self.window_at = 0  # samples of the stream before the window
        self.received = 0  # samples received
        self.decoded = 0  # `received` when the last step was sent
        self.finishing = False
        self.more = asyncio.Event()
        self.utt: StablePrefix | None = None
        self.utt_begin = 0
        self._odd = b""

    def feed(self, data: bytes) -> None:
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        self.window += data[:cut]
        self.received += cut // 2
        if len(self.window) > MAX_BACKLOG_S * self.rate * 2:
            raise SessionError("SERVER_ERROR", (
                f"speech recognition is more than {MAX_BACKLOG_S:.0f} s behind the audio "
                f"(the machine is too busy); send audio no faster than real time, or use "
                f"fewer sessions at once"))
        if self.received - self.decoded >= STEP_S * self.rate or self.finishing:
            self.more.set()

    def finish(self) -> None:
        self.finishing = True
        self.more.set()

    def _ms(self, samples: float) -> int:
        return round(samples * 1000 / self.rate)

    def _drop(self, samples: int) -> None:
        samples = max(0, min(samples, len(self.window) // 2))
        del self.window[:samples * 2]
        self.window_at += samples

    async def run(self) -> None:
        """Decode until the client finished and every utterance got its final."""
        while True:
            while not self.finishing and self.received - self.decoded < STEP_S * self.rate:
                self.more.clear()
                await self.more.wait()
            final = self.finishing
            if final and len(self.window) < 0.1 * self.rate * 2:
                break
            self.decoded = self.received
            n = len(self.window) // 2
            out = await self.step({
                "pcm_b64": base64.b64encode(self.window).decode(),
                "sample_rate": self.rate, "language": self.language, "final": final,
                "split": n >= MAX_WINDOW_S * self.rate, "min_silence_s": MIN_SILENCE_S})
            if not out.get("speech"):
                if self.utt is not None and self.utt.text():
                    # VAD lost the utterance (e.g. its window was split): close it
                    await self._final(self.utt.finish(""), n)
                self.utt = None
                if final:
                    break
                self._drop(n - round(LEAD_S * self.rate))
                continue
            start = round(float(out["start"]) * self.rate)
            end = round(float(out["end"]) * self.rate)
            if self.utt is None:
                self.utt = StablePrefix()
                self.utt_begin = self.window_at + start
            text = str(out.get("text") or "")
            if out.get("ended"):
                await self._final(self.utt.finish(text), end)
                self.utt = None
                self._drop(max(end, 1))
                continue
            if self.utt.update(text) and self.utt.text():
                await self.send(sentence(self.task_id, self.utt.text(),
                                         self._ms(self.utt_begin),
                                         self._ms(self.window_at + n), False))

    async def _final(self, text: str, end: int) -> None:
        if text:
            await self.send(sentence(self.task_id, text, self._ms(self.utt_begin),
                                     self._ms(self.window_at + end), True))


def task_setup(run: dict[str, Any], meta: dict[str, str]) -> tuple[str | None, int, str]:
    """(model, sample rate, language) of a run-task, or SessionError naming what is wrong."""
    task = run_task(run, meta)
    if task.language not in ENGLISH:
        raise SessionError("MODEL_ERROR", (
            f"whisper-plugin's realtime models are English-only; language {task.language!r} "
            f"is not available (send \"en\" or leave it out)"))
    return task.model, task.sample_rate, "en"


async def serve_session(plugin: Any, task_id: str, incoming: AsyncIterator[BidiMessage],
                        send: SendFn) -> None:
    """One `speech-to-text-ws` session on `plugin` (a WhisperPlugin)."""
    session: Session | None = None
    decoder: asyncio.Task[None] | None = None
    slot = False

    async def fail(code: str, message: str) -> None:
        await send(task_failed(task_id, code, message))

    try:
        async for msg in incoming:
            if msg.message_type == "binary":
                if session is None:
                    await fail("CLIENT_ERROR", "audio before run-task")
                    return
                if decoder is not None and decoder.done():
                    break  # the decoder failed: reported below
                try:
                    session.feed(msg.data)
                except SessionError as exc:
                    await fail(exc.code, exc.message)
                    return
                continue
            try:
                ctl = json.loads(msg.data or b"{}")
            except ValueError:
                await fail("CLIENT_ERROR", "text frames must be JSON (run-task, finish-task)")
                return
            action = ctl.get("action")
            task_id = ctl.get("task_id") or task_id
            if action == "run-task":
                try:
                    if session is not None:
                        raise SessionError("CLIENT_ERROR", "a task is already running in "
                                           "this session; send finish-task first")
                    model, rate, language = task_setup(ctl, msg.metadata)
                    plugin.sessions.enter()
                    slot = True
                    name, engine = await engine_or_error(plugin, model)
                except SessionError as exc:
                    await fail(exc.code, exc.message)
                    return

                async def step(body: dict[str, Any], name: str = name,
                               engine: Any = engine) -> dict[str, Any]:
                    out: dict[str, Any] = await plugin.post_json(name, engine,
                                                                 "/stream_step", body)
                    return out

                session = Session(task_id, rate, language, step, send)
                decoder = asyncio.ensure_future(session.run())
            elif action == "finish-task":
                if session is not None and decoder is not None:
                    session.finish()
                    await asyncio.wait([decoder])
                    if decoder.exception() is None:
                        decoder = None
                        await send(envelope("task-finished", task_id))
                        return
                    break
                await send(envelope("task-finished", task_id))
                return
        if decoder is not None and decoder.done() and decoder.exception() is not None:
            exc = decoder.exception()
            message = exc.message if isinstance(exc, (m.PluginError, SessionError)) \
                else f"{type(exc).__name__}: {exc}"
            await fail("SERVER_ERROR", f"speech recognition failed: {message}")
    finally:
        if decoder is not None and not decoder.done():
            # the client left or the host cancelled: no further step is sent, and the
            # step in flight is abandoned (its HTTP request is closed); never awaited
            # here, so a cancelled session is not kept from ending
            decoder.cancel()
        if slot:
            plugin.sessions.leave()


async def engine_or_error(plugin: Any, model: str | None) -> tuple[str, Any]:
    """The engine for `model`, or a SessionError the client can act on."""
    try:
        name: str
        name, engine = await plugin.engine_for(model)
    except m.PluginError as exc:
        raise session_error(exc) from exc
    return name, engine
