"""The direct baseline of benchmarks/relay_stream.py: a tiny HTTP/1.1 SSE server on trio
raw sockets that streams AOG chat chunks, run in its own process.

    python benchmarks/stub_sse.py [--port 0]

It prints `PORT <n>` on stdout once it listens on 127.0.0.1. Any POST path works (the
benchmark uses the gateway's `/aog/v0.2/services/chat` for symmetry). The JSON body
takes the same fields as the stub plugin (benchmarks/stub_plugin/stub-plugin/plugin.py):
`id`, `chunks` (N), `first_delay` (T0, s), `gap` (Δ, s; 0 = instant mode). It answers
with T0 of silence, then N events `data: {...,"content":"tok",...,"finished":false}`
each followed by Δ, then a final event with `"finished":true`, one chunked-encoding
write per event; the response headers go out with the first event, as the gateway
does. One request per connection (`Connection: close`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import trio

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_CHUNKS = 1_000_000
READ_TIMEOUT = 10.0
HEAD = (b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n")


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _event(obj: dict) -> bytes:
    # Same serialisation as aogstream.sdk for a dict chunk: compact JSON, SSE framed.
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return _chunked(b"data: " + body + b"\n\n")


async def _read_request(stream: trio.SocketStream) -> tuple[bytes, bytes] | None:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            return None
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length > MAX_BODY:
        return None
    body = bytearray(rest)
    while len(body) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        body += data
    return head, bytes(body[:length])


async def _error(stream: trio.SocketStream, status: bytes, msg: str) -> None:
    body = json.dumps({"error": msg}).encode()
    await stream.send_all(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)


async def handle(stream: trio.SocketStream) -> None:
    try:
        with trio.move_on_after(READ_TIMEOUT):
            got = await _read_request(stream)
        if got is None:
            return
        _head, body = got
        try:
            req = json.loads(body or b"{}")
            tag = str(req.get("id", ""))
            n = int(req.get("chunks", 5))
            first_delay = float(req.get("first_delay", 0))
            gap = float(req.get("gap", 0))
            if not 0 <= n <= MAX_CHUNKS:
                raise ValueError(f"chunks must be in 0..{MAX_CHUNKS}")
        except (ValueError, TypeError, AttributeError) as exc:
            await _error(stream, b"400 Bad Request", str(exc))
            return
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if first_delay:
            await trio.sleep(first_delay)
        head = HEAD
        for _ in range(n):
            # A fresh dict per chunk, as the stub plugin does.
            event = _event({"id": tag, "model": "stub", "created_at": created,
                            "message": {"role": "assistant", "content": "tok"},
                            "finished": False})
            await stream.send_all(head + event if head else event)
            head = b""
            if gap:
                await trio.sleep(gap)
        final = _event({"id": tag, "model": "stub", "created_at": created,
                        "message": {"role": "assistant", "content": ""}, "finished": True})
        await stream.send_all(head + final + b"0\r\n\r\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await trio.aclose_forcefully(stream)


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handle, port, host="127.0.0.1")
        listeners = await nursery.start(serve)
        bound = listeners[0].socket.getsockname()[1]
        print(f"PORT {bound}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        trio.run(main, args.port)
    except KeyboardInterrupt:
        sys.exit(0)
