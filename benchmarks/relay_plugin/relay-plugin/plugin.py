"""relay-plugin: the benchmarks' plugin that relays chat to the stub engine.

A benchmark of the gateway should measure the gateway, not a plugin's own work. This
plugin does the least a real remote plugin does: it forwards the request body (already
in the provider's flavor, OpenAI or Ollama, since the gateway converts to the manifest's
`config_ref`) to `benchmarks/stub_engine.py` and relays each answer event as one chunk.

- Address of the stub: `AOGSTREAM_BENCH_STUB=host:port` in the environment (the gateway
  passes its environment to plugins). Without it every call fails with a message saying
  so.
- Flavor: the manifest's `config_ref` — `openai:chat` → `POST /v1/chat/completions`
  (SSE: each `data:` payload, `[DONE]` included, becomes one chunk, which the SDK frames
  as `data: <payload>`); `ollama:chat` → `POST /api/chat` (NDJSON: one chunk per line).
  The Ollama twin (benchmarks/relay_plugin_ollama/) runs this same file.
- Connections: plain asyncio streams with a small HTTP/1.1 client (Content-Length or
  chunked responses), kept alive in an idle pool, so there is no per-call connect and no
  HTTP library in the measured CPU. A connection is reused only after a complete answer.
- Cancellation: when the host cancels the call (the client went away), the engine
  connection is aborted at once (`transport.abort()`), which the stub records as a peer
  close — that is what the cancellation benchmark times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aogstream import manifest as m
from aogstream.sdk import LocalPluginProvider, StreamablePlugin, serve

ENV = "AOGSTREAM_BENCH_STUB"
PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}
MAX_IDLE = 512  # pooled idle connections kept
MAX_LINE = 1 << 20
CONNECT_TIMEOUT = 5.0


def _fail(code: int, msg: str) -> m.PluginError:
    return m.PluginError(code, msg, "")


class Conn:
    """One HTTP/1.1 connection to the stub."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def abort(self) -> None:
        self.writer.transport.abort()


class Upstream:
    """The stub's address and a pool of idle keep-alive connections."""

    def __init__(self) -> None:
        self.idle: list[Conn] = []
        self._addr: tuple[str, int] | None = None

    def addr(self) -> tuple[str, int]:
        if self._addr is None:
            raw = os.environ.get(ENV, "")
            host, _, port = raw.rpartition(":")
            if not host or not port.isdigit():
                raise _fail(m.ERR_CODE_UNAVAILABLE,
                            f"set {ENV}=host:port (the stub engine's address) in the "
                            f"gateway's environment; got {raw!r}")
            self._addr = (host, int(port))
        return self._addr

    async def acquire(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.abort()
        host, port = self.addr()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        except (OSError, TimeoutError) as exc:
            raise _fail(m.ERR_CODE_UNAVAILABLE,
                        f"cannot reach the stub engine at {host}:{port} ({exc}); is "
                        f"benchmarks/stub_engine.py running there?") from None
        return Conn(reader, writer)

    def release(self, conn: Conn) -> None:
        if len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            conn.abort()

    async def send(self, conn: Conn, path: str, body: bytes) -> tuple[int, bool, int]:
        """Write the request; read the head: (status, chunked, content-length)."""
        host, port = self.addr()
        conn.writer.write(b"POST %b HTTP/1.1\r\nHost: %b:%d\r\ncontent-type: application/json"
                          b"\r\ncontent-length: %d\r\n\r\n%b"
                          % (path.encode(), host.encode(), port, len(body), body))
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        chunked, length = False, -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value)
        return status, chunked, length


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The data of each HTTP chunk, until the last (zero-size) one."""
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readline()  # the CRLF after the last chunk (no trailers)
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


class Relay(LocalPluginProvider, StreamablePlugin):
    def __init__(self) -> None:
        self.up = Upstream()
        self._flavor = ""

    def flavor(self) -> str:
        if not self._flavor:
            refs = [s.config_ref for s in (self.manifest.services if self.manifest else [])]
            self._flavor = next((r.partition(":")[0] for r in refs if r), "openai")
        return self._flavor

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        conn = await self.up.acquire()
        done = False
        try:
            status, chunked, length = await self.up.send(conn, PATHS[self.flavor()], request)
            if chunked:
                body = b"".join([c async for c in _chunks(conn.reader)])
            else:
                body = await conn.reader.readexactly(max(length, 0))
            done = True
        finally:
            if done:
                self.up.release(conn)
            else:
                conn.abort()
        if status != 200:
            raise _fail(m.ERR_CODE_INVALID_ARGUMENT,
                        f"stub engine answered {status}: {body[:300].decode(errors='replace')}")
        return body

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[bytes]:
        flavor = self.flavor()
        conn = await self.up.acquire()
        done = False
        try:
            status, chunked, length = await self.up.send(conn, PATHS[flavor], request)
            if status != 200 or not chunked:
                body = await conn.reader.readexactly(max(length, 0))
                done = True
                raise _fail(m.ERR_CODE_INVALID_ARGUMENT,
                            f"stub engine answered {status}: "
                            f"{body[:300].decode(errors='replace')}")
            sep = b"\n\n" if flavor == "openai" else b"\n"
            buf = b""
            async for data in _chunks(conn.reader):
                buf = buf + data if buf else data
                while True:
                    i = buf.find(sep)
                    if i < 0:
                        break
                    event, buf = buf[:i], buf[i + len(sep):]
                    if flavor == "openai":
                        for line in event.split(b"\n"):
                            if line.startswith(b"data:"):
                                yield line[5:].lstrip()
                    elif event.strip():
                        yield event
            done = True
        finally:
            # cancelled (client gone) or failed: abort the engine connection at once
            if done:
                self.up.release(conn)
            else:
                conn.abort()

    async def health_check(self) -> None:
        self.up.addr()

    async def start_engine(self, mode: str) -> None:
        """The stub engine is started by the benchmark, not by the plugin."""

    async def stop_engine(self) -> None:
        """Idle connections go; the stub itself belongs to the benchmark."""
        for conn in self.up.idle:
            conn.abort()
        self.up.idle.clear()

    async def check_engine(self) -> bool:
        return True


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve(Relay())
