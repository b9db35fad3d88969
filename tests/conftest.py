"""Real gateways for the end-to-end tests.

`Gateway` starts `python -m aogstream server start` as a subprocess on a free port with
the echo test plugin (tests/plugins), waits until `/health` answers and stops it with
SIGINT (SIGKILL after 10 s). The echo plugin appends JSON lines to the file named by
ECHO_PLUGIN_EVENTS (one per gateway, in its tmp folder), with CLOCK_MONOTONIC times,
so tests compare the plugin's `t` with their own `time.monotonic()`.

Fixtures:

* `gateway` - one default instance for the whole session (60 s / 300 s timeouts);
* `gateway_factory` - module-scoped `make(name, **env)` for instances with custom
  environment variables (e.g. `AOGSTREAM_UNARY_TIMEOUT="1"`), stopped with the module.
* `engines_gateway` - one gateway for the session with the shipped plugins
  (`./plugins`) and their real engines, from the engine directory `make test`
  installs into (`AOGSTREAM_TEST_ENGINE_DIR`, default `.cache/engines`).
* `postgres_db` - a database on a real PostgreSQL server for the session, dropped after
  (tests/pgcluster.py starts a throwaway cluster).

Tests are plain sync functions; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pgcluster import postgres_db  # noqa: F401 - a session fixture, registered here once

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "tests" / "plugins"
SHIPPED_PLUGIN_DIR = REPO / "plugins"
LOCAL_PLUGINS = ["embed-plugin", "llamacpp-plugin", "piper-plugin", "pocketsphinx-plugin",
                 "whisper-plugin"]
SERVICES = "/aog/v0.2/services/"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class GatewayStartError(RuntimeError):
    pass


class Gateway:
    """One gateway subprocess with the echo plugin, and helpers to talk to it."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None,
                 plugin_dir: Path | list[Path] = PLUGIN_DIR) -> None:
        self.workdir = workdir
        self.plugin_dirs = plugin_dir if isinstance(plugin_dir, list) else [plugin_dir]
        self.plugin_dir = self.plugin_dirs[0]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events_file = workdir / "events.jsonl"
        self.log_file = workdir / "gateway.log"
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def service_url(self, service: str) -> str:
        return f"{self.url}{SERVICES}{service}"

    def service_ws_url(self, service: str) -> str:
        return f"{self.ws_url}{SERVICES}{service}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
        env.update({
            "ECHO_PLUGIN_EVENTS": str(self.events_file),
            "AOG_DATA_DIR": str(self.workdir / "data"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> Gateway:
        last = ""
        for _attempt in range(3):  # a free port can be taken between pick and bind
            self.port = free_port()
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "aogstream", "server", "start",
                     "--port", str(self.port),
                     *(a for d in self.plugin_dirs for a in ("--plugin-dir", str(d)))],
                    cwd=REPO, env=self._env(), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                self._wait_healthy()
                return self
            except GatewayStartError as exc:
                last = str(exc)
                self.stop()
        raise GatewayStartError(last)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayStartError(
                    f"gateway exited with {self.proc.returncode} before answering /health; "
                    f"log:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=1.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise GatewayStartError(f"/health did not answer within {START_TIMEOUT} s; "
                                f"log:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- the plugin's event log ------------------------------------------------------

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Events the echo plugin recorded, optionally filtered by name and fields."""
        try:
            text = self.events_file.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if event is not None and ev.get("event") != event:
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def wait_event(self, event: str, timeout: float = 1.0, **match: Any) -> dict[str, Any] | None:
        """The first matching event, polling for up to `timeout` seconds (None if none)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **match)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    # ---- status ----------------------------------------------------------------------

    def plugin_list(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/aog/v0.2/plugin/list", timeout=5.0)
        r.raise_for_status()
        return r.json()["data"]

    def plugin(self, name: str = "echo-plugin") -> dict[str, Any]:
        for p in self.plugin_list():
            if p["name"] == name:
                return p
        raise AssertionError(f"plugin {name!r} not in /plugin/list")

    def wait_plugin_running(self, *, not_pid: int | None = None, timeout: float = 10.0,
                            name: str = "echo-plugin") -> dict[str, Any]:
        """Poll /plugin/list until the plugin runs (with a pid other than `not_pid`)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.plugin(name)
            if seen["state"] == "running" and seen["pid"] and seen["pid"] != not_pid:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"plugin {name} not running again within {timeout} s "
                             f"(last status {seen}); gateway log:\n{self.log_tail()}")


# ---- helpers shared by the test modules -------------------------------------------------


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Strictly parse `data: {json}\\n\\n` events (the gateway's framing)."""
    assert raw.endswith(b"\n\n") or raw == b"", f"SSE body does not end with a blank line: {raw!r}"
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), f"SSE event is not a `data: ` line: {block!r}"
        assert b"\n" not in block, f"SSE event spans several lines: {block!r}"
        out.append(json.loads(block[len(b"data: "):]))
    return out


def parse_ndjson(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n"), f"NDJSON body does not end with a newline: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


class EventReader:
    """Incremental SSE/NDJSON splitter recording the arrival time of each event."""

    def __init__(self, ndjson: bool = False) -> None:
        self.sep = b"\n" if ndjson else b"\n\n"
        self.ndjson = ndjson
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        now = time.monotonic()
        self.buf += chunk
        new = []
        while self.sep in self.buf:
            block, self.buf = self.buf.split(self.sep, 1)
            if not self.ndjson:
                assert block.startswith(b"data: "), f"not an SSE data event: {block!r}"
                block = block[len(b"data: "):]
            ev = json.loads(block)
            new.append(ev)
            self.events.append(ev)
            self.times.append(now)
        return new


def raw_http(port: int, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None, timeout: float = 5.0) -> socket.socket:
    """Open a socket and send one HTTP/1.1 request on it (the caller reads and closes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            f"Content-Length: {len(body)}", "Content-Type: application/json"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The default gateway (AOG's default timeouts), shared by the whole session."""
    gw = Gateway(tmp_path_factory.mktemp("gw-default")).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[..., Gateway]]:
    """`make(name, **env)` → a started Gateway with extra env; stopped after the module."""
    started: list[Gateway] = []

    def make(name: str = "gw", **env: str) -> Gateway:
        gw = Gateway(tmp_path_factory.mktemp(name), env)
        started.append(gw)
        return gw.start()

    try:
        yield make
    finally:
        for gw in started:
            with contextlib.suppress(Exception):
                gw.stop()


def engine_test_dir() -> Path:
    """Where `make test` installed the shipped plugins' engines and default models."""
    return Path(os.environ.get("AOGSTREAM_TEST_ENGINE_DIR") or REPO / ".cache" / "engines")


def require_engines(names: list[str] | None = None) -> Path:
    """Fail (not skip) with the fix when an engine the test needs is not installed."""
    root = engine_test_dir()
    missing = [n for n in (names or LOCAL_PLUGINS)
               if not (root / n / "engine" / "installed.json").exists()]
    if missing:
        pytest.fail(f"engines not installed in {root}: {', '.join(missing)}; run `make test` "
                    f"or `python -m aogstream engine install --engine-dir {root}`")
    return root


@pytest.fixture(scope="session")
def engines_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway serving the shipped plugins with their real engines and models (each
    test module calls `require_engines([...])` for the ones it needs)."""
    root = engine_test_dir()
    gw = Gateway(tmp_path_factory.mktemp("gw-engines"),
                 {"AOGSTREAM_ENGINE_DIR": str(root)}, plugin_dir=SHIPPED_PLUGIN_DIR).start()
    try:
        yield gw
    finally:
        gw.stop()


@contextlib.contextmanager
def shipped_plugins_gateway(work: Path, names: list[str],
                            env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """A gateway serving only the named shipped plugins (linked into its own plugin
    folder) with their real engines and models, stopped on exit."""
    root = require_engines(names)
    plugins = work / "plugins"
    plugins.mkdir()
    for name in names:
        (plugins / name).symlink_to(REPO / "plugins" / name)
    gateway = Gateway(work, {"AOGSTREAM_ENGINE_DIR": str(root), **(env or {})},
                      plugin_dir=plugins).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0)) as c:
        yield c
