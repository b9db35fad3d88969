"""A plugin process that dies: every call it was serving ends at once with an error
naming it, the host restarts it (backoff 0.2 s here), and no request ever hangs while
it is down or restarting. The tests share one gateway of this module, but each sets up
its own crash and waits for the plugin to be running first, so any one of them can run
alone or in any order."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import EventReader, Gateway, new_id
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

PROMPT = 2.0  # a crash must surface to clients this fast
UNAVAILABLE = (100003, 100006)  # plugin not running / plugin unavailable


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    return gateway_factory("gw-crash", AOGSTREAM_RESTART_BACKOFF="0.2")


def assert_comes_back(gw: Gateway, old_pid: int, min_restarts: int = 1) -> None:
    p = gw.wait_plugin_running(not_pid=old_pid, timeout=10.0)
    assert p["restarts"] >= min_restarts, f"restart not counted: {p}"
    tag = new_id("after-restart")
    r = httpx.post(gw.service_url("generate"), json={"id": tag}, timeout=5)
    assert r.status_code == 200, f"the restarted plugin does not serve: {r.status_code} {r.text}"
    assert r.json()["id"] == tag
    assert gw.events("unary", id=tag)[0]["pid"] == p["pid"]


def crash_unary(gw: Gateway) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = httpx.post(gw.service_url("generate"), json={"id": new_id("crash"), "crash": True},
                   timeout=10)
    elapsed = time.monotonic() - t0
    print(f"\nunary crash answered in {elapsed * 1000:.0f} ms: {r.status_code} {r.text}")
    assert elapsed < PROMPT, f"crash took {elapsed:.2f} s to surface"
    assert r.status_code >= 500, f"want a 5xx error, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("business_code"), int), body
    assert "echo-plugin" in body["message"], f"error should name the plugin: {body}"
    return r, elapsed


def test_unary_crash(gw: Gateway):
    before = gw.wait_plugin_running()
    crash_unary(gw)
    assert_comes_back(gw, before["pid"], min_restarts=before["restarts"] + 1)


class StreamThread(threading.Thread):
    """Reads one SSE stream to its end in the background (bounded by read timeouts)."""

    def __init__(self, gw: Gateway, req: dict) -> None:
        super().__init__(daemon=True)
        self.gw, self.req = gw, req
        self.reader = EventReader()
        self.status: int | None = None
        self.ended_at: float | None = None
        self.exc: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(8.0, connect=5.0)) as c, c.stream(
                "POST", self.gw.service_url("chat"), json=self.req
            ) as r:
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.reader.feed(chunk)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.exc = exc
        finally:
            self.ended_at = time.monotonic()


def crash_a_stream(gw: Gateway, others: int) -> tuple[StreamThread, list[StreamThread], float]:
    """`others` long streams open on the plugin, then one that crashes it after 3 tokens.
    Returns once every stream has ended (each within 10 s): the crasher, the others and
    when the crasher was started."""
    bystanders = [StreamThread(gw, {"id": new_id(f"other{i}"), "stream": True,
                                    "tokens": 10_000, "interval": 0.05})
                  for i in range(others)]
    for t in bystanders:
        t.start()
    for t in bystanders:
        assert gw.wait_event("stream-start", timeout=5, id=t.req["id"]), "stream never started"
    crasher = StreamThread(gw, {"id": new_id("crasher"), "stream": True, "tokens": 10,
                                "interval": 0.05, "crash_after": 3})
    t0 = time.monotonic()
    crasher.start()
    for t in [crasher, *bystanders]:
        t.join(timeout=10)
        assert not t.is_alive(), f"stream {t.req['id']} still open 10 s after the crash"
        assert t.exc is None, f"stream {t.req['id']} broke instead of ending: {t.exc!r}"
    return crasher, bystanders, t0


def test_stream_crash_ends_every_open_stream(gw: Gateway):
    before = gw.wait_plugin_running()
    crasher, others, t0 = crash_a_stream(gw, others=2)
    crash_at = gw.events("stream-start", id=crasher.req["id"])[0]["t"]
    print(f"\ncrasher ended {crasher.ended_at - t0:.2f} s after its start; others ended "
          f"{[round(t.ended_at - crash_at, 2) for t in others]} s after the crashing call began")

    ev = crasher.reader.events
    assert crasher.status == 200
    assert len(ev) == 4, f"want 3 token events + 1 error event, got {ev}"
    assert [e.get("message", {}).get("content") for e in ev[:3]] == ["tok0 ", "tok1 ", "tok2 "]
    assert ev[-1].get("business_code") in UNAVAILABLE, ev[-1]
    assert ev[-1].get("finished") is True, ev[-1]
    assert "echo-plugin" in ev[-1].get("message", ""), ev[-1]
    assert crasher.ended_at - t0 < PROMPT, f"crashed stream took {crasher.ended_at - t0:.2f} s"

    for t in others:
        ev = t.reader.events
        assert t.status == 200 and len(ev) >= 2, ev
        assert ev[-1].get("business_code") in UNAVAILABLE, f"{t.req['id']} last event {ev[-1]}"
        assert ev[-1].get("finished") is True, ev[-1]
        assert t.ended_at - crash_at < PROMPT, (
            f"{t.req['id']} ended {t.ended_at - crash_at:.2f} s after the crash")
    assert_comes_back(gw, before["pid"], min_restarts=before["restarts"] + 1)


def test_requests_while_restarting_never_hang(gw: Gateway):
    before = gw.wait_plugin_running()
    crash_unary(gw)
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 8.0
    kinds = ["unary", "stream", "websocket"]
    with httpx.Client(timeout=httpx.Timeout(3.0, connect=3.0)) as c:
        i = 0
        while time.monotonic() < deadline and seen.get("ok", 0) < 3:
            kind = kinds[i % 3]
            i += 1
            t0 = time.monotonic()
            if kind == "websocket":
                outcome = probe_websocket(gw)
            else:
                req = {"id": new_id("probe"), "stream": kind == "stream"}
                r = c.post(gw.service_url("chat" if kind == "stream" else "generate"), json=req)
                outcome = "ok" if r.status_code == 200 else None
                if outcome is None:
                    body = r.json()
                    # 100006 only in the few ms before the host has seen the exit
                    assert r.status_code == 503 and body.get("business_code") in UNAVAILABLE, (
                        f"{kind} while restarting: want 503/100003 or success, got "
                        f"{r.status_code}: {body}")
                    assert "echo-plugin" in body["message"], body
                    outcome = f"503/{body['business_code']}"
            took = time.monotonic() - t0
            assert took < 2.0, f"a {kind} request took {took:.2f} s while the plugin restarted"
            seen[f"{kind} {outcome}"] = seen.get(f"{kind} {outcome}", 0) + 1
            if outcome == "ok":
                seen["ok"] = seen.get("ok", 0) + 1
            time.sleep(0.01)
    print(f"\nresponses while restarting: {seen}")
    assert seen.get("ok", 0) >= 3, f"the plugin did not come back: {seen}"
    p = gw.plugin()
    assert p["pid"] != before["pid"] and p["restarts"] > before["restarts"], p


def probe_websocket(gw: Gateway) -> str:
    """One echo over `echo-ws`: "ok", or "error frame" when refused with an error."""
    with connect(gw.service_ws_url("echo-ws"), open_timeout=2, close_timeout=2) as ws:
        ws.send("probe")
        got = ws.recv(timeout=2)
        if got == "probe":
            return "ok"
        body = json.loads(got)
        assert "echo-plugin" in body.get("error", ""), body
        return "error frame"


def test_websocket_crash(gw: Gateway):
    before = gw.wait_plugin_running()
    with connect(gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        t0 = time.monotonic()
        ws.send("crash")
        got = None
        try:
            got = ws.recv(timeout=PROMPT)
        except ConnectionClosed:
            pass
        except TimeoutError:
            pytest.fail(f"no error frame and no close within {PROMPT} s of the crash")
        elapsed = time.monotonic() - t0
        print(f"\nWebSocket crash surfaced in {elapsed * 1000:.0f} ms: {got!r}")
        if got is not None:
            body = json.loads(got)
            assert isinstance(body.get("error"), str) and body["error"], body
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=PROMPT)
    assert_comes_back(gw, before["pid"], min_restarts=before["restarts"] + 1)


def test_crash_errors_say_restarting(gw: Gateway):
    """Every crash error (the unary response, the crashing stream's last event, the last
    event of a stream that was open beside it) is a 502/503 that names the plugin and
    says it is being restarted. Its own crashes: one unary call, then one stream."""
    errors: list[tuple[str, int | None, dict]] = []
    before = gw.wait_plugin_running()
    r, _ = crash_unary(gw)
    errors.append(("unary", r.status_code, r.json()))
    assert_comes_back(gw, before["pid"], min_restarts=before["restarts"] + 1)

    before = gw.wait_plugin_running()
    crasher, others, _ = crash_a_stream(gw, others=1)
    for kind, t in (("stream", crasher), *(("other stream", o) for o in others)):
        assert t.reader.events, f"{kind} {t.req['id']} ended without an event"
        errors.append((kind, t.status, t.reader.events[-1]))
    assert_comes_back(gw, before["pid"], min_restarts=before["restarts"] + 1)

    for kind, status, body in errors:
        print(f"{kind}: {status} {body}")
    bad = [(k, s, b) for k, s, b in errors
           if s not in (200, 502, 503) or b.get("business_code") not in UNAVAILABLE
           or "restart" not in b.get("message", "")]
    assert not bad, f"crash errors that do not say the plugin is restarting: {bad}"
