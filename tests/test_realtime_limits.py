"""Realtime speech sessions cannot wear the gateway or the pocketsphinx plugin down.

Real parts: a gateway subprocess serving only the shipped pocketsphinx-plugin (its real
engine and en-us model from the test engine directory) in one serving process
(`AOGSTREAM_WORKERS=1`, so the per-process session cap is the whole gateway's) with
`AOGSTREAM_MAX_REALTIME_SESSIONS=3`; a real `websockets` client speaking AOG's realtime
protocol over loopback with recorded speech; the plugin's resident memory read from the
operating system.

Proven:
* 60 sessions, ended every way a session ends (finish-task with a transcript, the client
  leaving mid-audio, which cancels the plugin's call), leave the plugin's memory within a
  few MB (under 10) of where it was after warm-up: each session's decoder (~50-90 MB) is
  given back, not kept. The same audio gets the same transcript on every session, so a
  decoder reused from the pool carries nothing over from the session before;
* with 3 sessions open, a 4th gets AOG's `task-failed` naming the limit and the setting
  that raises it, then a close with 1013 (try again later); once one of the 3 ends, a new
  session is accepted and transcribes;
* the plugin caps the sessions it decodes on its own (several serving processes share it);
* a generic WebSocket service (the echo test plugin's `echo-ws`) is capped the same way,
  with the relay's `{"error": ...}` frame.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
from audio import GOFORWARD_TEXT, frames, goforward_pcm
from conftest import Gateway, shipped_plugins_gateway
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

PLUGIN = "pocketsphinx-plugin"
LIMIT = 3
RUN = json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                  "model": "pocketsphinx-en-us",
                  "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en"}})
FINISH = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})
SESSIONS = 60
# a kept decoder is 50-90 MB; what else moves is pocketsphinx's own leak (~20 KB a
# session), the lane connections the gateway keeps open to the plugin, and the allocator:
# 1-3 MB on a quiet machine, 5.4 MB once under load
GROWTH_MB = 10.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("realtime-limits"), [PLUGIN],
                                 {"AOGSTREAM_MAX_REALTIME_SESSIONS": str(LIMIT),
                                  "AOGSTREAM_WORKERS": "1"}) as gw:
        gw.wait_plugin_running(name=PLUGIN, timeout=30)
        yield gw


def url(gw: Gateway) -> str:
    return gw.service_ws_url("speech-to-text-ws")


@contextlib.contextmanager
def open_task(gw: Gateway) -> Iterator[ClientConnection]:
    """A socket with a running task (task-started received), closed on exit."""
    with connect(url(gw), open_timeout=10, max_size=None) as ws:
        ws.send(RUN)
        ev = json.loads(ws.recv(timeout=20))
        assert ev["header"]["event"] == "task-started", ev
        yield ws


def finish(ws: ClientConnection) -> list[dict[str, Any]]:
    """finish-task, then every event up to task-finished (or task-failed)."""
    ws.send(FINISH)
    events = []
    while True:
        ev = json.loads(ws.recv(timeout=30))
        events.append(ev)
        if ev["header"]["event"] in ("task-finished", "task-failed"):
            return events


def transcribe(gw: Gateway, pcm: bytes) -> str:
    """One whole session: run-task, the audio in 100 ms frames, finish-task; the finals."""
    with open_task(gw) as ws:
        for f in frames(pcm, 100):
            ws.send(f)
        events = finish(ws)
    assert events[-1]["header"]["event"] == "task-finished", events[-1]
    return " ".join(e["payload"]["output"]["sentence"]["text"] for e in events
                    if e["header"]["event"] == "result-generated"
                    and e["payload"]["output"]["sentence"]["sentence_end"])


def leave_mid_audio(gw: Gateway, pcm: bytes) -> None:
    """A client that sends some audio and goes away without finish-task."""
    with open_task(gw) as ws:
        for f in frames(pcm, 100):
            ws.send(f)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def settled_rss(pid: int, timeout: float = 15.0) -> float:
    """The plugin's RSS once sessions that just ended have given their decoders back
    (that happens in a worker thread after the session): four reads 0.25 s apart that
    agree within 0.5 MB."""
    deadline = time.monotonic() + timeout
    reads = [rss_mb(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.25)
        reads = [*reads[-3:], rss_mb(pid)]
        if len(reads) == 4 and max(reads) - min(reads) < 0.5:
            break
    return reads[-1]


def test_sixty_sessions_give_their_decoders_back(gateway: Gateway) -> None:
    pid = gateway.plugin(PLUGIN)["pid"]
    speech = goforward_pcm()
    # warm-up: two sessions at once (the pool keeps two decoders ready), then one more
    with ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda _: transcribe(gateway, speech), range(2)))
    first.append(transcribe(gateway, speech))
    assert first[0], "the warm-up session gave no transcript"
    assert first == [first[0]] * 3, first
    before = settled_rss(pid)

    texts = []
    for i in range(SESSIONS):
        if i % 3 == 0:
            texts.append(transcribe(gateway, speech))
        else:
            leave_mid_audio(gateway, speech[: len(speech) // 2])
    after = settled_rss(pid)

    print(f"plugin RSS after warm-up {before:.1f} MB, after {SESSIONS} sessions {after:.1f} MB")
    assert texts == [first[0]] * len(texts), (
        "a reused decoder must decode as a fresh one: the same audio, the same transcript")
    assert first[0].split()[:2] == GOFORWARD_TEXT.split()[:2], first[0]
    assert gateway.plugin(PLUGIN)["pid"] == pid, "the plugin restarted during the test"
    assert after - before < GROWTH_MB, (
        f"{SESSIONS} sessions grew the plugin from {before:.1f} to {after:.1f} MB")


def test_session_over_the_cap_is_refused_until_one_ends(gateway: Gateway) -> None:
    with contextlib.ExitStack() as stack:
        open_ = [stack.enter_context(open_task(gateway)) for _ in range(LIMIT)]
        with connect(url(gateway), open_timeout=10) as extra:
            with contextlib.suppress(ConnectionClosed):
                extra.send(RUN)  # the refusal may close the socket before the client speaks
            ev = json.loads(extra.recv(timeout=20))
            header = ev["header"]
            assert header["event"] == "task-failed", ev
            assert header["error_code"] == "SERVER_ERROR", ev
            assert f"{LIMIT} open WebSocket sessions" in header["error_message"], ev
            assert "AOGSTREAM_MAX_REALTIME_SESSIONS" in header["error_message"], ev
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=20)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

        # the open sessions were not disturbed by the refusal; one of them ends
        assert finish(open_[0])[-1]["header"]["event"] == "task-finished"
        open_[0].close()
        # its slot is freed once the gateway has seen the close: retry a bounded while
        deadline = time.monotonic() + 10
        while True:
            with connect(url(gateway), open_timeout=10, max_size=None) as ws:
                ws.send(RUN)
                ev = json.loads(ws.recv(timeout=20))
                if ev["header"]["event"] == "task-started":
                    for f in frames(goforward_pcm(), 100):
                        ws.send(f)
                    events = finish(ws)
                    break
            assert time.monotonic() < deadline, f"no session accepted after one ended: {ev}"
            time.sleep(0.05)
        assert events[-1]["header"]["event"] == "task-finished", events[-1]
        assert any(e["header"]["event"] == "result-generated" for e in events), events


def test_plugin_caps_the_sessions_it_decodes(tmp_path) -> None:
    """Several serving processes share one plugin, so the plugin counts for itself: with
    the gateway's cap off, the plugin's own (`POCKETSPHINX_MAX_SESSIONS=2`) refuses a
    third session with a task-failed naming it, and the socket stays usable."""
    with shipped_plugins_gateway(tmp_path, [PLUGIN],
                                 {"AOGSTREAM_MAX_REALTIME_SESSIONS": "0",
                                  "POCKETSPHINX_MAX_SESSIONS": "2"}) as gw, \
            contextlib.ExitStack() as stack:
        gw.wait_plugin_running(name=PLUGIN, timeout=30)
        first = stack.enter_context(open_task(gw))
        second = stack.enter_context(open_task(gw))
        # task-started comes from the gateway: wait for each session's first result,
        # which proves the plugin holds a decoder for it, before the third one asks
        for ws in (first, second):
            for f in frames(goforward_pcm(), 100):
                ws.send(f)
            while json.loads(ws.recv(timeout=30))["header"]["event"] != "result-generated":
                pass
        with connect(url(gw), open_timeout=10) as extra:
            extra.send(RUN)
            assert json.loads(extra.recv(timeout=20))["header"]["event"] == "task-started"
            header = json.loads(extra.recv(timeout=20))["header"]
            assert header["event"] == "task-failed", header
            assert header["error_code"] == "SERVER_ERROR", header
            assert "POCKETSPHINX_MAX_SESSIONS" in header["error_message"], header
            assert "2 realtime sessions" in header["error_message"], header
            # one session ends: the same socket's next run-task is decoded
            assert finish(first)[-1]["header"]["event"] == "task-finished"
            first.close()
            deadline = time.monotonic() + 10
            while True:
                extra.send(RUN)
                assert json.loads(extra.recv(timeout=20))["header"]["event"] == "task-started"
                for f in frames(goforward_pcm(), 100):
                    extra.send(f)
                events = finish(extra)
                if events[-1]["header"]["event"] == "task-finished":
                    break
                assert time.monotonic() < deadline, events[-1]
                time.sleep(0.05)
            assert any(e["header"]["event"] == "result-generated" for e in events), events


def test_generic_websocket_service_is_capped_too(gateway_factory) -> None:
    gw = gateway_factory("ws-cap", AOGSTREAM_MAX_REALTIME_SESSIONS="1", AOGSTREAM_WORKERS="1")
    echo = gw.service_ws_url("echo-ws")
    with connect(echo, open_timeout=10) as first:
        first.send("hello")
        assert first.recv(timeout=10) == "hello"
        with connect(echo, open_timeout=10) as extra:
            body = json.loads(extra.recv(timeout=10))
            assert "1 open WebSocket sessions" in body["error"], body
            assert "AOGSTREAM_MAX_REALTIME_SESSIONS" in body["error"], body
            with pytest.raises(ConnectionClosed) as closed:
                extra.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        first.send("still here")
        assert first.recv(timeout=10) == "still here"
