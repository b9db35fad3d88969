"""The benchmarks' HTTP client: trio raw sockets, each read timestamped, HTTP/1.1
chunked/Content-Length decoded, SSE and NDJSON events split here.

Raw sockets rather than httpx so that the client's own cost per event is small and the
same for every system, and so that each event's arrival is timed at the read that
completed it (which is also how coalescing — several events in one read after a
silence, the signature of buffering — is seen)::

    body = chat_body(proto, model_name(t0_ms, n, gap_ms))   # OpenAI or Ollama JSON
    res = await call(sut, proto, body, timeout=30)           # fresh connection
    async with KeepAlive(sut) as conn: res = await conn.call(proto, body)
    res.ok, res.status, res.ttft, res.total, res.content (times of content events),
    res.gaps(), res.coalesced (reads that delivered >= 2 events after a silence), res.error

A *content event* is an SSE event or NDJSON line whose content starts with `tok` (the
stubs send `"tok"`); the terminal one is `[DONE]` or AOG's `"finished":true` (SSE) or
`"done":true` (NDJSON); a JSON answer is one event at its end.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from time import perf_counter

import trio

from .layout import HOST
from .systems import System

PROTOCOLS = ("json", "sse", "ndjson")
RECV = 262144


def model_name(t0_ms: float = 0, chunks: int = 5, gap_ms: float = 0, tag: str = "") -> str:
    """The model name that configures the stub through any gateway (see stub_engine)."""
    name = f"stub-t{t0_ms:g}-n{chunks}-g{gap_ms:g}"
    return f"{name}-r{tag}" if tag else name


def chat_body(proto: str, model: str) -> bytes:
    """An OpenAI (json, sse) or Ollama (ndjson) chat request."""
    obj = {"model": model, "messages": [{"role": "user", "content": "hi"}],
           "stream": proto != "json"}
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Result:
    """One request: status, timings (perf_counter seconds) and the events seen."""

    ok: bool = False
    status: int = 0
    start: float = 0.0  # request written
    first: float = 0.0  # first content event complete
    end: float = 0.0  # response complete
    content: list[float] = field(default_factory=list)  # arrival of each content event
    events: int = 0  # all events (content, final, terminal)
    terminal: bool = False  # [DONE] / "finished":true / "done":true / a whole JSON body
    coalesced: int = 0  # reads that delivered >= 2 content events after a silence
    first_payload: bytes = b""
    error: str = ""

    @property
    def ttft(self) -> float:
        return self.first - self.start if self.first else float("nan")

    @property
    def total(self) -> float:
        return self.end - self.start if self.end else float("nan")

    def gaps(self) -> list[float]:
        c = self.content
        return [b - a for a, b in itertools.pairwise(c)]


def request_bytes(sut: System, proto: str, body: bytes, keep_alive: bool = False) -> bytes:
    accept = {"json": "application/json", "sse": "text/event-stream",
              "ndjson": "application/x-ndjson"}[proto]
    return (f"POST {sut.path(proto)} HTTP/1.1\r\nHost: {HOST}:{sut.port}\r\n"
            f"Content-Type: application/json\r\nAccept: {accept}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n").encode() \
        + sut.auth + b"\r\n" + body


class _Reader:
    """Incremental HTTP/1.1 response decoder with per-read event timestamps."""

    def __init__(self, proto: str, res: Result, silence: float) -> None:
        self.proto = proto
        self.res = res
        self.silence = silence  # a read after this long quiet that brings >= 2 events
        self.buf = bytearray()  # undecoded bytes
        self.body = bytearray()  # decoded, not yet split into events (or the JSON body)
        self.head_done = False
        self.chunked = False
        self.length = -1
        self.got = 0
        self.done = False
        self.close_after = False
        self.last_read = 0.0

    def feed(self, data: bytes, now: float) -> None:
        self.buf += data
        if not self.head_done:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i])
            del self.buf[:i + 4]
            self.head_done = True
            lines = head.split(b"\r\n")
            self.res.status = int(lines[0].split(b" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"content-length":
                    self.length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.close_after = True
        before = len(self.res.content)
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.buf
            self.got += len(self.buf)
            self.buf.clear()
            if 0 <= self.length <= self.got:
                self.done = True
        self._events(now)
        n = len(self.res.content) - before
        if n >= 2 and self.last_read and now - self.last_read > self.silence:
            self.res.coalesced += 1
        if n:
            self.last_read = now

    def _dechunk(self) -> None:
        buf = self.buf
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                return
            size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) >= i + 4:
                    del buf[:i + 4]
                    self.done = True
                return
            if len(buf) < i + 2 + size + 2:
                return
            self.body += buf[i + 2:i + 2 + size]
            del buf[:i + 2 + size + 2]

    def _events(self, now: float) -> None:
        res = self.res
        if self.proto == "json":
            if self.done:
                res.events = 1
                res.terminal = True
                res.content.append(now)
                res.first = res.first or now
                res.first_payload = bytes(self.body[:2000])
            return
        if self.proto == "sse":
            if b"\r" in self.body:
                self.body = bytearray(self.body.replace(b"\r\n", b"\n"))
            sep = b"\n\n"
        else:
            sep = b"\n"
        body = self.body
        start = 0
        while True:
            i = body.find(sep, start)
            if i < 0:
                break
            event = bytes(body[start:i])
            start = i + len(sep)
            if not event.strip():
                continue
            res.events += 1
            if self.proto == "sse":
                # OpenAI ends a stream with [DONE], AOG with an event saying finished
                if b"[DONE]" in event or (b'"finished"' in event and
                                          b'"finished":true' in event.replace(b" ", b"")):
                    res.terminal = True
                    continue
            elif b'"done":true' in event.replace(b" ", b""):
                res.terminal = True
                continue
            if b'"tok' in event:
                res.content.append(now)
                if not res.first:
                    res.first = now
                    res.first_payload = event
        if start:
            del body[:start]


async def _exchange(stream: trio.SocketStream, req: bytes, proto: str, res: Result,
                    silence: float) -> bool:
    """Send one request, read its response; True if the connection may be reused."""
    rd = _Reader(proto, res, silence)
    res.start = perf_counter()
    await stream.send_all(req)
    while not rd.done:
        data = await stream.receive_some(RECV)
        now = perf_counter()
        if not data:
            if rd.head_done and not rd.chunked and rd.length < 0:
                rd.done = True  # close-delimited body
                rd._events(now)
                break
            raise ValueError("connection closed before the response was complete")
        rd.feed(data, now)
    res.end = perf_counter()
    return not rd.close_after


def _judge(res: Result, proto: str, expect: int | None) -> None:
    if res.error:
        return
    if res.status != 200:
        res.error = f"HTTP {res.status}: {res.first_payload[:120]!r}"
    elif not res.terminal:
        res.error = "no terminal event ([DONE] / finished:true / done:true)"
    elif expect is not None and proto != "json" and len(res.content) != expect:
        res.error = f"{len(res.content)} content events, expected {expect}"
    elif proto == "json" and b'"tok' not in res.first_payload:
        res.error = "JSON answer without the stub's content"
    res.ok = not res.error


async def call(sut: System, proto: str, body: bytes, timeout: float = 60.0,
               expect: int | None = None, silence: float = 0.05) -> Result:
    """One request on a fresh connection (`Connection: close`), timed from the send.

    `expect`: the number of content events a complete stream has (checked when given);
    `silence`: a read that brings >= 2 content events after this long is counted in
    `Result.coalesced`."""
    res = Result()
    req = request_bytes(sut, proto, body)
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(HOST, sut.port)
        except OSError as exc:
            res.error = f"connect: {exc}"
            return res
        async with stream:
            try:
                await _exchange(stream, req, proto, res, silence)
            except (trio.BrokenResourceError, OSError, ValueError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
    if scope.cancelled_caught:
        res.error = f"timeout after {timeout:g} s"
    _judge(res, proto, expect)
    return res


class KeepAlive:
    """One persistent client connection (reconnects when the server closed it)."""

    def __init__(self, sut: System, timeout: float = 60.0) -> None:
        self.sut = sut
        self.timeout = timeout
        self.stream: trio.SocketStream | None = None

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None

    async def call(self, proto: str, body: bytes, expect: int | None = None,
                   silence: float = 0.05) -> Result:
        res = Result()
        req = request_bytes(self.sut, proto, body, keep_alive=True)
        reuse = False
        with trio.move_on_after(self.timeout) as scope:
            try:
                if self.stream is None:
                    self.stream = await trio.open_tcp_stream(HOST, self.sut.port)
                reuse = await _exchange(self.stream, req, proto, res, silence)
            except (trio.BrokenResourceError, OSError, ValueError) as exc:
                res.error = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            res.error = f"timeout after {self.timeout:g} s"
        if not reuse and self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None
        _judge(res, proto, expect)
        return res
