"""A model pulled from a URL that fails says what happened and leaves nothing behind.

Real parts: `ModelStore.pull` (the plugin side of every URL pull) downloading over
loopback from real HTTP servers that misbehave in the ways a user meets: a server that
stops sending, one that hangs up half-way, one that answers 404, and a port nobody
listens on. Proven: each failure is a `PluginError` whose message names the host and
what went wrong (never the empty text httpx's timeouts carry), and the store holds no
model and no temporary folder afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aogstream import manifest as m
from aogstream.engines import models


class _Misbehaving(BaseHTTPRequestHandler):
    """/stall sends 1 MB of 4 then goes quiet; /hangup sends 1 MB of 4 then closes;
    anything else is a 404."""

    release = threading.Event()

    def do_GET(self):
        if self.path not in ("/stall", "/hangup"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(4_000_000))
        self.end_headers()
        self.wfile.write(b"\0" * 1_000_000)
        self.wfile.flush()
        if self.path == "/stall":
            self.release.wait(30)

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Misbehaving.release.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        _Misbehaving.release.set()
        srv.shutdown()
        srv.server_close()


def _pull_error(store_dir: Path, url: str) -> str:
    store = models.ModelStore(store_dir)

    async def run() -> None:
        async for _ in store.pull("broken", source=url):
            pass

    with pytest.raises(m.PluginError) as caught:
        asyncio.run(run())
    assert store.all() == []
    assert [p.name for p in store.root.iterdir()] == [], "a partial pull was left behind"
    return caught.value.message


def test_a_stalled_server_is_named_with_how_long_it_was_silent(server, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(models, "URL_READ_TIMEOUT_S", 0.5)
    msg = _pull_error(tmp_path, server + "/stall")
    assert "no data from 127.0.0.1 for 0.5 s" in msg, msg
    assert "of 4.0 MB" in msg, msg


def test_a_server_that_hangs_up_midway_says_how_much_arrived(server, tmp_path):
    msg = _pull_error(tmp_path, server + "/hangup")
    assert "127.0.0.1 closed the connection after 1.0 MB of 4.0 MB" in msg, msg


def test_an_http_error_status_is_given_with_its_reason(server, tmp_path):
    msg = _pull_error(tmp_path, server + "/missing.bin")
    assert "answered HTTP 404 Not Found" in msg, msg


def test_a_port_nobody_listens_on_is_a_connection_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the pull: nothing listens
    msg = _pull_error(tmp_path, f"http://127.0.0.1:{port}/model.bin")
    assert "could not connect to 127.0.0.1:" in msg, msg
    assert not msg.rstrip().endswith(":"), msg
