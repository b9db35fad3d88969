"""Blocking plugin code and sync `ctx.llm` calls hold up no other request of the plugin.

Real: a gateway subprocess; the llm-sync test plugin (tests/plugins-llm), written the
blocking way (plain `def` handlers, a plain generator, the sync `ctx.llm.complete`),
as its own process; the loop-a test plugin as the gateway's only chat model, a slow
one that holds each answer until the test releases it (a file beside the events
file). HTTP over loopback.

Proven: while one request of the plugin waits in a sync `ctx.llm.complete` on the
held model, a second request to the same plugin is answered, and both ran on worker
threads, not the loop's; once released, the first gets its reply. A client that
gives up on a request blocked in a sync call ends that call at once (the plugin's
thread sees `PluginLlmError` code "cancelled" instead of waiting for the model) and
the gateway cancels the model's work. A stream written as a plain generator streams,
and its generator is closed.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from conftest import REPO, Gateway, parse_sse, raw_http

SYNC = "llm-sync-plugin"
SLOW_CHAT = "loop-a-plugin"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("plugin-llm-sync")
    plugins = work / "plugins"
    plugins.mkdir()
    (plugins / SYNC).symlink_to(REPO / "tests" / "plugins-llm" / SYNC)
    (plugins / SLOW_CHAT).symlink_to(REPO / "tests" / "plugins-llm-loop" / SLOW_CHAT)
    gateway = Gateway(work, plugin_dir=plugins).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def held(tag: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"hold:{tag}"}]


def release(gw: Gateway, tag: str) -> None:
    (gw.events_file.parent / f"release-{tag}").touch()


def test_a_request_is_answered_while_another_waits_in_a_sync_llm_call(gw):
    tag = f"slow-{time.monotonic_ns()}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, gw.service_url("sync-probe"), timeout=90,
                           json={"id": tag, "call": "complete", "messages": held(tag)})
        try:
            # the first request is inside its sync ctx.llm call, held by the model
            assert gw.wait_event("chat_holding", timeout=30, id=tag), gw.log_tail()
            r = httpx.post(gw.service_url("sync-probe"), timeout=10,
                           json={"id": f"{tag}-ping", "call": "ping"})
            assert r.status_code == 200, r.text
            assert r.json()["pong"] == f"{tag}-ping" and not r.json()["main_thread"]
            # answered while the first was still waiting on the model
            assert not gw.events("chat_released", id=tag)
            assert not gw.events("sync_llm_done", id=tag) and not slow.done()
        finally:
            release(gw, tag)
        answer = slow.result(timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"] == f"released {tag}" and body["provider"] == SLOW_CHAT, body
    assert not body["main_thread"]
    start = gw.events("sync_llm_start", id=tag)[0]
    assert not start["main_thread"] and start["thread"].startswith("aogstream-plugin")


def test_a_client_that_leaves_ends_the_sync_call_it_was_waiting_on(gw):
    tag = f"gone-{time.monotonic_ns()}"
    body = json.dumps({"id": tag, "call": "complete", "messages": held(tag)}).encode()
    sock = raw_http(gw.port, "POST", "/aog/v0.2/services/sync-probe", body)
    try:
        assert gw.wait_event("chat_holding", timeout=30, id=tag), gw.log_tail()
    finally:
        sock.close()  # the client goes away while the plugin's thread waits
    try:
        # the thread's call ends now, not when the model (held for a minute) answers
        error = gw.wait_event("sync_llm_error", timeout=10, id=tag)
        assert error is not None and error["code"] == "cancelled", gw.log_tail()
        assert gw.wait_event("chat_cancelled", timeout=10, id=tag, plugin=SLOW_CHAT), \
            gw.log_tail()
        assert not gw.events("chat_released", id=tag)
    finally:
        release(gw, tag)
    # and the plugin serves the next request as before
    r = httpx.post(gw.service_url("sync-probe"), timeout=10, json={"id": tag, "call": "ping"})
    assert r.status_code == 200 and r.json()["pong"] == tag, r.text


def test_a_plain_generator_streams_from_worker_threads(gw):
    tag = f"stream-{time.monotonic_ns()}"
    r = httpx.post(gw.service_url("sync-probe"), timeout=30,
                   json={"id": tag, "stream": True, "count": 4})
    assert r.status_code == 200, r.text
    events = parse_sse(r.content)
    assert [e["i"] for e in events] == [0, 1, 2, 3], events
    assert all(e["id"] == tag and not e["main_thread"] for e in events)
    assert gw.wait_event("sync_stream_closed", timeout=10, id=tag), gw.log_tail()
