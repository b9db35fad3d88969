"""A loopback OpenAI-compatible "cloud" (a stdlib HTTP server with the test's own
handler) and a gateway whose shipped openai-plugin serves chat from it: the provider
row's key points the plugin at the server, as an operator's would at a real cloud.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from conftest import REPO, Gateway

OPENAI_PLUGIN = "openai-plugin"
OPENAI_CHAT = "remote_openai-plugin_chat"  # the openai-plugin's chat provider


@contextmanager
def loopback_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free loopback port (a thread per request); yields the
    server's base URL (`http://127.0.0.1:<port>`) and shuts it down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def loopback_cloud(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` as an OpenAI-compatible cloud on loopback; yields its base URL (`…/v1`)."""
    with loopback_server(handler) as base:
        yield f"{base}/v1"


@contextmanager
def openai_plugin_gateway(plugins: Path, work: Path, cloud: str, api_key: str,
                          env: dict[str, str] | None = None) -> Iterator[Gateway]:
    """A started gateway whose only plugin is the shipped openai-plugin (linked into
    `plugins`), its chat provider keyed with `api_key` at `cloud`. Stopped on exit."""
    (plugins / OPENAI_PLUGIN).symlink_to(REPO / "plugins" / OPENAI_PLUGIN)
    g = Gateway(work, env or {}, plugin_dir=plugins).start()
    try:
        g.wait_plugin_running(name=OPENAI_PLUGIN)
        r = httpx.put(f"{g.url}/aog/v0.2/service_provider", timeout=30.0, json={
            "provider_name": OPENAI_CHAT,
            "auth_key": json.dumps({"api_key": api_key, "base_url": cloud})})
        assert r.status_code == 200, r.text
        yield g
    finally:
        g.stop()
