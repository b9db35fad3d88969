"""The request log, recent requests and `/metrics` of a real gateway.

Real parts: `aogstream server start` with two serving processes (the primary and one
worker, `AOGSTREAM_WORKERS=2`) and the echo test plugin as a real process, driven over
loopback by httpx and a WebSocket client; the log is the gateway's own output, parsed
as the JSON lines `AOGSTREAM_REQUEST_LOG=json` writes; `/metrics` is parsed with
prometheus_client's own text parser.

Proven:
- a streamed chat writes one log line naming the route, service, model, provider and
  plugin that served it, its status, time to first byte, duration, bytes and chunks,
  and no body; a stream the client abandons is logged as cancelled, and so is a
  unary call it leaves before the answer (status 499, the call cut short); the line
  and the answer share the request id (`x-aogstream-request`);
- a WebSocket session is logged once, with its status, service, plugin and frames;
- `GET /aogstream/v1/requests` shows those same records from whichever process
  served them, newest first, and refuses a bad `limit` with a 400 saying what to send;
- `/metrics` parses, and its counters move by exactly the traffic sent, although that
  traffic was served by both processes (each counts in its own files, the primary adds
  them up); stream gaps, provider calls, WebSocket frames and reply times, and plugin
  state are there, and a live WebSocket session's frames show before it ends;
- plugins' `ctx.llm` calls and the trust gate's denials are counted (the llm-probe test
  plugin, a real process calling back into the gateway);
- with `AOGSTREAM_METRICS=off` nothing is counted and `/metrics` says so, while the
  gateway serves and logs as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import REPO, SERVICES, Gateway, parse_sse, raw_http
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "secret-prompt"}]}
WAIT = 10.0


@pytest.fixture(scope="module")
def two_process_gateway(gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    yield gateway_factory("observe", AOGSTREAM_WORKERS="2", AOGSTREAM_REQUEST_LOG="json")


def log_records(gw: Gateway) -> list[dict[str, Any]]:
    """The JSON lines of the request log in the gateway's output."""
    out = []
    for line in gw.log_file.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"route"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_log(gw: Gateway, rid: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = [r for r in log_records(gw) if r.get("id") == rid]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {rid}; log:\n{gw.log_tail()}")


def recent(gw: Gateway, limit: int = 200) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/aogstream/v1/requests", params={"limit": limit}, timeout=5)
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["requests"]
    return records


def metrics(gw: Gateway) -> dict[str, float]:
    """Every sample of `/metrics` as `name{label=value,...}` → value."""
    r = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_a_streamed_chat_is_logged_with_who_served_it(two_process_gateway: Gateway):
    gw = two_process_gateway
    with httpx.Client(timeout=10) as c:
        r = c.post(gw.service_url("chat"), json={**CHAT, "stream": True, "tokens": 5,
                                                 "interval": 0.02})
    assert r.status_code == 200
    events = parse_sse(r.content)
    assert events and events[-1].get("finished") is True
    rid = r.headers["x-aogstream-request"]
    rec = wait_log(gw, rid)
    assert rec["method"] == "POST"
    assert rec["route"] == "/aog/v0.2/services/{service}"
    assert rec["path"] == "/aog/v0.2/services/chat"
    assert (rec["service"], rec["model"]) == ("chat", "echo")
    assert rec["provider"] == r.headers["x-aogstream-provider"] == "local_echo-plugin_chat"
    assert rec["plugin"] == r.headers["x-aogstream-plugin"] == "echo-plugin"
    assert rec["status"] == 200 and rec["stream"] is True and rec["cancelled"] is False
    assert rec["bytes_out"] == len(r.content) and rec["bytes_in"] > 0
    assert 2 <= rec["chunks"] <= 6  # 20 ms apart: not all coalesced into one send
    assert 0 < rec["ttfb_ms"] <= rec["duration_ms"]
    assert rec["duration_ms"] >= 80  # five tokens 20 ms apart
    assert rec["process"] in ("primary", "w1")
    assert "secret-prompt" not in json.dumps(rec)  # never a body
    # the same record in the recent requests
    assert rid in {x["id"] for x in recent(gw)}


def test_a_cancelled_stream_is_logged_as_cancelled(two_process_gateway: Gateway):
    gw = two_process_gateway
    with httpx.Client(timeout=10) as c, c.stream(
            "POST", gw.service_url("chat"),
            json={**CHAT, "stream": True, "tokens": 1000, "interval": 0.01}) as r:
        assert r.status_code == 200
        rid = r.headers["x-aogstream-request"]
        got = b""
        for chunk in r.iter_raw():
            got += chunk
            if got.count(b"data:") >= 3:
                break
        r.close()
    rec = wait_log(gw, rid)
    assert rec["cancelled"] is True, rec
    assert rec["status"] == 200 and rec["stream"] is True
    assert (rec["service"], rec["plugin"]) == ("chat", "echo-plugin")
    assert rec["chunks"] >= 1 and rec["bytes_out"] >= len(got)
    assert rec["duration_ms"] < 10_000 * 0.9  # 1,000 tokens 10 ms apart: cut well before


def test_a_unary_call_the_client_leaves_is_logged_as_cancelled(two_process_gateway: Gateway):
    gw = two_process_gateway
    tag = f"leave-{time.monotonic_ns()}"
    sock = raw_http(gw.port, "POST", SERVICES + "generate",
                    json.dumps({"id": tag, "sleep": 10}).encode())
    try:
        assert gw.wait_event("unary", timeout=WAIT, id=tag) is not None, gw.log_tail()
    finally:
        sock.close()
    deadline = time.monotonic() + WAIT
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() < deadline:
        found = [r for r in log_records(gw)
                 if r["path"] == SERVICES + "generate" and r["status"] == 499]
        time.sleep(0.05)
    assert len(found) == 1, f"no single 499 line for the call; log:\n{gw.log_tail()}"
    rec = found[0]
    assert rec["cancelled"] is True and rec["service"] == "generate", rec
    assert rec["duration_ms"] < 10_000 * 0.9, rec  # cut when the client left, not at 10 s


def test_recent_requests_lists_every_process_newest_first(two_process_gateway: Gateway):
    gw = two_process_gateway
    ids = []
    seen: set[str] = set()
    deadline = time.monotonic() + WAIT
    # a new connection per request: the kernel spreads them over both processes
    while time.monotonic() < deadline and (len(seen) < 2 or len(ids) < 4):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=5)
        assert r.status_code == 200
        ids.append(r.headers["x-aogstream-request"])
        seen = {x["process"] for x in recent(gw) if x["id"] in ids}
    assert seen == {"primary", "w1"}, seen
    records = recent(gw)
    ours = [x for x in records if x["id"] in ids]
    assert len(ours) == len(ids)
    stamps = [x["ts"] for x in records]
    assert stamps == sorted(stamps, reverse=True)
    assert all(x["route"] == "/v1/chat/completions" and x["plugin"] == "echo-plugin"
               for x in ours)
    assert len(recent(gw, limit=2)) == 2
    for bad in ("0", "abc", "-1", "99999999"):
        r = httpx.get(f"{gw.url}/aogstream/v1/requests", params={"limit": bad}, timeout=5)
        assert r.status_code == 400, (bad, r.text)
        assert "limit" in r.json()["error"]


def test_metrics_parse_and_count_the_traffic_of_every_process(two_process_gateway: Gateway):
    gw = two_process_gateway
    key = "aogstream_requests_total{route=/v1/chat/completions,service=chat,status=200}"
    calls = "aogstream_plugin_calls_total{plugin=echo-plugin,service=chat}"
    before = metrics(gw)
    ids = []
    for _ in range(30):  # new connections: both processes serve some (checked below)
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=5)
        assert r.status_code == 200
        ids.append(r.headers["x-aogstream-request"])
    served_by = {x["process"] for x in recent(gw, 500) if x["id"] in ids}
    after = metrics(gw)
    assert after[key] - before.get(key, 0) == 30
    assert after[calls] - before.get(calls, 0) >= 30
    if served_by != {"primary", "w1"}:  # the kernel's choice; say so, do not hide it
        pytest.fail(f"all 30 connections went to {served_by}: cannot show both counted")
    # a stream with gaps between its chunks, and a WebSocket session
    r = httpx.post(gw.service_url("chat"), json={**CHAT, "stream": True, "tokens": 4,
                                                 "interval": 0.02}, timeout=10)
    assert r.status_code == 200
    with connect(gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(timeout=5) == text
    deadline = time.monotonic() + WAIT
    while True:  # the session is counted when the gateway has seen it close
        m = metrics(gw)
        frames_in = m.get("aogstream_websocket_frames_total{direction=in,service=echo-ws}", 0)
        if frames_in >= 2 and m["aogstream_active_websocket_sessions{}"] == 0:
            break
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "websocket" in k}
        time.sleep(0.05)
    gaps = "aogstream_stream_chunk_gap_seconds_count{service=chat}"
    assert m[gaps] - before.get(gaps, 0) >= 2
    assert m["aogstream_active_streams{}"] == 0
    assert m["aogstream_websocket_frames_total{direction=out,service=echo-ws}"] >= 2
    assert m["aogstream_websocket_reply_seconds_count{service=echo-ws}"] >= 2
    assert m["aogstream_plugin_state{plugin=echo-plugin,state=running}"] == 1
    assert m["aogstream_plugin_up{plugin=echo-plugin}"] == 1
    assert "aogstream_plugin_restarts_total{plugin=echo-plugin}" in m
    ttfb = "aogstream_request_ttfb_seconds_count{route=/aog/v0.2/services/{service},service=chat}"
    assert m[ttfb] >= 1
    # unknown paths share one label, whatever clients send
    httpx.get(f"{gw.url}/no/such/{time.monotonic()}", timeout=5)
    assert not any("/no/such" in k for k in metrics(gw))


def test_a_live_websocket_sessions_frames_reach_the_metrics_while_it_is_open(
        two_process_gateway: Gateway):
    """A session's frames are counted locally and added about once a second: a scrape
    sees a long session's frames and reply times before it ends, not only after."""
    gw = two_process_gateway
    key_in = "aogstream_websocket_frames_total{direction=in,service=echo-ws}"
    key_out = "aogstream_websocket_frames_total{direction=out,service=echo-ws}"
    replies = "aogstream_websocket_reply_seconds_count{service=echo-ws}"
    before = metrics(gw)
    sent = 0
    with connect(gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        deadline = time.monotonic() + WAIT
        while True:  # frames go on while the test looks, as a realtime client's would
            ws.send(f"frame {sent}")
            assert ws.recv(timeout=5) == f"frame {sent}"
            sent += 1
            m = metrics(gw)
            if m.get(key_in, 0) - before.get(key_in, 0) >= 2 \
                    and m.get(key_out, 0) - before.get(key_out, 0) >= 2 \
                    and m.get(replies, 0) - before.get(replies, 0) >= 2:
                break
            assert time.monotonic() < deadline, {k: v for k, v in m.items()
                                                  if "websocket" in k}
            time.sleep(0.05)
        assert m["aogstream_active_websocket_sessions{}"] >= 1  # still open
        # never more than the session has sent and been answered
        assert m[key_in] - before.get(key_in, 0) <= sent


def test_metrics_off_counts_nothing_and_serving_goes_on(
        gateway_factory: Callable[..., Gateway]):
    gw = gateway_factory("no-metrics", AOGSTREAM_METRICS="off", AOGSTREAM_WORKERS="1")
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=5)
    assert r.status_code == 200
    rid = r.headers["x-aogstream-request"]
    m = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert m.status_code == 404 and "AOGSTREAM_METRICS=off" in m.json()["error"]
    deadline = time.monotonic() + WAIT
    while "request POST /v1/chat/completions id=" + rid not in gw.log_file.read_text():
        assert time.monotonic() < deadline, gw.log_tail()
        time.sleep(0.05)  # the default text line, key=value


def test_a_bad_setting_refuses_to_start_and_says_which(
        gateway_factory: Callable[..., Gateway]):
    with pytest.raises(Exception, match="AOGSTREAM_REQUEST_LOG"):
        gateway_factory("bad-setting", AOGSTREAM_REQUEST_LOG="loud")


def test_a_websocket_session_is_logged_with_its_frames(two_process_gateway: Gateway):
    gw = two_process_gateway
    began = time.time()
    with connect(gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        for text in ("one", "two", "three"):
            ws.send(text)
            assert ws.recv(timeout=5) == text
    deadline = time.monotonic() + WAIT
    while True:
        found = [x for x in recent(gw) if x["kind"] == "websocket" and x["ts"] >= began - 1
                 and x["path"] == "/aog/v0.2/services/echo-ws"]
        if found:
            break
        assert time.monotonic() < deadline, recent(gw, 5)
        time.sleep(0.05)
    rec = found[0]
    assert rec["status"] == 101 and rec["route"] == "/aog/v0.2/services/{service}"
    assert (rec["service"], rec["plugin"]) == ("echo-ws", "echo-plugin")
    assert rec["frames_in"] == 3 and rec["frames_out"] == 3
    assert rec["bytes_in"] == len("onetwothree") and rec["close_code"] is not None
    assert rec["id"] in {r["id"] for r in log_records(gw)}


def test_plugin_llm_calls_and_trust_denials_are_in_the_metrics(tmp_path):
    """The llm-probe test plugin calls `ctx.llm` twice with no grant in the operator's
    config: a plain call is served (by the echo plugin's chat), one that picks its own
    model is denied by the trust gate; `/metrics` counts both, and the denial."""
    gw = Gateway(tmp_path, {"AOGSTREAM_WORKERS": "1"},
                 plugin_dir=[REPO / "tests" / "plugins", REPO / "tests" / "plugins-llm"])
    gw.start()
    try:
        answers = []
        for kwargs in ({}, {"model": "echo"}):
            r = httpx.post(gw.service_url("llm-probe"), json={
                "call": "complete", "args": [[{"role": "user", "content": "hi"}]],
                "kwargs": kwargs}, timeout=60)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        assert answers[0]["ok"] is True, answers
        assert answers[1].get("error_type") == "PluginLlmTrustError", answers
        m = metrics(gw)
        plugin = "llm-probe-plugin"
        assert m[f"aogstream_plugin_llm_trust_denials_total{{plugin={plugin}}}"] == 1
        assert m[f"aogstream_plugin_llm_calls_total{{outcome=denied,plugin={plugin}}}"] == 1
        assert m[f"aogstream_plugin_llm_calls_total{{outcome=succeeded,plugin={plugin}}}"] == 1
        assert m[f"aogstream_plugin_calls_total{{plugin={plugin},service=llm-probe}}"] == 2
    finally:
        gw.stop()
