"""The generic WebSocket relay (`echo-ws`, a bidirectional plugin service) on a real
gateway: text and binary echo, a plugin failure as `{"error": ...}` + close, and the
refusals (unknown service, non-bidi service, POST to a WebSocket service)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import Gateway
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def open_ws(gateway: Gateway, service: str):
    return connect(gateway.service_ws_url(service), open_timeout=5, close_timeout=2)


def test_echo_text_and_binary(gateway: Gateway):
    with open_ws(gateway, "echo-ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        blob = bytes(range(256)) * 4
        ws.send(blob)
        got = ws.recv(timeout=5)
        assert isinstance(got, bytes), f"binary frame came back as {type(got).__name__}"
        assert got == blob
        ws.send("ünïcode ✓")
        assert ws.recv(timeout=5) == "ünïcode ✓"
        for i in range(20):  # order is kept
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(20)] == [f"m{i}" for i in range(20)]


def fail_session(gateway: Gateway) -> dict:
    """Send `fail`: the relay must answer one `{"error": ...}` text frame, then close."""
    with open_ws(gateway, "echo-ws") as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        ws.send("fail")
        msg = ws.recv(timeout=5)
        assert isinstance(msg, str), msg
        body = json.loads(msg)
        assert isinstance(body.get("error"), str) and body["error"], body
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    return body


def test_plugin_failure_sends_error_then_closes(gateway: Gateway):
    fail_session(gateway)


def test_plugin_failure_keeps_plugin_message(gateway: Gateway):
    body = fail_session(gateway)
    assert "asked to fail" in body["error"], f"the plugin's message was lost: {body}"
    assert "echo-plugin" in body["error"], body


def refusal(gateway: Gateway, service: str) -> tuple[int | None, dict]:
    """(HTTP status, JSON body) of a refused WebSocket; status None when it was refused
    with an error frame and a close instead."""
    try:
        ws = open_ws(gateway, service)
    except InvalidStatus as exc:
        resp = exc.response
        return resp.status_code, json.loads(resp.body or b"{}")
    with ws:
        msg = ws.recv(timeout=5)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        return None, json.loads(msg)


def test_unknown_service_refused(gateway: Gateway):
    status, body = refusal(gateway, "no-such-ws")
    assert status in (404, None), status
    assert body.get("business_code") == 10011, body
    assert "echo-ws" in body.get("message", ""), f"should list available services: {body}"


def test_non_bidi_service_refused(gateway: Gateway):
    status, body = refusal(gateway, "generate")
    assert status in (400, None), status
    assert "not a WebSocket service" in body.get("message", ""), body
    assert "POST" in body["message"], body


def test_post_to_websocket_service(gateway: Gateway):
    r = httpx.post(gateway.service_url("echo-ws"), json={"id": "x"}, timeout=5)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["business_code"] == 10001, body
    assert "WebSocket" in body["message"], body


def test_relay_still_works(gateway: Gateway):
    with open_ws(gateway, "echo-ws") as ws:
        ws.send(b"\x00ok")
        assert ws.recv(timeout=5) == b"\x00ok"
