"""AOG's timeout policy on a real gateway: the unary and stream defaults (shrunk to 1 s
and 2 s here through AOGSTREAM_UNARY_TIMEOUT / AOGSTREAM_STREAM_TIMEOUT), a manifest's
`timeout: N` and `timeout: -1`, and no deadline at all for bidirectional sessions."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import EventReader, Gateway, new_id, parse_sse
from websockets.sync.client import connect

TIMEOUT_CODE = 100005


@pytest.fixture(scope="module")
def short(gateway_factory) -> Gateway:
    """Unary deadline 1 s, stream deadline 2 s."""
    return gateway_factory("gw-short", AOGSTREAM_UNARY_TIMEOUT="1", AOGSTREAM_STREAM_TIMEOUT="2")


def assert_timeout_response(r: httpx.Response, elapsed: float, lo: float, hi: float) -> None:
    assert r.status_code == 504, f"want 504 after the deadline, got {r.status_code}: {r.text}"
    body = r.json()
    assert body["business_code"] == TIMEOUT_CODE, body
    assert "timeout" in body["message"], body
    assert lo <= elapsed <= hi, f"answered after {elapsed:.2f} s, want {lo}–{hi} s"


def test_unary_default_deadline(short: Gateway, client):
    tag = new_id("unary-deadline")
    t0 = time.monotonic()
    r = client.post(short.service_url("generate"), json={"id": tag, "sleep": 3})
    elapsed = time.monotonic() - t0
    print(f"\nunary deadline answered after {elapsed:.2f} s")
    assert_timeout_response(r, elapsed, 0.8, 2.5)
    ev = short.wait_event("cancelled", timeout=1.0, id=tag)
    assert ev is not None, f"plugin call not cancelled at the deadline: {short.events(id=tag)}"


def test_stream_default_deadline(short: Gateway):
    tag = new_id("stream-deadline")
    reader = EventReader()
    with httpx.Client(timeout=5.0) as c:
        t0 = time.monotonic()
        with c.stream("POST", short.service_url("chat"),
                      json={"id": tag, "stream": True, "tokens": 100, "interval": 0.1}) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                reader.feed(chunk)
        elapsed = time.monotonic() - t0
    print(f"\nstream cut after {elapsed:.2f} s with {len(reader.events)} events")
    events = reader.events
    assert 1.5 <= elapsed <= 3.5, f"stream ended after {elapsed:.2f} s, want ≈2 s"
    assert 5 <= len(events) - 1 < 100, f"want some token events before the cut: {len(events)}"
    last = events[-1]
    assert last.get("business_code") == TIMEOUT_CODE, f"last event is not a timeout: {last}"
    assert last.get("finished") is True, last
    assert all("business_code" not in e for e in events[:-1])
    assert short.wait_event("cancelled", timeout=1.0, id=tag) is not None


def test_manifest_timeout_overrides_default(gateway: Gateway, client):
    """`embed` declares `timeout: 1` in its manifest: 1 s even under the 60 s default."""
    tag = new_id("embed")
    t0 = time.monotonic()
    r = client.post(gateway.service_url("embed"), json={"id": tag, "sleep": 2})
    elapsed = time.monotonic() - t0
    print(f"\nembed (manifest timeout 1) answered after {elapsed:.2f} s")
    assert_timeout_response(r, elapsed, 0.8, 1.9)
    assert gateway.wait_event("cancelled", timeout=1.0, id=tag) is not None


def test_manifest_timeout_minus_one_unary(short: Gateway, client):
    """`rerank` declares `timeout: -1`: no deadline, although the default is 1 s."""
    tag = new_id("rerank")
    r = client.post(short.service_url("rerank"), json={"id": tag, "sleep": 3})
    assert r.status_code == 200, f"rerank has no deadline but got {r.status_code}: {r.text}"
    assert r.json()["id"] == tag


def test_manifest_timeout_minus_one_stream(short: Gateway, client):
    tag = new_id("rerank-stream")
    t0 = time.monotonic()
    r = client.post(short.service_url("rerank"),
                    json={"id": tag, "stream": True, "tokens": 35, "interval": 0.1})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    events = parse_sse(r.content)
    assert elapsed > 3.0, f"the stream should have lasted ≈3.5 s, took {elapsed:.2f}"
    assert len(events) == 36, f"stream cut short: {len(events)} events, last {events[-1]}"
    assert events[-1]["finished"] is True and "business_code" not in events[-1], events[-1]


def test_bidi_has_no_deadline(short: Gateway):
    with connect(short.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        ws.send("first")
        assert ws.recv(timeout=5) == "first"
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 3.0:  # longer than the 2 s stream deadline
            time.sleep(0.5)
            i += 1
            ws.send(f"frame {i}")
            assert ws.recv(timeout=5) == f"frame {i}", "session cut during the 3 s"
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
