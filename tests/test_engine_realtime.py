"""The realtime-session toolkit (`aogstream.engines.realtime`) shared by the whisper and
pocketsphinx plugins.

Real parts: the module itself and the SDK's `BidiMessage`; nothing runs but the functions.
The plugins' own end-to-end tests (tests/test_realtime_limits.py, test_whisper_realtime.py,
test_pocketsphinx_engine.py) prove the cap and the errors through a real gateway; this
module proves the pieces alone: events are AOG's `{header, payload}` envelope (error fields
only when given, a sentence's end never before its start); the cap lets `limit` sessions in,
refuses the next with a SERVER_ERROR naming the limit and the variable that raises it, and
admits again after one leaves; the limit comes from the environment, a bad value falling
back to the default; plugin errors map to the client's MODEL_ERROR or SERVER_ERROR; and a
run-task is read from its parameters, then the session's metadata, its mistakes named.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aogstream import manifest as m
from aogstream.engines import realtime
from aogstream.sdk import BidiMessage


def body(msg: BidiMessage) -> Any:
    assert msg.message_type == "text"
    return json.loads(msg.data)


def test_events_are_aogs_envelope() -> None:
    assert body(realtime.envelope("task-finished", "t1")) == {
        "header": {"action": "", "streaming": "", "task_id": "t1", "event": "task-finished"},
        "payload": {}}
    failed = body(realtime.task_failed("t2", realtime.CLIENT_ERROR, "audio before run-task"))
    assert failed["header"]["event"] == "task-failed"
    assert failed["header"]["error_code"] == "CLIENT_ERROR"
    assert failed["header"]["error_message"] == "audio before run-task"
    said = body(realtime.sentence("t3", "go forward", 500, 120, final=True))
    assert said["header"]["event"] == "result-generated"
    assert said["payload"] == {"output": {"sentence": {
        "begin_time": 500, "end_time": 500, "text": "go forward", "sentence_end": True}}}


def test_the_cap_admits_its_limit_and_names_how_to_raise_it(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("X_MAX_SESSIONS", "2")
    cap = realtime.SessionCap("x-plugin", "X_MAX_SESSIONS", 9, "each holds a decoder")
    assert cap.limit == 2
    cap.enter()
    assert cap.try_enter()
    with pytest.raises(realtime.SessionError) as refused:
        cap.enter()
    assert refused.value.code == "SERVER_ERROR"
    assert refused.value.message == (
        "x-plugin is already decoding 2 realtime sessions, its limit; retry when one ends, "
        "or raise X_MAX_SESSIONS (each holds a decoder)")
    assert cap.active == 2
    cap.leave()
    cap.enter()
    assert cap.active == 2


@pytest.mark.parametrize(("raw", "limit"), [("", 4), ("7", 7), (" 3 ", 3), ("0", 1),
                                            ("-5", 1), ("many", 4)])
def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str,
                                              limit: int) -> None:
    monkeypatch.setenv("X_MAX_SESSIONS", raw)
    assert realtime.limit_from_env("X_MAX_SESSIONS", 4) == limit


def test_plugin_errors_become_the_clients_error_codes() -> None:
    for code in (m.ERR_CODE_MODEL_NOT_FOUND, m.ERR_CODE_MODEL_INVALID_FORMAT,
                 m.ERR_CODE_INVALID_ARGUMENT):
        err = realtime.session_error(m.PluginError(code, "model 'x' is not pulled", ""))
        assert (err.code, err.message) == ("MODEL_ERROR", "model 'x' is not pulled")
    other = realtime.session_error(m.PluginError(m.ERR_CODE_ENGINE_NOT_INSTALLED, "no", ""))
    assert other.code == "SERVER_ERROR"


def test_a_run_task_is_read_from_parameters_then_metadata() -> None:
    task = realtime.run_task({"model": "m1", "parameters": {"language": " EN ",
                                                             "sample_rate": "8000"}},
                             {"model": "m2", "format": "pcm"})
    assert task == realtime.RunTask("m1", "en", 8000)
    assert realtime.run_task({}, {}) == realtime.RunTask(None, "", 16000)
    assert realtime.run_task({"parameters": {"model": "p"}}, {"sample_rate": "48000"}) == \
        realtime.RunTask("p", "", 48000)


@pytest.mark.parametrize(("run", "code", "words"), [
    ({"parameters": ["pcm"]}, "CLIENT_ERROR", "'parameters' must be an object"),
    ({"parameters": {"format": "opus"}}, "MODEL_ERROR", "send raw PCM16 mono"),
    ({"parameters": {"sample_rate": "fast"}}, "CLIENT_ERROR", "8000 to 48000 (Hz), not 'fast'"),
    ({"parameters": {"sample_rate": 96000}}, "CLIENT_ERROR", "8000 to 48000 (Hz), not 96000"),
])
def test_a_bad_run_task_names_what_is_wrong(run: dict[str, Any], code: str, words: str) -> None:
    with pytest.raises(realtime.SessionError) as bad:
        realtime.run_task(run, {})
    assert bad.value.code == code and words in bad.value.message, bad.value.message
