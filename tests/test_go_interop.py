"""Go interop, both ways, with real Go programs built from Debian's Go packages.

`tools/build-go-interop.sh` (run by `make test`, and by this module when needed) builds,
offline and in GOPATH mode, two programs whose ProviderService code is generated from
aogstream's own provider.proto:

* `aog-go-host` launches a plugin executable the way AOG's Go host does
  (hashicorp/go-plugin's client, AOG's handshake and cookie, gRPC only, no AutoMTLS,
  AOG_VERSION set, working directory = the plugin folder) and calls it step by step,
  printing one JSON line per call;
* `go-echo-plugin` is served by go-plugin's `Serve` with AOG's handshake, as AOG's Go
  plugins are, and logs through hclog (JSON on stderr).

Proven here, all with real processes over real sockets:

1. Our Python plugins run unchanged under a Go host: tests/plugins/echo-plugin (handshake
   over a unix socket and over TCP, go-plugin's Ping, manifest, health, unary, business
   errors as AOG codes, stream framing `data: ...\\n\\n` ending with `is_final`, bidi text
   and binary, a deadline and a host cancel seen by the plugin, Shutdown → exit 0 without a
   kill) and the shipped openai-plugin (manifest, health, unary and streamed chat against
   a real OpenAI-compatible server, missing credentials as AOG's code 14). A Go host that
   speaks only protocol version 2 is refused with a clear error.
2. A Go plugin runs unchanged under our gateway: listed as running, served as JSON, SSE,
   NDJSON, OpenAI and WebSocket, a business error keeps its message, a client that leaves
   ends the plugin's stream, kill -9 → restarted and serving, gateway stop → the plugin
   leaves on the Shutdown rpc (not killed), and its hclog lines keep their level in the
   gateway's log.

The OpenAI-compatible server openai-plugin talks to is this module's gateway serving the
Go plugin (its `/v1` front door), so that test crosses both directions at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import REPO, EventReader, Gateway, new_id, parse_ndjson, parse_sse
from websockets.sync.client import connect

from aogstream.host.process import plugin_log_line

BUILD = REPO / "tools" / "build-go-interop.sh"
BIN = REPO / ".cache" / "go-interop" / "bin"
GO_HOST = BIN / "aog-go-host"
GO_PLUGIN = BIN / "go-echo-plugin"
GO_PLUGIN_MANIFEST = REPO / "interop" / "go" / "plugin" / "plugin.json"
GO_NAME = "go-echo-plugin"
ECHO_EXE = REPO / "tests" / "plugins" / "echo-plugin" / "bin" / "echo-plugin"
OPENAI_EXE = REPO / "plugins" / "openai-plugin" / "bin" / "openai-plugin"
HOST_TIMEOUT = 60.0  # one whole go-host run (start, steps, Kill)
UNAVAILABLE = (100003, 100006)


# ---- building and driving the Go host --------------------------------------------------


@pytest.fixture(scope="module")
def go_built() -> None:
    """Build (or find up to date) both Go programs; fail with the build's output."""
    try:
        res = subprocess.run([str(BUILD)], cwd=REPO, capture_output=True, text=True,
                             timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{BUILD.name} did not finish in 15 minutes: {exc.stdout}{exc.stderr}")
    if res.returncode != 0 or not GO_HOST.exists() or not GO_PLUGIN.exists():
        pytest.fail(f"{BUILD.name} failed ({res.returncode}); run `make test` or the script "
                    f"to see why:\n{res.stdout}\n{res.stderr}")


class HostRun:
    """One aog-go-host run: its result lines by op, and its stderr (hclog JSON)."""

    def __init__(self, lines: list[dict[str, Any]], stderr: str, returncode: int) -> None:
        self.lines = lines
        self.stderr = stderr
        self.returncode = returncode

    @property
    def start(self) -> dict[str, Any]:
        return self.lines[0]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.lines[1:-1]

    @property
    def kill(self) -> dict[str, Any]:
        assert self.lines[-1]["op"] == "kill", f"the run did not end with Kill: {self.lines}"
        return self.lines[-1]


def go_host(exe: Path, steps: list[dict[str, Any]], events: Path | None = None,
            env: dict[str, str] | None = None, version: int = 1) -> HostRun:
    """Run aog-go-host on `exe` with `steps`; the plugin inherits `env` (and our Python)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    full_env["AOGSTREAM_PYTHON"] = sys.executable  # the plugins' launchers use it
    if events is not None:
        full_env["ECHO_PLUGIN_EVENTS"] = str(events)
    full_env.update(env or {})
    res = subprocess.run(
        [str(GO_HOST), "-plugin", str(exe), "-steps", json.dumps(steps),
         "-protocol-version", str(version), "-start-timeout", "30s"],
        env=full_env, capture_output=True, text=True, timeout=HOST_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert lines and lines[0]["op"] == "start", f"no start line: {res.stdout}\n{res.stderr}"
    return HostRun(lines, res.stderr, res.returncode)


def events_of(path: Path, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """The plugin's recorded events (the run is over: the file is complete)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if (event is None or ev["event"] == event) and all(ev.get(k) == v
                                                           for k, v in match.items()):
            out.append(ev)
    return out


def assert_left_on_shutdown(run: HostRun) -> None:
    """go-plugin's Kill: Shutdown rpc, then up to 2 s for the process to exit by itself."""
    kill = run.kill
    assert kill["forced"] is False, f"go-plugin had to kill the plugin: {run.stderr[-2000:]}"
    assert kill["exit_code"] == 0, f"plugin did not exit cleanly: {kill}"
    assert kill["elapsed_ms"] < 2000, kill


# ---- 1. a Go host runs our Python plugins ------------------------------------------------


@pytest.mark.parametrize("network", ["unix", "tcp"])
def test_go_host_handshakes_with_the_python_echo_plugin(go_built, tmp_path, network):
    run = go_host(ECHO_EXE, [{"op": "ping"}, {"op": "manifest"}, {"op": "health"},
                             {"op": "operate_status"}],
                  tmp_path / "events.jsonl", {"AOGSTREAM_PLUGIN_NETWORK": network})
    start = run.start
    assert "error" not in start, start
    assert start["network"] == network and start["protocol"] == "grpc", start
    assert start["version"] == 1, start
    if network == "tcp":
        host, _, port = start["address"].rpartition(":")
        assert host == "127.0.0.1" and 10000 <= int(port) <= 25000, start
    ping, manifest, health, status = run.steps
    assert ping["grpc_code"] == "OK", ping  # grpc.health.v1 "plugin" = SERVING
    assert manifest["code"] == 0, manifest
    assert manifest["manifest"]["provider"]["name"] == "echo-plugin"
    assert {s["service_name"] for s in manifest["manifest"]["services"]} >= {
        "chat", "generate", "echo-ws"}
    assert (health["grpc_code"], health["code"]) == ("OK", 0), health
    assert status["status"] == 1, status
    assert_left_on_shutdown(run)


def test_go_host_unary_calls_and_business_errors(go_built, tmp_path):
    tag = new_id("go-unary")
    run = go_host(ECHO_EXE, [
        {"op": "unary", "service": "generate", "request": {"id": tag, "x": [1, "two"]}},
        {"op": "unary", "service": "chat", "request": {"id": tag, "tokens": 3}},
        {"op": "unary", "service": "generate",
         "request": {"id": tag, "fail_code": 404, "fail_message": "no such model: zz"}},
    ], tmp_path / "events.jsonl")
    ok, chat, failed = run.steps
    assert (ok["grpc_code"], ok["code"]) == ("OK", 0), ok
    assert json.loads(ok["response"]) == {"id": tag, "service": "generate",
                                          "echo": {"id": tag, "x": [1, "two"]}}
    assert json.loads(chat["response"])["message"]["content"] == "tok0 tok1 tok2 "
    # a business failure is an AOG code in the response, never a gRPC error
    assert failed["grpc_code"] == "OK", failed
    assert (failed["code"], failed["message"]) == (404, "no such model: zz"), failed
    assert_left_on_shutdown(run)


def test_go_host_stream_framing_and_mid_stream_error(go_built, tmp_path):
    tag = new_id("go-stream")
    run = go_host(ECHO_EXE, [
        {"op": "stream", "service": "chat", "request": {"id": tag, "tokens": 3}},
        {"op": "stream", "service": "chat", "request": {"id": tag, "tokens": 5, "error_after": 2}},
    ], tmp_path / "events.jsonl")
    good, failing = run.steps
    assert good["grpc_code"] == "OK", good
    chunks = good["chunks"]
    # every data chunk is exactly one SSE event; the stream ends with an empty is_final
    for c in chunks[:-1]:
        assert c["code"] == 0 and not c["is_final"], c
        assert c["data"].startswith("data: ") and c["data"].endswith("\n\n"), c
        assert "\n" not in c["data"][:-2], c
        assert c["metadata"].get("content-type") == "text/event-stream", c
    assert chunks[-1]["is_final"] is True and chunks[-1]["data"] == "", chunks[-1]
    events = parse_sse(good["body"].encode())  # what AOG's host hands its SSE parser
    assert [e["message"]["content"] for e in events] == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert events[-1]["finished"] is True
    last = failing["chunks"][-1]
    assert (last["code"], last["message"], last["is_final"]) == (
        11, "asked to fail mid-stream", True), last
    assert len(parse_sse(failing["body"].encode())) == 2
    assert_left_on_shutdown(run)


def test_go_host_bidi_text_and_binary(go_built, tmp_path):
    blob = bytes(range(256)) * 4
    b64 = base64.b64encode(blob).decode()
    events = tmp_path / "events.jsonl"
    run = go_host(ECHO_EXE, [
        {"op": "bidi", "service": "echo-ws", "messages": [
            {"type": "text", "data": "hello"}, {"type": "binary", "b64": b64},
            {"type": "text", "data": "ünïcode ✓"}]},
        {"op": "bidi", "service": "echo-ws", "messages": [{"type": "text", "data": "fail"}]},
    ], events)
    echo, failed = run.steps
    assert echo["grpc_code"] == "OK", echo
    got = echo["responses"]
    assert [(r["code"], r["type"]) for r in got] == [(0, "text"), (0, "binary"), (0, "text")]
    assert got[0]["data"] == "hello" and got[2]["data"] == "ünïcode ✓"
    assert base64.b64decode(got[1]["b64"]) == blob
    # the host half-closed: the plugin saw the session end normally
    assert events_of(events, "bidi-end", conn=echo["conn"]), events_of(events)
    assert failed["responses"] == [{"code": 11, "message": "asked to fail", "type": "",
                                    "data": ""}], failed
    assert_left_on_shutdown(run)


def test_go_host_deadline_and_cancel_reach_the_python_plugin(go_built, tmp_path):
    events = tmp_path / "events.jsonl"
    late, streamed, hold = new_id("deadline"), new_id("cancel"), new_id("hold")
    run = go_host(ECHO_EXE, [
        {"op": "unary", "service": "generate", "request": {"id": late, "sleep": 5},
         "timeout_ms": 300},
        {"op": "stream", "service": "chat",
         "request": {"id": streamed, "tokens": 1000, "interval": 0.01}, "cancel_after": 3},
        {"op": "bidi", "service": "echo-ws", "messages": [{"type": "text", "data": "hi"}],
         "end": "cancel"},
        # keeps the plugin running 1 s more: the cancellations above must be seen before
        # it, not at shutdown
        {"op": "unary", "service": "generate", "request": {"id": hold, "sleep": 1}},
    ], events)
    deadline, stream, bidi, held = run.steps
    assert deadline["grpc_code"] == "DeadlineExceeded", deadline
    assert 250 <= deadline["elapsed_ms"] < 2000, deadline
    assert stream["cancelled"] is True and len(stream["chunks"]) == 3, stream
    assert bidi["cancelled"] is True and bidi["grpc_code"] == "Canceled", bidi
    assert held["code"] == 0, held

    held_at = events_of(events, "unary", id=hold)[0]["t"]
    started = events_of(events, "unary", id=late)[0]["t"]
    seen = events_of(events, "cancelled", id=late)
    assert seen, f"the plugin never saw the deadline: {events_of(events)}"
    # the plugin gave up at the deadline (0.3 s after the host sent the call; it records
    # the call a little later), not after its 5 s sleep
    assert seen[0]["t"] - started < 1.5, seen[0]["t"] - started
    cancelled = events_of(events, "cancelled", id=streamed)
    assert cancelled and cancelled[0]["sent"] < 1000, events_of(events, id=streamed)
    assert not events_of(events, "stream-end", id=streamed)
    bidi_seen = events_of(events, "cancelled", conn=bidi["conn"])
    assert bidi_seen, f"the plugin never saw the bidi cancel: {events_of(events)}"
    for ev in (cancelled[0], bidi_seen[0]):
        assert ev["t"] < held_at + 0.9, "cancel seen only when the plugin was shut down"
    assert_left_on_shutdown(run)


def test_go_host_refuses_a_plugin_of_another_protocol_version(go_built, tmp_path):
    run = go_host(ECHO_EXE, [{"op": "health"}], tmp_path / "events.jsonl", version=2)
    assert run.returncode == 1
    err = run.start.get("error", "")
    assert "Incompatible API version" in err and "Plugin version: 1" in err, run.start


# ---- 2. our gateway runs a Go plugin -----------------------------------------------------


def go_plugin_folder(root: Path) -> Path:
    """A plugin folder holding the Go plugin (plugin.json + bin/go-echo-plugin)."""
    folder = root / "plugins" / GO_NAME
    (folder / "bin").mkdir(parents=True)
    shutil.copy(GO_PLUGIN_MANIFEST, folder / "plugin.json")
    shutil.copy(GO_PLUGIN, folder / "bin" / GO_NAME)
    return folder.parent


def start_go_gateway(work: Path) -> Gateway:
    return Gateway(work, {"AOGSTREAM_RESTART_BACKOFF": "0.2"},
                   plugin_dir=go_plugin_folder(work)).start()


@pytest.fixture(scope="module")
def go_gw(go_built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_go_gateway(tmp_path_factory.mktemp("gw-go"))
    try:
        yield gw
    finally:
        gw.stop()


def test_gateway_lists_the_go_plugin_running(go_gw: Gateway):
    p = go_gw.wait_plugin_running(name=GO_NAME)
    assert p["type"] == "local" and p["services"] == ["chat", "generate", "echo-ws"], p
    assert psutil.Process(p["pid"]).name() == GO_NAME


def test_gateway_serves_the_go_plugin_json_sse_ndjson(go_gw: Gateway, client):
    tag = new_id("go-json")
    r = client.post(go_gw.service_url("generate"), json={"id": tag})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": tag, "service": "generate", "echo": {"id": tag}, "plugin": "go"}

    r = client.post(go_gw.service_url("chat"), json={"id": tag, "stream": True, "tokens": 3})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    events = parse_sse(r.content)
    assert [e["message"]["content"] for e in events] == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert events[-1]["finished"] is True

    r = client.post(go_gw.service_url("chat"), json={"id": tag, "stream": True, "tokens": 2},
                    headers={"Accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    events = parse_ndjson(r.content)
    assert [e["message"]["content"] for e in events] == ["tok0 ", "tok1 ", ""]

    r = client.post(f"{go_gw.url}/v1/chat/completions", json={
        "model": "go-echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "


def test_gateway_relays_websocket_frames_to_the_go_plugin(go_gw: Gateway):
    blob = bytes(range(256))
    with connect(go_gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2) as ws:
        ws.send("hello go")
        assert ws.recv(timeout=5) == "hello go"
        ws.send(blob)
        assert ws.recv(timeout=5) == blob


def test_a_burst_to_the_go_plugin_stays_one_frame_per_message(go_gw: Gateway):
    # AOG's Go plugins never say they unpack packed frames, so the gateway must not
    # pack for them: the Go echo plugin would send a packed message back as one frame,
    # and the client would see frames merged instead of each frame, whole, in order
    frames = [i.to_bytes(2, "big") * 320 for i in range(400)]
    with connect(go_gw.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2,
                 max_size=None) as ws:
        ws.send("open")
        assert ws.recv(timeout=5) == "open"
        for f in frames:
            ws.send(f)
        assert [ws.recv(timeout=10) for _ in frames] == frames


def test_go_plugin_business_error_keeps_its_message(go_gw: Gateway, client):
    tag = new_id("go-fail")
    r = client.post(go_gw.service_url("generate"),
                    json={"id": tag, "fail_code": 2, "fail_message": "no such model: zz"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert "no such model: zz" in body["message"] and GO_NAME in body["message"], body


def test_go_plugin_log_lines_keep_their_level(go_gw: Gateway, client):
    tag = new_id("go-log")
    client.post(go_gw.service_url("generate"), json={"id": tag, "fail_code": 404})
    deadline = time.monotonic() + 5
    want = f"WARNING aogstream.plugin.{GO_NAME}: failing on request"
    while want not in go_gw.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = go_gw.log_tail(400)
    assert any(want in line and f"id={tag}" in line for line in log.splitlines()), log
    # hclog's debug lines ("invoke", logged for the same call) stay below the gateway's INFO
    assert not [line for line in log.splitlines() if "invoke" in line and tag in line], log
    assert '"@level"' not in log, "raw hclog JSON in the gateway log"


def test_plugin_log_line_maps_hclog_levels():
    line = json.dumps({"@level": "error", "@message": "boom", "@module": "p",
                       "@timestamp": "2026-01-01T00:00:00Z", "code": 7})
    assert plugin_log_line(line, logging.INFO) == (logging.ERROR, "boom code=7")
    assert plugin_log_line('{"@level":"trace","@message":"t"}', logging.INFO) == (
        logging.DEBUG, "t")
    assert plugin_log_line('{"@level":"warn","@message":"w"}', logging.INFO)[0] == (
        logging.WARNING)
    # anything else is logged as written, at the stream's level
    for other in ("plain text", '{"not": "hclog"}', '{"@level": broken'):
        assert plugin_log_line(other, logging.INFO) == (logging.INFO, other)


def test_a_client_that_leaves_ends_the_go_plugins_stream(go_gw: Gateway):
    tag = new_id("go-leave")
    reader = EventReader()
    with httpx.Client(timeout=5.0) as c, c.stream(
        "POST", go_gw.service_url("chat"),
        json={"id": tag, "stream": True, "tokens": 1000, "interval": 0.01},
    ) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            reader.feed(chunk)
            if len(reader.events) >= 3:
                break
        closed_at = time.monotonic()
        r.close()
    ev = go_gw.wait_event("cancelled", timeout=2.0, id=tag)
    assert ev is not None, f"the Go plugin did not see the client leave: {go_gw.events(id=tag)}"
    assert ev["t"] - closed_at < 1.0, ev["t"] - closed_at
    assert ev["sent"] < 1000 and not go_gw.events("stream-end", id=tag), ev


def test_killed_go_plugin_is_restarted_and_serves(go_gw: Gateway, client):
    before = go_gw.wait_plugin_running(name=GO_NAME)
    os.kill(before["pid"], signal.SIGKILL)
    after = go_gw.wait_plugin_running(not_pid=before["pid"], name=GO_NAME, timeout=10.0)
    assert after["restarts"] >= before["restarts"] + 1, after
    tag = new_id("go-after-kill")
    r = client.post(go_gw.service_url("generate"), json={"id": tag})
    assert r.status_code == 200 and r.json()["id"] == tag, r.text
    assert go_gw.events("unary", id=tag)[0]["pid"] == after["pid"]


def test_gateway_stop_shuts_the_go_plugin_down_without_a_kill(go_built, tmp_path):
    gw = start_go_gateway(tmp_path)
    try:
        pid = gw.wait_plugin_running(name=GO_NAME)["pid"]
    finally:
        gw.stop()
    # the plugin recorded this after go-plugin's Serve returned, which only the Shutdown
    # rpc makes it do (it ignores SIGINT; a SIGKILL leaves no trace)
    assert gw.events("shutdown", pid=pid), f"no Shutdown seen: {gw.events(pid=pid)}"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    log = gw.log_tail(200)
    assert "did not exit" not in log and "killing it" not in log, log


# ---- both at once: the shipped openai-plugin under the Go host -------------------------


def test_go_host_runs_the_shipped_openai_plugin(go_gw: Gateway, tmp_path):
    auth = json.dumps({"api_key": "sk-interop-test", "base_url": f"{go_gw.url}/v1",
                       "model": "go-echo"})
    question = {"messages": [{"role": "user", "content": "hi"}]}
    run = go_host(OPENAI_EXE, [
        {"op": "manifest"}, {"op": "health"},
        {"op": "unary", "service": "chat", "request": question, "auth": auth},
        {"op": "stream", "service": "chat", "request": {**question, "stream": True},
         "auth": auth},
        {"op": "unary", "service": "chat", "request": question, "auth": ""},
    ], tmp_path / "events.jsonl")
    assert "error" not in run.start, run.start
    manifest, health, unary, stream, no_key = run.steps
    assert manifest["manifest"]["provider"]["name"] == "openai-plugin", manifest
    assert manifest["manifest"]["provider"]["type"] == "remote"
    assert health["code"] == 0, health
    assert unary["code"] == 0, unary
    assert json.loads(unary["response"])["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
    assert stream["grpc_code"] == "OK" and stream["chunks"][-1]["is_final"], stream
    events = parse_sse(stream["body"].encode())
    text = "".join(e["message"]["content"] for e in events)
    assert text == "tok0 tok1 tok2 tok3 tok4 ", events
    assert events[-1]["finished"] is True, events[-1]
    assert no_key["grpc_code"] == "OK" and no_key["code"] == 14, no_key  # unauthenticated
    assert "credentials" in no_key["message"], no_key
    assert "sk-interop-test" not in run.stderr  # the key is never logged
    assert_left_on_shutdown(run)
