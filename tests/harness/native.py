"""A gateway serving native plugin libraries, as the tests/test_native_*.py modules set
one up: the libraries are built (tools/build-native-plugins.sh; quick when nothing
changed), copied into a plugin folder of the gateway's own under `linux/<arch>/` (or
loose at its top, where the loader lists what it cannot load), enabled in the data
directory's config.yaml, and their events file (NATIVE_TEST_EVENTS) is read back and
waited on; `leave_mid_stream` is a client that leaves a plugin stream.
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import PLUGIN_DIR, REPO, Gateway

BUILT = REPO / ".cache" / "native-plugins"  # where the build script puts the libraries


def arch() -> str:
    """This machine's architecture as CLIProxyAPI names plugin folders (Go's GOARCH)."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def build() -> None:
    subprocess.run([str(REPO / "tools" / "build-native-plugins.sh")], check=True)


@contextmanager
def native_gateway(work: Path, libraries: list[str], config: str,
                   env: dict[str, str] | None = None,
                   loose: dict[str, bytes] | None = None) -> Iterator[Gateway]:
    """A started gateway (the Python test plugins too) with the built `libraries` (names
    without `.so`) installed for this machine, `loose` files at the top of the plugin
    folder, and `config` as the text under `plugins:` `configs:` in its config.yaml;
    `gw.native_events` is the events file the plugins write, `gw.native_plugins` the
    plugin folder. Stopped on exit."""
    build()
    plugins = work / "native-plugins"
    (plugins / "linux" / arch()).mkdir(parents=True)
    for name in libraries:
        shutil.copy(BUILT / f"{name}.so", plugins / "linux" / arch() / f"{name}.so")
    for file_name, data in (loose or {}).items():
        (plugins / file_name).write_bytes(data)
    data_dir = work / "gw" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "config.yaml").write_text("plugins:\n  enabled: true\n  configs:\n" + config)
    events_file = work / "events.txt"
    gw = Gateway(work / "gw", {"NATIVE_TEST_EVENTS": str(events_file), **(env or {})},
                 plugin_dir=[PLUGIN_DIR, plugins])
    gw.start()
    gw.native_events = events_file  # type: ignore[attr-defined]
    gw.native_plugins = plugins  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        gw.stop()


def enabled(*names: str, priority: Mapping[str, int] | None = None) -> str:
    """The config.yaml lines that enable each named plugin, with its `priority` where
    given (none: the host's default) and no other settings."""
    priority = priority or {}
    return "".join(f"    {name}:\n      enabled: true\n"
                   + (f"      priority: {priority[name]}\n" if name in priority else "")
                   for name in names)


def native_events(gw: Gateway) -> list[str]:
    """The lines the plugins wrote to their events file so far ([] before the first)."""
    path: Path = gw.native_events  # type: ignore[attr-defined]
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_event(gw: Gateway, since: int, match: Callable[[str], bool],
               timeout: float = 10) -> str:
    """The first event after the first `since` lines that `match`es (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in native_events(gw)[since:]:
            if match(line):
                return line
        time.sleep(0.02)
    pytest.fail(f"no matching event; events since: {native_events(gw)[since:]}")


def leave_mid_stream(gw: Gateway) -> None:
    """A client that leaves mid-stream: a streamed chat request to c-async saying
    "forever" (c-test emits until the host refuses a chunk) over a raw socket, closed
    once three `data:` frames arrived."""
    body = json.dumps({"model": "c-async", "stream": True,
                       "messages": [{"role": "user", "content": "forever"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data:") < 3:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    sock.close()
