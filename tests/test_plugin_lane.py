"""The lane end to end: a real gateway calls our SDK's plugins over it, and only them.

Real: the gateway subprocess (`python -m aogstream server start`), the echo plugin
process (aogstream.sdk) it launches, httpx and websockets clients over loopback. The
plugin records which transport served each call (`aogstream.sdk.current_transport`).

Proven:
* by default non-stream calls, SSE streams and WebSocket sessions reach the plugin
  over the lane (rpc/lane.py), and a client that leaves cancels the plugin's work
  there as it does over gRPC;
* with `AOGSTREAM_PLUGIN_LANE=off` the gateway makes no offer and the same calls go
  over gRPC, answered the same;
* a plugin killed in the middle of a stream served over the lane ends the client's
  stream with the gateway's "exited while serving" error, and the restarted plugin
  serves over the lane again.
Worker processes use it too: tests/test_workers.py checks the transport of 80 calls
spread over two serving processes. AOG's Go plugins never see the offer's effect:
tests/test_go_interop.py runs them unchanged over gRPC.
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from conftest import EventReader, Gateway, new_id
from websockets.sync.client import connect

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def transports(gw: Gateway) -> dict[str, str]:
    """Each kind of call served once; the transport the plugin saw for each."""
    tag = new_id("lane-unary")
    r = httpx.post(gw.service_url("chat"), json={**CHAT, "id": tag}, timeout=10)
    assert r.status_code == 200, r.text
    unary = gw.wait_event("unary", timeout=2.0, id=tag)

    tag = new_id("lane-stream")
    with httpx.stream("POST", gw.service_url("chat"),
                      json={**CHAT, "id": tag, "stream": True, "tokens": 3},
                      timeout=10) as resp:
        assert resp.status_code == 200
        reader, events = EventReader(), []
        for chunk in resp.iter_raw():
            events += reader.feed(chunk)
    assert events and events[-1]["finished"] is True, events
    stream = gw.wait_event("stream-start", timeout=2.0, id=tag)

    with connect(gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        ws.send("transport")
        bidi = json.loads(ws.recv(timeout=5))
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"
    assert unary is not None and stream is not None
    return {"unary": unary["transport"], "stream": stream["transport"],
            "bidi": bidi["transport"]}


def test_calls_reach_our_sdk_plugin_over_the_lane(gateway: Gateway):
    assert transports(gateway) == {"unary": "lane", "stream": "lane", "bidi": "lane"}


def test_a_client_that_leaves_cancels_the_plugin_over_the_lane(gateway: Gateway):
    tag = new_id("lane-cancel")
    with httpx.stream("POST", gateway.service_url("chat"),
                      json={**CHAT, "id": tag, "stream": True, "tokens": 1000,
                            "interval": 0.01}, timeout=10) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    assert gateway.wait_event("stream-start", id=tag)["transport"] == "lane"
    cancelled = gateway.wait_event("cancelled", timeout=2.0, id=tag)
    assert cancelled is not None, f"not cancelled: {gateway.events(id=tag)}"
    assert cancelled["sent"] < 1000


def test_turned_off_the_same_calls_go_over_grpc(gateway_factory):
    gw = gateway_factory("gw-no-lane", AOGSTREAM_PLUGIN_LANE="off")
    assert transports(gw) == {"unary": "grpc", "stream": "grpc", "bidi": "grpc"}


@pytest.fixture
def crash_gw(gateway_factory) -> Gateway:
    return gateway_factory("gw-lane-crash", AOGSTREAM_RESTART_BACKOFF="0.2")


def test_a_plugin_killed_mid_stream_ends_the_stream_with_the_reason(crash_gw: Gateway):
    gw = crash_gw
    old = gw.plugin()["pid"]
    tag = new_id("lane-crash")
    with httpx.stream("POST", gw.service_url("chat"),
                      json={**CHAT, "id": tag, "stream": True, "tokens": 1000,
                            "interval": 0.01}, timeout=10) as r:
        assert r.status_code == 200
        reader, events = EventReader(), []
        chunks = r.iter_raw()
        events += reader.feed(next(chunks))
        assert gw.wait_event("stream-start", id=tag)["transport"] == "lane"
        os.kill(old, signal.SIGKILL)
        tail = b"".join(chunks)
    assert b"exited" in tail and b"while serving this request" in tail, tail[-400:]
    gw.wait_plugin_running(not_pid=old, timeout=15)
    # "running" in the plugin list: from then on calls reach the new process, by lane
    assert transports(gw) == {"unary": "lane", "stream": "lane", "bidi": "lane"}
