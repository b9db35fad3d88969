"""OpenAI's Realtime transcription protocol on `/v1/realtime`, end to end.

Real parts: the gateway subprocess with the shipped plugins (`engines_gateway`), the
shipped pocketsphinx-plugin and whisper-plugin processes with their engines and models
from the test engine directory, and real clients over loopback: the official `openai`
SDK's realtime client (GA `client.realtime` and beta `client.beta.realtime`, the version
pinned in the `dev` extra) and a raw `websockets` client for what the SDK cannot send (a
browser's subprotocols, binary frames, broken JSON). The audio is the human recording
"go forward ten meters" (16 kHz, converted to OpenAI's 24 kHz PCM16 for the client).

Proven: both SDK generations transcribe the recording (WER ≤ 0.25) through pocketsphinx
(`whisper-1`, the service's default model) and through streaming whisper (a local model
name), with the item events of each generation and append-only deltas that agree with
the completed transcript; server VAD turns the engine's end of utterance into
speech_started/speech_stopped/committed/completed without a client commit; a browser's
subprotocols are answered with `realtime` (never the key) and pick the beta shape; every
kind of bad input (unknown event type, no type, bad base64, odd-length PCM, an append over
the size limit, an unknown model, a bad format rate, binary frames, broken JSON, a commit
of an empty buffer) gets one `error` event with OpenAI's code, the client's event_id
echoed, and the same socket then transcribes; a burst of appends written at once, a
bad one among them, still transcribes and gets that one append's error (and, as a unit
check of the door's loop, waiting appends are handed on together, in order, with the
resampler running on across them); an unknown model in the URL is refused with
an error event and close 4000; a session past its maximum duration (configured short)
gets OpenAI's `session_expired` error event and a close.
"""

from __future__ import annotations

import array
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from audio import GOFORWARD_TEXT, goforward_pcm, resample_linear, silence, word_error_rate
from conftest import REPO, require_engines, shipped_plugins_gateway
from openai import OpenAI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

PLUGINS = ["pocketsphinx-plugin", "whisper-plugin"]
WHISPER = "whisper-tiny.en"
CHUNK = 1920  # 40 ms of 24 kHz PCM16
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def gateway(engines_gateway):
    require_engines(PLUGINS)
    for name in PLUGINS:
        engines_gateway.wait_plugin_running(name=name, timeout=60)
    return engines_gateway


def pcm24(pcm16k: bytes) -> bytes:
    return resample_linear(array.array("h", pcm16k), 16000, 24000).tobytes()


@pytest.fixture(scope="module")
def speech() -> bytes:
    """The recording as OpenAI's input format, with a little trailing silence."""
    return pcm24(goforward_pcm() + silence(300))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def watchdog(close: Any, seconds: float) -> Iterator[None]:
    """Close the connection if the test has not finished by then, so a missing event
    fails the test (the SDK's sync recv has no timeout) instead of hanging it."""
    timer = threading.Timer(seconds, close)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def until(events: Iterator[Any], last: str) -> list[Any]:
    seen = []
    for ev in events:
        seen.append(ev)
        if ev.type in (last, "error"):
            break
    return seen


def check_transcript(events: list[Any], *, stable_partials: bool) -> str:
    types = [e.type for e in events]
    assert types[-1] == COMPLETED, types
    done = events[-1]
    deltas = "".join(e.delta for e in events if e.type == DELTA)
    assert deltas, f"expected transcription deltas, got {types}"
    assert {e.item_id for e in events if e.type in (DELTA, COMPLETED)} == {done.item_id}
    if stable_partials:
        # streaming whisper commits words two decodes agree on, as the door does for
        # deltas: the deltas are the first words of the transcript, never taken back
        assert done.transcript.split()[:len(deltas.split())] == deltas.split(), \
            (deltas, done.transcript)
    else:
        # pocketsphinx may still revise a word its partials agreed on; OpenAI's
        # `completed.transcript` is authoritative, and deltas only ever append
        assert deltas.strip(), deltas
    assert done.usage.type == "duration" and done.usage.seconds > 2
    assert word_error_rate(GOFORWARD_TEXT, done.transcript) <= 0.25, done.transcript
    return str(done.transcript)


def test_ga_sdk_client_transcribes_recorded_speech_with_the_default_engine(gateway, speech):
    client = OpenAI(api_key="local", base_url=f"{gateway.url}/v1")
    with client.realtime.connect(extra_query={"intent": "transcription"}) as conn, \
            watchdog(conn.close, 90):
        created = conn.recv()
        assert created.type == "session.created"
        assert created.session.type == "transcription"
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": None}}})
        updated = conn.recv()
        assert updated.type == "session.updated", updated
        assert updated.session.audio.input.turn_detection is None
        assert updated.session.audio.input.transcription.model == "whisper-1"
        for i in range(0, len(speech), CHUNK):
            conn.input_audio_buffer.append(audio=b64(speech[i:i + CHUNK]))
        conn.input_audio_buffer.commit()
        events = until(iter(conn), COMPLETED)
    types = [e.type for e in events]
    committed = types.index("input_audio_buffer.committed")
    assert types[committed:committed + 3] == [
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert events[committed].previous_item_id is None
    assert "input_audio_buffer.speech_started" not in types  # no VAD: no VAD events
    check_transcript(events, stable_partials=False)


def test_beta_sdk_client_transcribes_with_streaming_whisper(gateway, speech):
    client = OpenAI(api_key="local", base_url=f"{gateway.url}/v1",
                    websocket_base_url=f"{gateway.ws_url}/v1")
    with client.beta.realtime.connect(model="whisper-1",
                                      extra_query={"intent": "transcription"}) as conn, \
            watchdog(conn.close, 120):
        assert conn.recv().type == "transcription_session.created"
        conn.transcription_session.update(session={
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": WHISPER, "language": "en"},
            "turn_detection": None})
        updated = conn.recv()
        assert updated.type == "transcription_session.updated", updated
        assert updated.session.input_audio_transcription.model == WHISPER
        # two turns on one socket: the second item chains to the first
        items = []
        for _ in range(2):
            for i in range(0, len(speech), CHUNK):
                conn.input_audio_buffer.append(audio=b64(speech[i:i + CHUNK]))
            conn.input_audio_buffer.commit()
            events = until(iter(conn), COMPLETED)
            types = [e.type for e in events]
            assert "conversation.item.created" in types, types
            assert "conversation.item.added" not in types
            check_transcript(events, stable_partials=True)
            items.append(next(e for e in events if e.type == "input_audio_buffer.committed"))
    assert items[1].previous_item_id == items[0].item_id


def raw_events(ws: Any, last: str, timeout: float = 60) -> list[dict[str, Any]]:
    seen = []
    while True:
        ev = json.loads(ws.recv(timeout=timeout))
        seen.append(ev)
        if ev["type"] == last:
            return seen


def test_server_vad_commits_each_utterance_the_engine_hears_end(gateway, speech):
    url = f"{gateway.ws_url}/v1/realtime?intent=transcription"
    with connect(url, open_timeout=10, max_size=None) as ws:
        created = json.loads(ws.recv(timeout=20))
        vad = created["session"]["audio"]["input"]["turn_detection"]
        assert vad["type"] == "server_vad", created  # OpenAI's default
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"transcription": {
                "model": WHISPER}, "turn_detection": {"type": "server_vad",
                                                      "silence_duration_ms": 500}}}}}))
        assert json.loads(ws.recv(timeout=20))["type"] == "session.updated"
        audio = speech + pcm24(silence(1500))
        for i in range(0, len(audio), CHUNK):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": b64(audio[i:i + CHUNK])}))
        events = raw_events(ws, COMPLETED)  # no commit from the client
    types = [e["type"] for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.added",
             "conversation.item.done", COMPLETED]
    assert [t for t in types if t in order] == order, types
    started, stopped = events[types.index(order[0])], events[types.index(order[1])]
    assert started["item_id"] == stopped["item_id"] == events[-1]["item_id"]
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 4500
    assert word_error_rate(GOFORWARD_TEXT, events[-1]["transcript"]) <= 0.25, events[-1]


def test_browser_subprotocols_select_realtime_and_the_beta_shape(gateway):
    url = f"{gateway.ws_url}/v1/realtime?intent=transcription"
    offered = ["realtime", "openai-insecure-api-key.sk-local", "openai-beta.realtime-v1"]
    with connect(url, open_timeout=10, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        created = json.loads(ws.recv(timeout=20))
    assert created["type"] == "transcription_session.created"
    assert created["session"]["input_audio_format"] == "pcm16"


def test_bad_input_gets_error_events_and_the_session_goes_on(gateway, speech):
    url = f"{gateway.ws_url}/v1/realtime?intent=transcription"
    with connect(url, open_timeout=10, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "session.created"

        def refused(msg: str | bytes) -> dict[str, Any]:
            ws.send(msg)
            ev = json.loads(ws.recv(timeout=20))
            assert ev["type"] == "error", ev
            return ev["error"]

        err = refused(json.dumps({"type": "response.create", "event_id": "e1"}))
        assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "type", "e1")
        assert "input_audio_buffer.append" in err["message"]
        assert refused(json.dumps({"event_id": "e2"}))["code"] == "invalid_event"
        err = refused(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%",
                                  "event_id": "e3"}))
        assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "audio", "e3")
        err = refused(json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"abc")}))
        assert err["param"] == "audio"  # an odd number of bytes is not PCM16
        err = refused(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": b64(bytes(48000 * 61))}))  # 61 s in one append
        assert err["param"] == "audio" and "60 s" in err["message"]
        err = refused(json.dumps({"type": "session.update", "event_id": "e4", "session": {
            "type": "transcription", "audio": {"input": {
                "transcription": {"model": "NamoLi/whisper-large-v3-ov"}}}}}))
        assert err["code"] == "invalid_model" and err["event_id"] == "e4"
        assert err["param"] == "session.audio.input.transcription.model"
        assert "pocketsphinx-en-us" in err["message"]  # names what is installed
        err = refused(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"format": {
                "type": "audio/pcm", "rate": 16000}}}}}))
        assert err["code"] == "integer_below_min_value"
        err = refused(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "mp3"}}))
        assert err["param"] == "session.input_audio_format"
        assert refused(b"\x00\x01")["code"] == "invalid_event"
        assert refused("{not json")["code"] == "invalid_json"
        err = refused(json.dumps({"type": "input_audio_buffer.commit", "event_id": "e5"}))
        assert (err["code"], err["event_id"]) == ("input_audio_buffer_commit_empty", "e5")
        # clear drops what was appended: the commit after it is empty again
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(speech[:9600])}))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(ws.recv(timeout=20))["type"] == "input_audio_buffer.cleared"
        err = refused(json.dumps({"type": "input_audio_buffer.commit"}))
        assert err["code"] == "input_audio_buffer_commit_empty"
        # none of it changed the session, which still transcribes
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"turn_detection": None}}}}))
        session = json.loads(ws.recv(timeout=20))["session"]
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        for i in range(0, len(speech), 4800):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": b64(speech[i:i + 4800])}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = raw_events(ws, COMPLETED)
    assert word_error_rate(GOFORWARD_TEXT, events[-1]["transcript"]) <= 0.25, events[-1]


def test_an_engine_that_refuses_the_turn_is_an_error_event_and_the_next_turn_works(
        gateway, speech):
    url = f"{gateway.ws_url}/v1/realtime?intent=transcription"

    def update(ws: Any, language: str) -> None:
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {
                "transcription": {"model": "pocketsphinx-en-us", "language": language},
                "turn_detection": None}}}}))
        assert json.loads(ws.recv(timeout=20))["type"] == "session.updated"

    def append(ws: Any) -> None:
        for i in range(0, len(speech), 4800):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": b64(speech[i:i + 4800])}))

    with connect(url, open_timeout=10, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
        update(ws, "fr")  # pocketsphinx-en-us decodes English only
        append(ws)
        ev = json.loads(ws.recv(timeout=30))
        assert ev["type"] == "error" and ev["error"]["type"] == "server_error", ev
        assert ev["error"]["code"] == "model_error", ev
        # one error for the turn, not one per append; its commit says it failed
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        failed = raw_events(ws, "conversation.item.input_audio_transcription.failed")
        assert failed[0]["type"] == "input_audio_buffer.committed", failed
        assert "error" not in [e["type"] for e in failed], failed
        assert failed[-1]["item_id"] == failed[0]["item_id"]
        update(ws, "en")
        append(ws)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = raw_events(ws, COMPLETED)
    assert word_error_rate(GOFORWARD_TEXT, events[-1]["transcript"]) <= 0.25, events[-1]


def test_a_burst_of_appends_sent_at_once_transcribes_and_a_bad_one_among_them_is_answered(
        gateway, speech):
    """The whole recording as 40 ms appends written back to back, a bad append among
    them and the commit right behind: the door hands waiting appends on together, and
    the bad one still gets its own error event (its event_id echoed) while the audio
    around it is transcribed, in order, as if it had come one append at a time."""
    url = f"{gateway.ws_url}/v1/realtime?intent=transcription"
    chunks = [speech[i:i + CHUNK] for i in range(0, len(speech), CHUNK)]
    events = [json.dumps({"type": "input_audio_buffer.append", "audio": b64(c)})
              for c in chunks]
    events.insert(len(events) // 2, json.dumps({"type": "input_audio_buffer.append",
                                                "audio": "%%%", "event_id": "bad-1"}))
    events.append(json.dumps({"type": "input_audio_buffer.commit"}))
    with connect(url, open_timeout=10, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {
                "transcription": {"model": "pocketsphinx-en-us"},
                "turn_detection": None}}}}))
        assert json.loads(ws.recv(timeout=20))["type"] == "session.updated"
        for ev in events:
            ws.send(ev)
        seen = raw_events(ws, COMPLETED)
    errors = [e["error"] for e in seen if e["type"] == "error"]
    assert [(e["code"], e["param"], e["event_id"]) for e in errors] == [
        ("invalid_value", "audio", "bad-1")], seen
    types = [e["type"] for e in seen]
    assert types.index("error") < types.index("input_audio_buffer.committed"), types
    assert seen[-1]["usage"]["seconds"] > 2, seen[-1]
    assert word_error_rate(GOFORWARD_TEXT, seen[-1]["transcript"]) <= 0.25, seen[-1]


def test_the_door_hands_waiting_appends_on_together_in_order():
    """Unit check of the door's loop (a recording socket and invocation stand in for
    the client and the plugin): appends already waiting go in one `send_many`, their
    PCM the same as one resampler fed append by append; a bad append among them stops
    the burst, gets its own error after the audio before it was handed on, and a lone
    append after it goes at once with `send`."""
    import trio

    from aogstream.bidi.openai_realtime import OpenAIRealtimeSession, Turn
    from aogstream.bidi.resample import StreamResampler
    from aogstream.bidi.socket import Disconnected

    log: list[tuple[str, Any]] = []
    gap = "(the next message is not there yet)"

    class Socket:
        def __init__(self, msgs: list[str]) -> None:
            self.msgs = msgs

        async def receive(self) -> str:
            while self.msgs and self.msgs[0] == gap:
                self.msgs.pop(0)
            if not self.msgs:
                raise Disconnected(1000)
            return self.msgs.pop(0)

        def receive_nowait(self) -> str:
            if not self.msgs or self.msgs[0] == gap:  # nothing waiting (yet)
                raise trio.WouldBlock
            return self.msgs.pop(0)

        async def send_text(self, text: str) -> None:
            log.append(("event", json.loads(text)))

    class Inv:
        async def send(self, frame: Any) -> None:
            log.append(("send", [frame.data]))

        async def send_many(self, frames: list[Any]) -> None:
            log.append(("send_many", [f.data for f in frames]))

    pcm = [bytes(range(i, i + 240)) * 4 for i in range(4)]  # 4 x 20 ms at 24 kHz

    def append(data: bytes, **extra: str) -> str:
        return json.dumps({"type": "input_audio_buffer.append", "audio": b64(data),
                           **extra})
    msgs = [append(pcm[0]), append(pcm[1]), append(pcm[2]),
            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%",
                        "event_id": "bad-1"}),
            gap, append(pcm[3])]
    gateway = type("G", (), {"config": type("C", (), {"realtime_session_seconds": None})(),
                             "route": lambda self, service, params: None})()
    session = OpenAIRealtimeSession(Socket(msgs), gateway, "c1",  # type: ignore[arg-type]
                                    beta=False, model=None)
    turn = session.turn = Turn(1, None, 0, "audio/pcm")  # type: ignore[arg-type]
    turn.inv = Inv()  # type: ignore[assignment]
    trio.run(session._loop)

    assert [kind for kind, _ in log] == ["send_many", "event", "send"], [
        x if kind == "event" else kind for kind, x in log]
    assert len(log[0][1]) == 3
    err = log[1][1]["error"]
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "audio", "bad-1")
    reference = StreamResampler(24000, 16000)
    assert b"".join(log[0][1] + log[2][1]) == b"".join(reference.feed(p) for p in pcm)
    assert session.audio_ms == turn.audio_ms == 80


def test_an_unknown_model_in_the_url_is_refused_with_an_error_and_close_4000(gateway):
    url = f"{gateway.ws_url}/v1/realtime?model=no-such-model"
    with connect(url, open_timeout=10) as ws:
        ev = json.loads(ws.recv(timeout=20))
        assert ev["type"] == "error" and ev["error"]["code"] == "invalid_model", ev
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        assert ws.close_code == 4000


def test_the_key_a_browser_sends_as_a_subprotocol_counts_as_a_credential():
    """Unit check of the guard's request facts: browsers cannot set Authorization, so
    OpenAI's browser clients put the key in `openai-insecure-api-key.<key>`."""
    from aogstream.http.guard import request_facts

    scope = {"type": "websocket", "path": "/v1/realtime", "headers": [
        (b"sec-websocket-protocol",
         b"realtime, openai-insecure-api-key.sk-abc, openai-beta.realtime-v1")]}
    assert request_facts(scope).credentials == ("sk-abc",)


def test_the_readme_realtime_snippet_prints_the_transcript(gateway):
    """The README's OpenAI Realtime snippet, run as written (port aside)."""
    readme = (REPO / "README.md").read_text()
    part = readme[readme.index("**The same engines in OpenAI's Realtime protocol.**"):]
    code = part[part.index("<<'EOF'\n") + 8:part.index("\nEOF\n")]
    code = code.replace("127.0.0.1:16688", f"127.0.0.1:{gateway.port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    final = [ln for ln in proc.stdout.splitlines() if ln.startswith("final:")]
    assert final, proc.stdout
    assert word_error_rate(GOFORWARD_TEXT, final[0].removeprefix("final:")) <= 0.25, final


def test_a_session_past_its_maximum_duration_gets_session_expired_and_a_close(
        tmp_path, speech):
    """OpenAI ends a session at 60 minutes with a `session_expired` error and a close; the
    limit is `AOGSTREAM_REALTIME_SESSION_SECONDS`, here 2 s, on a gateway of its own
    with the real pocketsphinx-plugin. A turn is still open (audio appended, no commit)
    when the limit hits: the session ends all the same."""
    limit = 2.0
    with shipped_plugins_gateway(tmp_path, ["pocketsphinx-plugin"],
                                 env={"AOGSTREAM_REALTIME_SESSION_SECONDS": str(limit)}) as gw:
        gw.wait_plugin_running(name="pocketsphinx-plugin", timeout=60)
        url = f"{gw.ws_url}/v1/realtime?intent=transcription"
        opened = time.time()
        with connect(url, open_timeout=10, max_size=None) as ws:
            created = json.loads(ws.recv(timeout=20))
            assert created["type"] == "session.created", created
            expires_at = created["session"]["expires_at"]
            assert opened + limit - 1 <= expires_at <= time.time() + limit + 1, created
            ws.send(json.dumps({"type": "session.update", "session": {
                "type": "transcription", "audio": {"input": {"turn_detection": None}}}}))
            assert json.loads(ws.recv(timeout=20))["type"] == "session.updated"
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": b64(speech[:48000])}))
            events = raw_events(ws, "error", timeout=limit + 20)
            expired = time.time()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
            assert ws.close_code == 1000, ws.close_code
            assert ws.close_reason == "invalid_request_error.session_expired"
    err = events[-1]["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "session_expired"), events
    assert err["message"] == "Your session hit the maximum duration of 2 seconds."
    assert expired - opened >= limit
