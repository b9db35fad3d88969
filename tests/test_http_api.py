"""End-to-end HTTP API of a real gateway with the echo plugin: health/version, unary
JSON, SSE and NDJSON streaming (headers, framing, per-event flushing), error bodies and
statuses, mid-stream errors, and cancellation of the plugin's call when the client
goes away (SSE, NDJSON, unary, WebSocket); the Date and Server headers hypercorn adds."""

from __future__ import annotations

import email.utils
import itertools
import json
import time

import httpx
import pytest
from conftest import (
    EventReader,
    Gateway,
    new_id,
    parse_ndjson,
    parse_sse,
    raw_http,
)
from websockets.sync.client import connect

SERVICES = "/aog/v0.2/services/"
CANCEL_WITHIN = 0.5  # plugin must see the cancellation this soon after the client leaves


# ---- basics ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/aog/v0.2/health"])
def test_health(gateway: Gateway, client, path):
    r = client.get(gateway.url + path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["business_code"] == 80000, body
    assert body["data"] == {"status": "UP"}, body
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize("path", ["/version", "/aog/v0.2/version"])
def test_version(gateway: Gateway, client, path):
    r = client.get(gateway.url + path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["business_code"], int) and "message" in body, body
    data = body["data"]
    assert data["spec_version"] == "v0.2", data
    assert data["version"] and data["aogstream"], data


def test_unary_generate(gateway: Gateway, client):
    tag = new_id("unary")
    req = {"id": tag, "model": "echo", "prompt": "hi ü"}
    r = client.post(gateway.service_url("generate"), json=req)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.headers.get("x-aogstream-provider") == "local_echo-plugin_generate", r.headers
    assert r.headers.get("x-aogstream-plugin") == "echo-plugin", r.headers
    assert r.json() == {"id": tag, "service": "generate", "echo": req}
    assert gateway.events("unary", id=tag, service="generate"), "plugin never saw the call"
    # hypercorn's own headers, made once a second by the gateway (HypercornConfig)
    date = email.utils.parsedate_to_datetime(r.headers["date"])
    assert abs(date.timestamp() - time.time()) < 5, r.headers["date"]
    assert r.headers["date"].endswith(" GMT") and r.headers["server"] == "hypercorn-h11"


# ---- streaming ----------------------------------------------------------------------


def test_sse_stream_headers_and_framing(gateway: Gateway, client):
    tag = new_id("sse")
    r = client.post(gateway.service_url("chat"), json={"id": tag, "stream": True, "tokens": 5})
    assert r.status_code == 200, r.text
    h = r.headers
    assert h["content-type"].startswith("text/event-stream"), h
    assert h.get("cache-control") == "no-cache", h
    assert h.get("x-accel-buffering") == "no", h
    assert h.get("x-aogstream-provider") == "local_echo-plugin_chat", h
    assert h.get("x-aogstream-plugin") == "echo-plugin", h
    events = parse_sse(r.content)
    assert len(events) == 6, f"want 5 tokens + 1 final event, got {events}"
    assert [e["message"]["content"] for e in events[:5]] == [f"tok{i} " for i in range(5)]
    assert all(e["id"] == tag and e["finished"] is False for e in events[:5]), events
    assert events[-1]["finished"] is True, events[-1]
    assert "business_code" not in events[-1], events[-1]


def test_sse_events_are_flushed_one_by_one(gateway: Gateway):
    """With 0.2 s between tokens, each event must reach the client when it is produced,
    not all together at the end of the stream."""
    tag = new_id("flush")
    reader = EventReader()
    with httpx.Client(timeout=httpx.Timeout(5.0)) as c:
        start = time.monotonic()
        with c.stream("POST", gateway.service_url("chat"),
                      json={"id": tag, "stream": True, "tokens": 5, "interval": 0.2}) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                reader.feed(chunk)
    times = [t - start for t in reader.times]
    print(f"\nSSE event arrival times (s): {[round(t, 3) for t in times]}")
    assert len(reader.events) == 6, reader.events
    assert reader.events[-1]["finished"] is True
    spread = times[-1] - times[0]
    assert spread >= 0.7, (
        f"events arrived within {spread:.3f} s of each other although the plugin produced "
        f"them 0.2 s apart: the stream is buffered, not flushed per event ({times})")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.1 for g in gaps), f"token events arrived in bursts: gaps {gaps}"


def test_ndjson_stream(gateway: Gateway, client):
    tag = new_id("ndjson")
    r = client.post(gateway.service_url("chat"), json={"id": tag, "stream": True, "tokens": 4},
                    headers={"Accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    assert r.headers.get("cache-control") == "no-cache", r.headers
    assert not r.content.startswith(b"data:"), "NDJSON was asked for but SSE came back"
    events = parse_ndjson(r.content)
    assert len(events) == 5, events
    assert [e["message"]["content"] for e in events[:4]] == [f"tok{i} " for i in range(4)]
    assert events[-1]["finished"] is True, events[-1]


def test_stream_true_on_unary_service_answers_json(gateway: Gateway, client):
    tag = new_id("nostream")
    req = {"id": tag, "stream": True}
    r = client.post(gateway.service_url("generate"), json=req)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.json() == {"id": tag, "service": "generate", "echo": req}


# ---- errors -------------------------------------------------------------------------


def assert_error(r: httpx.Response, status: int, code: int | None = None) -> dict:
    assert r.status_code == status, f"want {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"business_code", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["business_code"] == code, body
    return body


def test_unknown_service(gateway: Gateway, client):
    r = client.post(gateway.service_url("no-such-service"), json={})
    body = assert_error(r, 404, 10011)
    for svc in ("chat", "generate", "embed", "rerank", "echo-ws"):
        assert svc in body["message"], f"message should list available services: {body}"


def test_a_kept_alive_connection_survives_errors_answered_before_the_body(gateway: Gateway):
    """An unknown service or flavor endpoint is refused before its body is read; that
    answer says `connection: close`, so a client reusing its connection for the next
    request gets a fresh one instead of a connection closed under it."""
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]})
    with httpx.Client(timeout=10) as client:
        for _ in range(40):
            for path in ("/aog/v0.2/services/nope", "/v1/no-such-endpoint"):
                r = client.post(gateway.url + path, content=body)
                assert r.status_code == 404, r.text
                assert r.headers.get("connection") == "close"
                assert client.get(gateway.url + "/health").status_code == 200
        ok = client.post(gateway.service_url("chat"), content=body)
        assert ok.status_code == 200 and "connection" not in ok.headers


@pytest.mark.parametrize(
    ("content", "what"),
    [
        pytest.param(b'{"id": "x", "stream": tru', "malformed JSON", id="malformed"),
        pytest.param(b"[1, 2, 3]", "a JSON array", id="array"),
        pytest.param(b'"just a string"', "a JSON string", id="string"),
        pytest.param(b"", "an empty body", id="empty"),
        pytest.param(b"  \n ", "a blank body", id="blank"),
        pytest.param(b"\xff\xfe{}", "non-UTF-8 bytes", id="not-utf8"),
    ],
)
def test_bad_request_bodies(gateway: Gateway, client, content, what):
    r = client.post(gateway.service_url("generate"), content=content,
                    headers={"content-type": "application/json"})
    body = assert_error(r, 400, 40003)
    print(f"{what}: {body['message']}")


def test_method_not_allowed(gateway: Gateway, client):
    r = client.put(gateway.service_url("generate"), json={"id": "x"})
    body = assert_error(r, 405, 40005)
    assert "POST" in body["message"], body


def test_plugin_business_error(gateway: Gateway, client):
    tag = new_id("fail")
    r = client.post(gateway.service_url("generate"),
                    json={"id": tag, "fail_code": 2, "fail_message": "no such model: zz"})
    body = assert_error(r, 400)
    assert "no such model: zz" in body["message"], f"plugin's message lost: {body}"
    assert "echo-plugin" in body["message"], body


@pytest.mark.parametrize("ndjson", [False, True], ids=["sse", "ndjson"])
def test_mid_stream_plugin_error(gateway: Gateway, client, ndjson):
    tag = new_id("midfail")
    headers = {"Accept": "application/x-ndjson"} if ndjson else {}
    r = client.post(gateway.service_url("chat"), headers=headers,
                    json={"id": tag, "stream": True, "tokens": 5, "error_after": 2})
    assert r.status_code == 200, "headers went out with the first events"
    events = parse_ndjson(r.content) if ndjson else parse_sse(r.content)
    assert len(events) == 3, f"want 2 token events + 1 error event, got {events}"
    assert [e.get("message", {}).get("content") for e in events[:2]] == ["tok0 ", "tok1 "]
    last = events[-1]
    assert isinstance(last.get("business_code"), int), f"no business_code: {last}"
    assert "asked to fail mid-stream" in last.get("message", ""), last
    assert last.get("finished") is True, last


def test_stream_error_before_first_event_is_plain_json(gateway: Gateway, client):
    r = client.post(gateway.service_url("chat"),
                    json={"id": new_id("early"), "stream": True, "error_after": 0})
    body = assert_error(r, 500)
    assert "asked to fail mid-stream" in body["message"], body


def test_still_serves_after_errors(gateway: Gateway, client):
    tag = new_id("after")
    r = client.post(gateway.service_url("chat"), json={"id": tag, "stream": True, "tokens": 3})
    assert r.status_code == 200, r.text
    events = parse_sse(r.content)
    assert len(events) == 4 and events[-1]["finished"] is True, events
    p = gateway.plugin()
    assert p["state"] == "running" and p["restarts"] == 0, f"errors restarted the plugin: {p}"


def test_body_limit(gateway_factory):
    gw = gateway_factory("gw-limit", AOGSTREAM_MAX_BODY_BYTES="1000")
    with httpx.Client(timeout=5.0) as c:
        ok = c.post(gw.service_url("generate"), json={"id": "small", "pad": "x" * 500})
        assert ok.status_code == 200, ok.text
        big = {"id": "big", "pad": "x" * 2000}
        body = assert_error(c.post(gw.service_url("generate"), json=big), 413, 40002)
        assert "1000" in body["message"], f"message should name the limit: {body}"

        def chunked():  # no Content-Length: the limit must hold while reading
            for _ in range(4):
                yield b" " * 500
            yield b"{}"

        assert_error(c.post(gw.service_url("generate"), content=chunked()), 413, 40002)
        # and the gateway still works afterwards
        assert c.post(gw.service_url("generate"), json={"id": "again"}).status_code == 200


# ---- client cancellation -------------------------------------------------------------


def wait_cancelled(gateway: Gateway, closed_at: float, what: str, **match) -> float:
    ev = gateway.wait_event("cancelled", timeout=1.0, **match)
    assert ev is not None, (
        f"{what}: the plugin did not record a cancellation within 1 s of the client "
        f"leaving; events: {gateway.events(**match)}")
    delay = ev["t"] - closed_at
    print(f"\n{what}: client close → plugin cancelled in {delay * 1000:.1f} ms")
    assert delay < CANCEL_WITHIN, f"{what}: cancellation took {delay:.3f} s"
    return delay


@pytest.mark.parametrize("ndjson", [False, True], ids=["sse", "ndjson"])
def test_client_disconnect_cancels_stream(gateway: Gateway, ndjson):
    tag = new_id("cancel-ndjson" if ndjson else "cancel-sse")
    headers = {"Accept": "application/x-ndjson"} if ndjson else {}
    reader = EventReader(ndjson=ndjson)
    with httpx.Client(timeout=5.0) as c, c.stream(
        "POST", gateway.service_url("chat"), headers=headers,
        json={"id": tag, "stream": True, "tokens": 1000, "interval": 0.01},
    ) as r:
        assert r.status_code == 200
        closed_at = None
        for chunk in r.iter_raw():
            reader.feed(chunk)
            if len(reader.events) >= 3:
                # taken before leaving the loop: dropping the generator can already close
                closed_at = time.monotonic()
                break
        r.close()  # closes the connection: the response was not read to the end
    assert closed_at is not None, f"stream ended early: {reader.events}"
    assert len(reader.events) >= 3
    assert not gateway.events("stream-end", id=tag), "stream ran to its end"
    wait_cancelled(gateway, closed_at, "NDJSON" if ndjson else "SSE", id=tag)
    ev = gateway.events("cancelled", id=tag)[0]
    assert ev["sent"] < 1000, ev


def test_client_disconnect_cancels_unary(gateway: Gateway):
    tag = new_id("cancel-unary")
    body = json.dumps({"id": tag, "sleep": 10}).encode()
    sock = raw_http(gateway.port, "POST", SERVICES + "generate", body)
    try:
        started = gateway.wait_event("unary", timeout=3.0, id=tag)
        assert started is not None, "the plugin never received the call"
        time.sleep(0.1)
    finally:
        closed_at = time.monotonic()
        sock.close()
    wait_cancelled(gateway, closed_at, "unary", id=tag)


def test_client_disconnect_cancels_websocket(gateway: Gateway):
    before = {e["conn"] for e in gateway.events("bidi-start")}
    with connect(gateway.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        new = [e["conn"] for e in gateway.events("bidi-start") if e["conn"] not in before]
        assert len(new) == 1, f"expected one new bidi session, got {new}"
        conn = new[0]
        closed_at = time.monotonic()
    wait_cancelled(gateway, closed_at, "WebSocket", conn=conn)
