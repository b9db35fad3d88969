"""`isolation: process`: a native plugin in a host process of ours survives its own crash.

Real parts: gateway subprocesses (tests/conftest.py, one serving process each), the C
test plugin built by gcc with CRASH (tests/native/test_plugin.c → c-crash.so, whose
executor dereferences NULL for the model c-crash: unary at once, streamed on its own
thread after one `host.stream.emit`) loaded with `plugins.configs.c-crash.isolation:
process`, the Rust test plugin loaded in process beside it, the official `openai` client
and plain HTTP over loopback, the real host processes (their pids checked with the
kernel), and crash-init.so (built with CRASH_INIT: its init dereferences NULL).

Proven: an isolated plugin serves chat unary and streamed (synchronous chunks and the
asynchronous `host.stream.emit`/`close` relayed from its process) from a process that
is not the gateway's; a crash fails the request in flight with a 502 naming the plugin
and saying the native code crashed and is being restarted, and ends another plugin
stream in flight with that error; a crash mid-stream ends the stream with that error;
the gateway answers other plugins during and after; the plugin serves again from a new
process (re-registered with the same config) after the restart; a crash loop is fused
and listed as failed, saying why, on `/aog/v0.2/plugin/list` and `GET
/v0/management/plugins`; a library that crashes while loading is listed as failed
with the reason; an unknown `isolation` value is a config error naming the plugin;
`host.http.do` (a callback answered on the gateway's loop) works from the host process
and a client leaving mid-stream stops the plugin's stream there too; a host process
killed from outside is restarted; a config edit reconfigures it in its process and a
new `isolation` loads it afresh, either way; the gateway's stop, and disabling the
plugin, shut it down and reap its process, and a gateway killed outright leaves no host
process behind. Without a gateway: the relay keeps emit's backpressure (the plugin's
thread stops at 16 waiting chunks and is refused once the stream closes). (The same
crash in process is not tested: it would kill the gateway, which is the point.)
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import REPO, Gateway

BUILT = REPO / ".cache" / "native-plugins"
WAIT = 30.0  # bound on every wait for a condition (s)


def _arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _build() -> None:
    subprocess.run([str(REPO / "tools" / "build-native-plugins.sh")], check=True)


def _config(extra: str = "", crash_enabled: bool = True, greeting: str = "isolated",
            isolation: str = "process") -> str:
    return ("plugins:\n"
            "  enabled: true\n"
            "  configs:\n"
            "    c-crash:\n"
            f"      enabled: {'true' if crash_enabled else 'false'}\n"
            f"      isolation: {isolation}\n"
            f"      greeting: {greeting}\n"
            "    rust-test:\n"
            "      enabled: true\n" + extra)


def _gateway(work: Path, extra: str = "") -> Gateway:
    plugins = work / "native-plugins"
    (plugins / "linux" / _arch()).mkdir(parents=True)
    shutil.copy(BUILT / "c-crash.so", plugins / "linux" / _arch() / "c-crash.so")
    shutil.copy(BUILT / "rust-test.so", plugins / "rust-test.so")
    data = work / "gw" / "data"
    data.mkdir(parents=True)
    (data / "config.yaml").write_text(_config(extra))
    gw = Gateway(work / "gw", {"NATIVE_TEST_EVENTS": str(work / "events.txt"),
                               "AOGSTREAM_WORKERS": "1"}, plugin_dir=[plugins])
    gw.native_events = work / "events.txt"  # type: ignore[attr-defined]
    return gw


@pytest.fixture(scope="module")
def iso_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _build()
    work = tmp_path_factory.mktemp("isolation")
    gw = _gateway(work, "    c-sandboxed:\n      enabled: true\n      isolation: sandbox\n"
                        "    crash-init:\n      enabled: true\n      isolation: process\n")
    shutil.copy(BUILT / "c-test.so", work / "native-plugins" / "c-sandboxed.so")
    shutil.copy(BUILT / "crash-init.so", work / "native-plugins" / "crash-init.so")
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


def entry(gw: Gateway, name: str = "c-crash") -> dict[str, Any]:
    listing = httpx.get(f"{gw.url}/aog/v0.2/plugin/list", timeout=10).json()["data"]
    found: dict[str, Any] = next(p for p in listing if p["name"] == name)
    return found


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT:g} s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def ask(gw: Gateway, model: str, text: str = "hi") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": text}]})


def whoami(gw: Gateway) -> int:
    r = ask(gw, "c-echo", "whoami")
    assert r.status_code == 200, r.text
    return int(r.json()["choices"][0]["message"]["content"].split()[1])


def running_again(gw: Gateway, old_pid: int) -> Callable[[], bool]:
    def check() -> bool:
        e = entry(gw)
        return e["state"] == "running" and e["pid"] not in (None, old_pid)
    return check


def sse_datas(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


# ---- serving ------------------------------------------------------------------------------

def test_isolated_plugin_serves_chat_from_its_own_process(iso_gw: Gateway) -> None:
    e = entry(iso_gw)
    assert e["state"] == "running" and e["isolation"] == "process", e
    assert iso_gw.proc is not None
    pid = whoami(iso_gw)
    assert pid == e["pid"] and pid != iso_gw.proc.pid and alive(pid)
    client = oai(iso_gw)
    answer = client.chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hello from C"
    sync = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert sync == "hello from C"
    emitted = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="c-async", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert emitted == "hello from a C thread"


def test_config_reaches_the_isolated_plugin(iso_gw: Gateway) -> None:
    path: Path = iso_gw.native_events  # type: ignore[attr-defined]
    registered = [base64.b64decode(line.split()[1]).decode()
                  for line in path.read_text().splitlines() if line.startswith("register ")]
    assert any("greeting: isolated" in r and "isolation: process" in r for r in registered)


def test_unknown_isolation_value_is_a_config_error_naming_the_plugin(iso_gw: Gateway) -> None:
    e = entry(iso_gw, "c-sandboxed")
    assert e["state"] == "failed", e
    assert "plugins.configs.c-sandboxed.isolation" in e["last_error"]
    assert "'sandbox'" in e["last_error"] and "'process'" in e["last_error"]


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server calls it by this name
        body = f"fetched {self.path} for {self.headers.get('X-Plugin')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_host_http_do_from_the_isolated_process_reaches_a_loopback_server(
        iso_gw: Gateway) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/page"
        r = ask(iso_gw, "c-echo", f"fetch {url}")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "fetched /page for c-test"
    finally:
        server.shutdown()
        server.server_close()


def test_client_leaving_mid_stream_stops_the_isolated_plugins_stream(iso_gw: Gateway) -> None:
    path: Path = iso_gw.native_events  # type: ignore[attr-defined]

    def aborted() -> int:
        return sum(1 for e in path.read_text().splitlines() if e.startswith("aborted "))

    before = aborted()
    with httpx.stream("POST", f"{iso_gw.url}/v1/chat/completions", timeout=30, json={
            "model": "c-async", "messages": [{"role": "user", "content": "forever"}],
            "stream": True}) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen == 3:
                break  # the client leaves
    wait_for("the plugin's next emit is refused and it stops", lambda: aborted() > before)


# ---- crashes --------------------------------------------------------------------------------

def test_library_crashing_while_loading_is_listed_with_the_reason(iso_gw: Gateway) -> None:
    e = entry(iso_gw, "crash-init")
    assert e["state"] == "failed" and e["pid"] is None, e
    assert "ended while loading the library (killed by SIGSEGV)" in e["last_error"], e
    assert ask(iso_gw, "rust-echo").status_code == 200  # the gateway serves on

def test_crash_fails_calls_in_flight_and_the_plugin_serves_again_after_a_restart(
        iso_gw: Gateway) -> None:
    before = whoami(iso_gw)
    restarts = entry(iso_gw)["restarts"]
    registrations = len(registered(iso_gw))
    # a stream of the same plugin in flight: the crash must end it with the error too
    started = threading.Event()
    streamed: list[str] = []

    def hold_stream() -> None:
        with httpx.stream("POST", f"{iso_gw.url}/v1/chat/completions", timeout=30, json={
                "model": "c-async", "messages": [{"role": "user", "content": "forever"}],
                "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    streamed.append(line[5:].strip())
                    started.set()

    holder = threading.Thread(target=hold_stream, daemon=True)
    holder.start()
    assert started.wait(WAIT)
    crashed = ask(iso_gw, "c-crash")
    assert crashed.status_code == 502, crashed.text
    message = crashed.json()["error"]["message"]
    assert "native plugin c-crash" in message and "crashed" in message
    assert "SIGSEGV" in message and "restarted" in message
    holder.join(WAIT)
    assert not holder.is_alive()
    assert "crashed" in streamed[-1] and "c-crash" in streamed[-1], streamed[-3:]
    # the gateway and the other plugin serve on
    other = ask(iso_gw, "rust-echo")
    assert other.status_code == 200, other.text
    assert httpx.get(f"{iso_gw.url}/health", timeout=10).status_code == 200
    wait_for("the crashed process is reaped", lambda: not alive(before))
    wait_for("the plugin runs again in a new process", running_again(iso_gw, before))
    assert entry(iso_gw)["restarts"] == restarts + 1
    again = registered(iso_gw)[registrations:]  # registered anew, with the same config
    assert again and again[-1].startswith("register ") and "greeting: isolated" in again[-1]
    after = whoami(iso_gw)
    assert after != before and after == entry(iso_gw)["pid"]
    assert ask(iso_gw, "c-echo").json()["choices"][0]["message"]["content"] == "hello from C"
    key = (iso_gw.workdir / "data" / "management.key").read_text().strip()
    routed = httpx.get(f"{iso_gw.url}/v0/management/c-test/status", timeout=10,
                       headers={"X-Management-Key": key})  # its route, served by the new one
    assert routed.status_code == 200 and routed.json()["plugin"] == "c-test", routed.text


def test_crash_mid_stream_ends_the_stream_with_the_error(iso_gw: Gateway) -> None:
    before = whoami(iso_gw)
    r = httpx.post(f"{iso_gw.url}/v1/chat/completions", timeout=30, json={
        "model": "c-crash", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    datas = sse_datas(r.text)
    assert json.loads(datas[0])["choices"][0]["delta"]["content"] == "hello"
    assert "crashed" in datas[-1] and "restarted" in datas[-1], datas
    assert "[DONE]" not in datas
    assert ask(iso_gw, "rust-echo").status_code == 200
    wait_for("the plugin runs again in a new process", running_again(iso_gw, before))
    assert ask(iso_gw, "c-async").status_code == 200


def test_host_process_killed_from_outside_is_restarted(iso_gw: Gateway) -> None:
    before = whoami(iso_gw)
    os.kill(before, signal.SIGKILL)
    wait_for("the plugin runs again in a new process", running_again(iso_gw, before))
    assert whoami(iso_gw) != before


# ---- a crash loop, disabling, and the gateway's own end -----------------------------------

def test_crash_loop_is_fused_and_listed_with_the_reason(tmp_path: Path) -> None:
    _build()
    gw = _gateway(tmp_path).start()
    try:
        for _crash in range(10):  # each crash is a restart, until fused
            wait_for("running or fused", lambda: entry(gw)["state"] in ("running", "failed"))
            if entry(gw)["state"] == "failed":
                break
            pid = entry(gw)["pid"]
            assert ask(gw, "c-crash").status_code == 502
            wait_for("the crashed process is reaped", lambda p=pid: not alive(p))
        e = entry(gw)
        assert e["state"] == "failed" and "not restarted again" in e["last_error"], e
        assert "SIGSEGV" in e["last_error"]
        refused = ask(gw, "c-echo")
        assert refused.status_code == 503 and "not restarted again" in refused.text
        key = (gw.workdir / "data" / "management.key").read_text().strip()
        listing = httpx.get(f"{gw.url}/v0/management/plugins", timeout=10,
                            headers={"X-Management-Key": key}).json()["plugins"]
        item = next(p for p in listing if p["id"] == "c-crash")
        assert item["state"] == "failed" and "not restarted again" in item["last_error"]
        assert item["registered"] is False and item["isolation"] == "process"
        assert ask(gw, "rust-echo").status_code == 200
    finally:
        gw.stop()


def registered(gw: Gateway) -> list[str]:
    """The config YAML of every plugin.register / reconfigure, as "register <yaml>"."""
    path: Path = gw.native_events  # type: ignore[attr-defined]
    return [f"{line.split()[0]} {base64.b64decode(line.split()[1]).decode()}"
            for line in path.read_text().splitlines()
            if line.startswith(("register ", "reconfigure "))]


def test_config_edits_reconfigure_switch_isolation_and_disabling_reaps_the_process(
        tmp_path: Path) -> None:
    """Then a gateway killed outright leaves no host process behind."""
    _build()
    gw = _gateway(tmp_path).start()
    config = gw.workdir / "data" / "config.yaml"
    pids: list[int] = []
    try:
        first = entry(gw)["pid"]
        pids.append(first)
        assert alive(first)
        config.write_text(_config(greeting="changed"))  # reconfigured in its process
        wait_for("reconfigured", lambda: any(
            r.startswith("reconfigure ") and "greeting: changed" in r for r in registered(gw)))
        assert entry(gw)["pid"] == first and whoami(gw) == first
        config.write_text(_config(greeting="changed", isolation="in-process"))
        wait_for("loaded in process", lambda: entry(gw)["isolation"] == "in-process")
        assert gw.proc is not None and whoami(gw) == gw.proc.pid
        wait_for("the old host process reaped", lambda: not alive(first))
        config.write_text(_config(greeting="changed"))
        wait_for("isolated again", lambda: entry(gw)["isolation"] == "process"
                 and entry(gw)["pid"] is not None)
        first = entry(gw)["pid"]
        pids.append(first)
        assert whoami(gw) == first != gw.proc.pid
        config.write_text(_config(crash_enabled=False))
        wait_for("disabled", lambda: entry(gw)["state"] == "disabled")
        wait_for("its process reaped", lambda: not alive(first))
        path: Path = gw.native_events  # type: ignore[attr-defined]
        assert path.read_text().splitlines()[-1] == "shutdown"  # the plugin's shutdown()
        config.write_text(_config())
        wait_for("enabled again", lambda: entry(gw)["state"] == "running")
        second = entry(gw)["pid"]
        pids.append(second)
        assert second != first and alive(second)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)  # no clean-up code runs in the gateway
        gw.proc.wait(10)
        wait_for("no host process outlives the gateway", lambda: not alive(second))
    finally:
        gw.stop()
        for pid in pids:  # never leave one of ours behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_gateway_stop_shuts_the_plugin_down_and_reaps_its_process(tmp_path: Path) -> None:
    _build()
    gw = _gateway(tmp_path).start()
    pid = entry(gw)["pid"]
    try:
        assert alive(pid)
    finally:
        gw.stop()  # SIGINT: the gateway's own clean stop
    assert not alive(pid)  # reaped before the gateway exited
    path: Path = gw.native_events  # type: ignore[attr-defined]
    assert path.read_text().splitlines()[-1] == "shutdown"  # the plugin's shutdown() ran


# ---- the relay itself, without a gateway ------------------------------------------------------

async def test_relayed_emits_wait_at_the_stream_limit_and_fail_once_it_closes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C plugin's own thread emits every 5 ms into a stream nobody reads: through
    the relay it stops at the 16-chunk limit as in process, moves on when a chunk is
    taken, and is refused (and stops) once the stream closes; shutdown reaps the
    process after the plugin's `shutdown()`."""
    import trio

    from aogstream.host.native.callbacks import STREAM_BUFFER, HostServices
    from aogstream.host.native.isolated import IsolatedLibrary

    _build()
    log = tmp_path / "events.txt"
    monkeypatch.setenv("NATIVE_TEST_EVENTS", str(log))  # the host process inherits it
    host = HostServices()
    lib = IsolatedLibrary(BUILT / "c-test.so", lambda m, d: host.handle("p", m, d), "p",
                          host_call_nowait=lambda m, d: host.handle_nowait("p", m, d))
    lib.spawn()
    pid = lib.pid
    assert pid is not None and pid != os.getpid()
    try:
        await trio.to_thread.run_sync(lib.open)
        await trio.to_thread.run_sync(lib.call, "plugin.register",
                                      b'{"config_yaml":"","schema_version":3}')
        stream = host.open_stream("p")
        request = json.dumps({"Model": "c-async", "stream_id": stream.id,
                              "Payload": base64.b64encode(b"forever").decode()},
                             separators=(",", ":")).encode()  # C reads `"key":"value"`
        reply = await trio.to_thread.run_sync(lib.call, "executor.execute_stream", request)
        assert b'"ok":true' in reply
        await until(lambda: stream.queue.waiting() == STREAM_BUFFER)
        await trio.sleep(0.2)  # 40 more emits' time: none got through
        assert stream.queue.waiting() == STREAM_BUFFER
        assert b"hello" in await stream.queue.get()
        # room for one: the waiting emit goes through
        await until(lambda: stream.queue.waiting() == STREAM_BUFFER)
        host.abort_stream(stream)
        await until(lambda: any(e.startswith("aborted ") for e in
                                (log.read_text().splitlines() if log.exists() else [])))
    finally:
        await trio.to_thread.run_sync(lib.shutdown, 5.0)
        await host.aclose()
    assert log.read_text().splitlines()[-1] == "shutdown"
    assert not alive(pid)


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` on the loop (a thread of the plugin changes what it reads), bounded."""
    import trio

    with trio.fail_after(WAIT):
        while not check():  # noqa: ASYNC110 - the change comes from another process
            await trio.sleep(0.005)
