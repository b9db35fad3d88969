"""The benchmarks' stub engine: an OpenAI- and Ollama-style chat server on trio raw sockets.

    python benchmarks/stub_engine.py [--port 0] [--t0-ms 0] [--chunks 5] [--gap-ms 0]
                                     [--close-log closes.jsonl]

Every system under test (direct, aogstream, LiteLLM) is measured against this same
process, so what differs between them is only the relay. It is deliberately lean (no
HTTP library, one `send` per event) so that its own cost is small next to a gateway's,
and its timing is configurable per request:

- `POST /v1/chat/completions`: OpenAI chat; `"stream": true` answers SSE
  (`data: {chat.completion.chunk}` × N, a final chunk with `finish_reason`, then
  `data: [DONE]`), otherwise one `chat.completion` JSON with N tokens of content.
- `POST /api/chat`: Ollama chat; streams NDJSON by default (N lines `"done": false`, a
  final `"done": true`), one JSON object with `"stream": false`.
- `GET /v1/models`: one model, `stub`.
- `GET /stats`: counters and the list of *peer closes* (below); `POST /stats/reset`.

Timing of one answer: T₀ of silence (time to first token), then N content chunks
(content `"tok"`) each followed by a gap Δ, then the final chunk(s). Δ = T₀ = 0 is the
*instant* mode. The command line sets the defaults; a request overrides them, most
specific last:

1. the model name: `stub-t20-n5-g10` (T₀ = 20 ms, N = 5, Δ = 10 ms; any subset, in any
   order after the first `-`; an `-r<tag>` part names the request in the close log).
   The model name is the one field every gateway forwards unchanged, so this is how the
   benchmarks configure the engine through aogstream and LiteLLM alike;
2. body fields `stub_t0_ms`, `stub_chunks`, `stub_gap_ms`, `stub_id`;
3. query parameters `?t0_ms=&chunks=&gap_ms=&id=`;
4. headers `x-stub-t0-ms`, `x-stub-chunks`, `x-stub-gap-ms`, `x-request-id`.

**Peer closes.** Each connection has a reader that watches the socket while an answer is
being produced, so the stub notices a client (or a gateway) closing its connection
within a scheduler tick, also during T₀ and the gaps, not just at the next send. Every
close that happens while a request is open is recorded (`GET /stats` → `closes`, and
one JSON line per close in `--close-log`): wall time (`time`, `time.time()`),
`monotonic` (`time.monotonic()`, comparable across processes of this machine), the
request's `id`, `path`, `phase` (`reading` the request, `before_first` token, `streaming`)
and `chunks_sent`. Closes between keep-alive requests are counted (`idle_closes`), not
listed. HTTP/1.1 keep-alive is supported (Content-Length request bodies); it prints
`PORT <n>` on stdout once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import trio

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
MAX_CHUNKS = 1_000_000
MAX_CLOSES = 100_000  # closes kept in memory for /stats (the log file keeps all)
READ_TIMEOUT = 30.0  # a request head+body must arrive within this
IDLE_TIMEOUT = 300.0  # keep-alive connections idle this long are closed
MODEL_PART = re.compile(r"^([tngr])(.+)$")

_CHUNKED_END = b"0\r\n\r\n"


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Timing:
    """One answer's shape: T₀ and Δ in seconds, N chunks, and a tag for the close log."""

    t0: float
    chunks: int
    gap: float
    tag: str = ""


class BadRequest(Exception):
    """A request the stub cannot serve; the message says what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _num(name: str, value: object, lo: float, hi: float) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequest(400, f"{name} must be a number, got {value!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(400, f"{name} must be in {lo:g}..{hi:g}, got {v:g}")
    return v


def timing_for(default: Timing, model: str, body: dict[str, Any], query: dict[str, str],
               headers: dict[bytes, bytes]) -> Timing:
    """The request's timing: the defaults, then model name, body, query, headers."""
    t0, n, gap, tag = default.t0 * 1000, float(default.chunks), default.gap * 1000, ""
    for part in model.split("-")[1:]:
        m = MODEL_PART.match(part)
        if not m:
            continue
        key, val = m.groups()
        if key == "r":
            tag = val
        elif key == "t":
            t0 = _num("model t<ms>", val, 0, 600_000)
        elif key == "n":
            n = _num("model n<chunks>", val, 0, MAX_CHUNKS)
        elif key == "g":
            gap = _num("model g<ms>", val, 0, 600_000)
    sources = (
        (body, "stub_t0_ms", "stub_chunks", "stub_gap_ms", "stub_id"),
        (query, "t0_ms", "chunks", "gap_ms", "id"),
        ({k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()},
         "x-stub-t0-ms", "x-stub-chunks", "x-stub-gap-ms", "x-request-id"),
    )
    for src, k_t0, k_n, k_gap, k_id in sources:
        if k_t0 in src:
            t0 = _num(k_t0, src[k_t0], 0, 600_000)
        if k_n in src:
            n = _num(k_n, src[k_n], 0, MAX_CHUNKS)
        if k_gap in src:
            gap = _num(k_gap, src[k_gap], 0, 600_000)
        if k_id in src:
            tag = str(src[k_id])
    if n != int(n):
        raise BadRequest(400, f"the number of chunks must be a whole number, got {n:g}")
    return Timing(t0 / 1000, int(n), gap / 1000, tag)


class Stats:
    """Counters and the peer-close records served by `GET /stats`."""

    def __init__(self, close_log: str | None) -> None:
        self.requests = 0
        self.connections = 0
        self.idle_closes = 0
        self.chunks = 0
        self.closes: list[dict[str, Any]] = []
        self._log = open(close_log, "a", buffering=1) if close_log else None

    def close_seen(self, rec: dict[str, Any]) -> None:
        if len(self.closes) < MAX_CLOSES:
            self.closes.append(rec)
        if self._log is not None:
            self._log.write(json.dumps(rec) + "\n")

    def as_json(self) -> bytes:
        return _dumps({"requests": self.requests, "connections": self.connections,
                       "chunks": self.chunks, "idle_closes": self.idle_closes,
                       "closes": self.closes})

    def reset(self) -> None:
        self.requests = self.connections = self.idle_closes = self.chunks = 0
        self.closes = []


class PeerClosed(Exception):
    """The peer closed its side of the connection."""


class Conn:
    """One client connection: a reader task fills `buf`, the request loop consumes it.

    The reader keeps reading while an answer is produced, which is how a close is seen
    at once (EOF or a reset) rather than at the next send."""

    def __init__(self, stream: trio.SocketStream, stats: Stats) -> None:
        self.stream = stream
        self.stats = stats
        self.buf = bytearray()
        self.eof = False
        self.more = trio.Event()
        # what the connection is doing, for the close record
        self.phase = "idle"
        self.path = ""
        self.tag = ""
        self.sent = 0
        self.close_noted = False

    async def reader(self, cancel: trio.CancelScope) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.buf += data
                self.more.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self.eof = True
        self.more.set()
        self.note_close()
        cancel.cancel()

    def note_close(self) -> None:
        """Record the peer's close once, whoever saw it first (the reader, or a send that
        hit a reset)."""
        if self.close_noted:
            return
        self.close_noted = True
        if self.phase in ("idle", "done"):
            self.stats.idle_closes += 1
        else:
            self.stats.close_seen({
                "time": time.time(), "monotonic": time.monotonic(), "id": self.tag,
                "path": self.path, "phase": self.phase, "chunks_sent": self.sent})

    async def _wait(self) -> None:
        if self.eof:
            raise PeerClosed
        self.more = trio.Event()
        await self.more.wait()

    async def read_request(self) -> tuple[str, str, dict[bytes, bytes], bytes] | None:
        """(method, target, headers, body), or None on a clean close between requests."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(self.buf) > MAX_HEAD:
                raise BadRequest(431, f"request head over {MAX_HEAD} bytes")
            if self.eof and not self.buf:
                return None
            await self._wait()
            if self.buf:
                self.phase = "reading"
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        self.phase = "reading"
        lines = head.split(b"\r\n")
        try:
            method, target, _version = lines[0].decode("latin-1").split(" ", 2)
        except ValueError:
            raise BadRequest(400, "malformed request line") from None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            raise BadRequest(411, "chunked request bodies are not supported; "
                                  "send Content-Length")
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            raise BadRequest(400, "Content-Length is not a number") from None
        if not 0 <= length <= MAX_BODY:
            raise BadRequest(413, f"request body over {MAX_BODY} bytes")
        while len(self.buf) < length:
            await self._wait()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return method, target, headers, body

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.note_close()
            raise


class StubEngine:
    """The HTTP handlers; `default` is the command line's timing."""

    def __init__(self, default: Timing, stats: Stats) -> None:
        self.default = default
        self.stats = stats

    async def handle(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        conn = Conn(stream, self.stats)
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.reader, nursery.cancel_scope)
                    await self._serve(conn)
                    nursery.cancel_scope.cancel()
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError, PeerClosed):
                pass  # the peer went away (reset mid-send); the reader recorded the close
        except Exception as exc:  # noqa: BLE001 - one bad connection never stops the engine
            print(f"stub_engine: connection handler failed: {exc!r}", file=sys.stderr,
                  flush=True)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, conn: Conn) -> None:
        while True:
            conn.phase, conn.path, conn.tag, conn.sent = "idle", "", "", 0
            try:
                with trio.fail_after(IDLE_TIMEOUT):
                    got = await conn.read_request()
            except BadRequest as exc:
                await self._error(conn, exc.status, str(exc), close=True)
                return
            except trio.TooSlowError:
                return
            if got is None:
                return
            method, target, headers, body = got
            self.stats.requests += 1
            path, _, qs = target.partition("?")
            conn.path = path
            close = headers.get(b"connection", b"").lower() == b"close"
            try:
                await self._route(conn, method, path, dict(parse_qsl(qs)), headers, body,
                                  close)
            except BadRequest as exc:
                await self._error(conn, exc.status, str(exc), close)
            if close:
                return

    async def _route(self, conn: Conn, method: str, path: str, query: dict[str, str],
                     headers: dict[bytes, bytes], body: bytes, close: bool) -> None:
        if path == "/v1/chat/completions" and method == "POST":
            await self._chat(conn, "openai", query, headers, body, close)
        elif path == "/api/chat" and method == "POST":
            await self._chat(conn, "ollama", query, headers, body, close)
        elif path == "/v1/models" and method == "GET":
            await self._json(conn, 200, _dumps({"object": "list", "data": [
                {"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}]}), close)
        elif path == "/stats" and method == "GET":
            await self._json(conn, 200, self.stats.as_json(), close)
        elif path == "/stats/reset" and method == "POST":
            self.stats.reset()
            await self._json(conn, 200, b'{"ok":true}', close)
        elif path == "/health":
            await self._json(conn, 200, b'{"status":"ok"}', close)
        else:
            raise BadRequest(404, f"{method} {path} is not served; endpoints: POST "
                                  "/v1/chat/completions, POST /api/chat, GET /v1/models, "
                                  "GET /stats, POST /stats/reset")

    async def _json(self, conn: Conn, status: int, body: bytes, close: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
                  413: "Payload Too Large", 431: "Request Header Fields Too Large"}
        await conn.send(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\nconnection: %s\r\n\r\n%b"
                        % (status, reason.get(status, "Error").encode(), len(body),
                           b"close" if close else b"keep-alive", body))

    async def _error(self, conn: Conn, status: int, msg: str, close: bool) -> None:
        await self._json(conn, status, _dumps({"error": {"message": msg,
                                                         "type": "invalid_request_error"}}),
                         close)

    async def _chat(self, conn: Conn, flavor: str, query: dict[str, str],
                    headers: dict[bytes, bytes], body: bytes, close: bool) -> None:
        try:
            req = json.loads(body or b"{}")
        except ValueError as exc:
            raise BadRequest(400, f"the body is not JSON: {exc}") from None
        if not isinstance(req, dict):
            raise BadRequest(400, "the body must be a JSON object")
        model = req.get("model") if isinstance(req.get("model"), str) else "stub"
        tm = timing_for(self.default, model, req, query, headers)
        conn.tag = tm.tag
        stream = req.get("stream") is not False if flavor == "ollama" else \
            req.get("stream") is True
        conn.phase = "before_first"
        if tm.t0:
            await trio.sleep(tm.t0)
        if not stream:
            conn.phase = "done"
            await self._json(conn, 200, self._whole(flavor, model, tm.chunks), close)
            return
        if flavor == "openai":
            await self._sse(conn, model, tm, close)
        else:
            await self._ndjson(conn, model, tm, close)

    @staticmethod
    def _whole(flavor: str, model: str, n: int) -> bytes:
        if flavor == "openai":
            return _dumps({
                "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "tok" * n}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n,
                          "total_tokens": n + 1}})
        return _dumps({"model": model, "created_at": _iso(), "message": {
            "role": "assistant", "content": "tok" * n}, "done": True, "done_reason": "stop",
            "eval_count": n})

    async def _sse(self, conn: Conn, model: str, tm: Timing, close: bool) -> None:
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
                b"connection: %s\r\n\r\n" % (b"close" if close else b"keep-alive"))
        created = int(time.time())
        conn.phase = "streaming"
        for i in range(tm.chunks):
            # A fresh dict and json.dumps per chunk, as an engine's server would do.
            delta = {"role": "assistant", "content": "tok"} if i == 0 else {"content": "tok"}
            event = _chunked(b"data: " + _dumps({
                "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": None}]}) + b"\n\n")
            await conn.send(head + event if head else event)
            head = b""
            conn.sent += 1
            self.stats.chunks += 1
            if tm.gap:
                await trio.sleep(tm.gap)
        final = _chunked(b"data: " + _dumps({
            "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": tm.chunks,
                      "total_tokens": tm.chunks + 1}}) + b"\n\n")
        conn.phase = "done"  # before the send: a close right after it is a normal end
        await conn.send(head + final + _chunked(b"data: [DONE]\n\n") + _CHUNKED_END)

    async def _ndjson(self, conn: Conn, model: str, tm: Timing, close: bool) -> None:
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                b"transfer-encoding: chunked\r\nconnection: %s\r\n\r\n"
                % (b"close" if close else b"keep-alive"))
        created = _iso()
        conn.phase = "streaming"
        for _ in range(tm.chunks):
            line = _chunked(_dumps({"model": model, "created_at": created, "message": {
                "role": "assistant", "content": "tok"}, "done": False}) + b"\n")
            await conn.send(head + line if head else line)
            head = b""
            conn.sent += 1
            self.stats.chunks += 1
            if tm.gap:
                await trio.sleep(tm.gap)
        final = _chunked(_dumps({"model": model, "created_at": created, "message": {
            "role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
            "eval_count": tm.chunks}) + b"\n")
        conn.phase = "done"
        await conn.send(head + final + _CHUNKED_END)


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def main(port: int, default: Timing, close_log: str | None) -> None:
    engine = StubEngine(default, Stats(close_log))
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, engine.handle, port, host="127.0.0.1")
        listeners = await nursery.start(serve)
        print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    ap.add_argument("--t0-ms", type=float, default=0.0, help="default time to first token")
    ap.add_argument("--chunks", type=int, default=5, help="default N content chunks")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="default gap between chunks")
    ap.add_argument("--close-log", default=None,
                    help="append one JSON line per peer close to this file")
    args = ap.parse_args(argv)
    if not 0 <= args.chunks <= MAX_CHUNKS:
        ap.error(f"--chunks must be in 0..{MAX_CHUNKS}")
    if args.t0_ms < 0 or args.gap_ms < 0:
        ap.error("--t0-ms and --gap-ms must be >= 0")
    return args


if __name__ == "__main__":
    a = parse_args()
    try:
        trio.run(main, a.port, Timing(a.t0_ms / 1000, a.chunks, a.gap_ms / 1000),
                 a.close_log)
    except KeyboardInterrupt:
        sys.exit(0)
