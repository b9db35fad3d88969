"""AOG's realtime speech-to-text sessions in a local plugin: the event envelope, the error a
session ends with, and the cap on sessions decoded at once.

Every realtime ASR plugin (`speech-to-text-ws`: whisper, pocketsphinx) answers in AOG's
`{header, payload}` envelope, ends a task that cannot go on with `task-failed` and an
error code the client acts on, and limits how many sessions it decodes at once. Those
were written in each plugin; they are here once so the plugins differ only in how they
decode.

Why a plugin caps sessions itself: the gateway caps concurrent sessions per service in
each serving process, but several serving processes share one plugin process, so only
the plugin sees them all. A session over the cap gets a clear `task-failed` naming the
limit and the variable that raises it, instead of another decoder's memory and CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from aogstream import manifest as m
from aogstream.sdk import BidiMessage

log = logging.getLogger(__name__)

# AOG's realtime error codes, as its clients branch on them
CLIENT_ERROR = "CLIENT_ERROR"
MODEL_ERROR = "MODEL_ERROR"
SERVER_ERROR = "SERVER_ERROR"

MIN_RATE, MAX_RATE = 8000, 48000
"""The sample rates (Hz) a realtime task may name: telephone to studio audio."""


class SessionError(Exception):
    """Why a task cannot start or go on, as the AOG error code the client gets."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def envelope(event: str, task_id: str, payload: Mapping[str, object] | None = None,
             **error: str) -> BidiMessage:
    """One server event in AOG's realtime envelope (`error_code`/`error_message` go in
    the header, when given)."""
    header = {"action": "", "streaming": "", "task_id": task_id, "event": event}
    header.update({k: v for k, v in error.items() if v})
    return BidiMessage.text({"header": header, "payload": payload or {}})


def task_failed(task_id: str, code: str, message: str) -> BidiMessage:
    """The `task-failed` event that ends a task with `code` and `message`."""
    return envelope("task-failed", task_id, error_code=code, error_message=message)


def sentence(task_id: str, text: str, begin_ms: int, end_ms: int, final: bool) -> BidiMessage:
    """A recognised sentence as AOG's `result-generated` event: a partial while `final`
    is False, the settled sentence when True (times in ms from the stream's start)."""
    return envelope("result-generated", task_id, {"output": {"sentence": {
        "begin_time": begin_ms, "end_time": max(end_ms, begin_ms), "text": text,
        "sentence_end": final}}})


@dataclass(frozen=True, slots=True)
class RunTask:
    """What a client's run-task asks for: the model (None: the plugin's default), the
    language (lower case, "" when not named) and the sample rate of its PCM16 audio."""

    model: str | None
    language: str
    sample_rate: int


def run_task(run: Mapping[str, object], meta: Mapping[str, str]) -> RunTask:
    """Read a run-task (its `parameters`, else its `model`, else the session's metadata),
    or raise the SessionError that names what is wrong: parameters that are not an
    object or a sample rate outside MIN_RATE..MAX_RATE (CLIENT_ERROR), audio other than
    raw PCM16 (MODEL_ERROR). Which languages and rates a model takes is the plugin's
    to check."""
    params: object = run.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise SessionError(CLIENT_ERROR, "run-task 'parameters' must be an object")
    model = str(params.get("model") or run.get("model") or meta.get("model") or "") or None
    language = str(params.get("language") or meta.get("language") or "").strip().lower()
    fmt = str(params.get("format") or meta.get("format") or "pcm").lower()
    if fmt != "pcm":
        raise SessionError(MODEL_ERROR,
                           f"audio format {fmt!r} is not supported; send raw PCM16 mono (pcm)")
    raw_rate = params.get("sample_rate") or meta.get("sample_rate") or 16000
    try:
        rate = int(raw_rate)
    except (TypeError, ValueError):
        rate = 0
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SessionError(CLIENT_ERROR, (
            f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} (Hz), "
            f"not {raw_rate!r}"))
    return RunTask(model, language, rate)


def limit_from_env(variable: str, default: int) -> int:
    """A positive integer from the environment `variable`, else `default` (a value that
    is not an integer is logged and ignored; below 1 counts as 1)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        return max(1, int(raw))
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", variable, raw, default)
        return default


class SessionCap:
    """How many realtime sessions this plugin process decodes at once.

    `enter` takes a slot or raises the `SessionError` to answer; `leave` gives it back
    (in the session's `finally`, however it ends). Counted on the event loop only, so
    there is no lock.
    """

    def __init__(self, plugin: str, variable: str, default: int, why: str = "") -> None:
        self.plugin = plugin
        self.variable = variable
        self.limit = limit_from_env(variable, default)
        self.why = why  # appended to the refusal, e.g. what each session costs
        self.active = 0

    def try_enter(self) -> bool:
        """Take a slot; False when `limit` sessions are running."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def enter(self) -> None:
        """Take a slot, or raise the SERVER_ERROR that says the plugin is at its limit."""
        if not self.try_enter():
            raise SessionError(SERVER_ERROR, (
                f"{self.plugin} is already decoding {self.limit} realtime sessions, its "
                f"limit; retry when one ends, or raise {self.variable}"
                + (f" ({self.why})" if self.why else "")))

    def leave(self) -> None:
        self.active -= 1


def session_error(exc: m.PluginError) -> SessionError:
    """A plugin error met while opening a session, as the client's error code: a model
    that is missing, malformed or wrongly named is the client's MODEL_ERROR (it can name
    another), anything else (no engine, an engine that failed) a SERVER_ERROR."""
    model = exc.code in (m.ERR_CODE_MODEL_NOT_FOUND, m.ERR_CODE_MODEL_INVALID_FORMAT,
                         m.ERR_CODE_INVALID_ARGUMENT)
    return SessionError(MODEL_ERROR if model else SERVER_ERROR, exc.message)
