"""Slow and greedy clients cannot wear the gateway down.

Real parts: gateway subprocesses with the echo test plugin (short body timeouts and a
small connection cap set through the environment, as an operator would), raw TCP
sockets for clients that send a request head and then trickle or stall the body, and
httpx for the well-behaved client beside them.

What is proven: a body that stalls or trickles is cut with a 408 naming the limit after
the body timeout, on the hot routes, the flavor front doors and the Quart management
routes alike, and the connection is closed, while `/health` keeps answering at once; a
large body that keeps moving is not cut; the gateway raises its open-file soft limit to
the hard limit at start (read from /proc/<pid>/limits, for it and its plugin); and
connections beyond the cap wait in the listen backlog (costing the gateway no file
descriptor) until slow ones are cut, then are served, with no "too many open files".
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Gateway

API = "/aog/v0.2"
BODY_TIMEOUT = 2.0
SLOW_ROUTES = [f"{API}/services/chat", "/v1/chat/completions", "/api/chat",
               f"{API}/api_flavors/openai/v1/chat/completions", f"{API}/service_provider"]


def open_slow_body(port: int, path: str, sent: bytes = b'{"model": "ec',
                   declared: int = 1000) -> socket.socket:
    """A request whose head is complete and whose body stops after `sent`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
                  ).encode() + sent)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    return data


def answer_of(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a raw HTTP/1.1 answer (chunked or not)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, body = out + rest[:size], rest[size + 2:]
        body = out
    return status, json.loads(body)


def message(body: dict) -> str:
    err = body.get("error")
    if isinstance(err, dict):
        return err["message"]
    return err if isinstance(err, str) else body["message"]


@pytest.fixture(scope="module")
def slow_gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    gw = gateway_factory("slow", AOGSTREAM_BODY_TIMEOUT=str(BODY_TIMEOUT),
                         AOGSTREAM_WORKERS="1")
    # the first front-door request compiles the flavor templates: do it before timing
    for path in SLOW_ROUTES:
        httpx.post(gw.url + path, json={}, timeout=30)
    return gw


def test_stalled_and_trickled_bodies_are_cut_while_health_answers(slow_gateway: Gateway
                                                                  ) -> None:
    started = time.monotonic()
    stalled = {path: open_slow_body(slow_gateway.port, path) for path in SLOW_ROUTES}
    trickler = open_slow_body(slow_gateway.port, f"{API}/services/chat", b"{")
    stop = threading.Event()

    def trickle() -> None:  # one byte every 50 ms: 20 B/s, far under the minimum rate
        with contextlib.suppress(OSError):
            while not stop.wait(0.05):
                trickler.send(b" ")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # the well-behaved client is served at once meanwhile
        t0 = time.monotonic()
        assert httpx.get(f"{slow_gateway.url}/health", timeout=5).status_code == 200
        assert time.monotonic() - t0 < BODY_TIMEOUT, "health waited on the slow clients"
        for path, sock in [*stalled.items(), ("trickled", trickler)]:
            raw = read_until_closed(sock, timeout=15)
            elapsed = time.monotonic() - started
            status, body = answer_of(raw)
            assert status == 408, (path, raw[:300])
            assert "did not arrive in time" in message(body), (path, body)
            assert "AOGSTREAM_BODY_TIMEOUT" in message(body)
            assert elapsed < BODY_TIMEOUT + 10, (path, elapsed)
        assert time.monotonic() - started >= BODY_TIMEOUT * 0.9
    finally:
        stop.set()
        thread.join(5)
    assert httpx.get(f"{slow_gateway.url}/health", timeout=5).status_code == 200


def test_a_large_body_that_keeps_moving_is_not_cut(slow_gateway: Gateway) -> None:
    """The deadline grows with the bytes received (1 s per 64 KiB): 512 KiB sent over
    ~2 s, twice the base timeout, is served."""
    payload = json.dumps({"model": "echo", "messages": [
        {"role": "user", "content": "x" * (512 * 1024)}]}).encode()
    step = len(payload) // 40

    def paced() -> Iterator[bytes]:
        for i in range(0, len(payload), step):
            yield payload[i:i + step]
            time.sleep(0.05)  # pacing the upload, not waiting for anything

    t0 = time.monotonic()
    resp = httpx.post(f"{slow_gateway.url}{API}/services/chat", content=paced(),
                      headers={"content-length": str(len(payload))}, timeout=30)
    assert time.monotonic() - t0 > BODY_TIMEOUT
    assert resp.status_code == 200, resp.text[:300]


def nofile(pid: int) -> tuple[int, int]:
    """(soft, hard) open-file limits of a process, from /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


@contextlib.contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """Start children with a lower soft open-file limit (the hard one is untouched, so
    this process gets its own back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    gw = Gateway(tmp_path_factory.mktemp("nofile"))
    with soft_nofile(256):
        gw.start()
    try:
        assert gw.proc is not None
        assert nofile(gw.proc.pid) == (hard, hard) or hard == resource.RLIM_INFINITY
        plugin_pid = gw.wait_plugin_running()["pid"]
        assert nofile(plugin_pid)[0] == nofile(plugin_pid)[1], "plugins inherit it"
        assert "connections each" in gw.log_tail(200)
    finally:
        gw.stop()


def test_connections_beyond_the_cap_wait_and_are_served_once_slow_ones_are_cut(
        gateway_factory: Callable[..., Gateway]) -> None:
    cap, flood, timeout = 4, 8, 1.0
    gw = gateway_factory("cap", AOGSTREAM_WORKERS="1", AOGSTREAM_MAX_CONNECTIONS=str(cap),
                         AOGSTREAM_BODY_TIMEOUT=str(timeout))
    assert f"up to {cap} connections each" in gw.log_tail(200)
    # the cap's worth of slow clients, then a flood beyond it, then a good client
    slow = [open_slow_body(gw.port, f"{API}/services/chat") for _ in range(cap + flood)]
    t0 = time.monotonic()
    resp = httpx.get(f"{gw.url}/health", timeout=httpx.Timeout(30.0, connect=30.0))
    waited = time.monotonic() - t0
    assert resp.status_code == 200
    # it was queued behind the slow ones (no slot until their bodies timed out) ...
    assert waited >= timeout * 0.9, f"/health answered in {waited:.2f} s past the cap"
    # ... and every slow client, the queued ones included, was cut with a 408
    for sock in slow:
        status, _ = answer_of(read_until_closed(sock, timeout=30))
        assert status == 408
    assert "Too many open files" not in gw.log_tail(500)
    assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200
