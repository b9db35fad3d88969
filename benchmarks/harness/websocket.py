"""A lean WebSocket client on trio raw sockets and wsproto (the state machine hypercorn
itself uses), so the client's cost per frame is small and the same for every system.

`receive()` returns whole messages stamped with `time.monotonic()` at the read that
completed them. `abort()` drops the TCP connection without a close frame (a client that
crashes or loses its network); `aclose()` says goodbye first.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from .layout import HOST

READ_SIZE = 65536


class WsError(Exception):
    """The WebSocket could not be opened or broke; the message says what happened."""


@dataclass
class WsClient:
    """One client WebSocket over a trio socket stream (see the module docstring)."""

    stream: trio.SocketStream
    ws: WSConnection
    pending: list[tuple[float, str | bytes]] = field(default_factory=list)
    closed: bool = False
    _text: list[str] = field(default_factory=list)
    _binary: bytearray = field(default_factory=bytearray)

    @classmethod
    async def connect(cls, port: int, path: str, host: str = HOST) -> WsClient:
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        client = cls(stream, ws)
        try:
            await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=path)))
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise WsError(f"{host}:{port}{path} closed the connection during the "
                                  "WebSocket handshake")
                ws.receive_data(data)
                accepted, reply = client._absorb(time.monotonic())
                if reply:
                    await stream.send_all(reply)
                if accepted:
                    return client
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise

    def _absorb(self, now: float) -> tuple[bool, bytes]:
        """Turn wsproto events into `pending` messages. Returns (handshake accepted,
        bytes to send back: pongs and the close reply)."""
        accepted = False
        out = bytearray()
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                accepted = True
            elif isinstance(ev, RejectConnection | RejectData):
                raise WsError(f"the server refused the WebSocket: {ev!r}")
            elif isinstance(ev, TextMessage):
                self._text.append(ev.data)
                if ev.message_finished:
                    self.pending.append((now, "".join(self._text)))
                    self._text.clear()
            elif isinstance(ev, BytesMessage):
                self._binary += ev.data
                if ev.message_finished:
                    self.pending.append((now, bytes(self._binary)))
                    self._binary.clear()
            elif isinstance(ev, CloseConnection):
                self.closed = True
                with contextlib.suppress(Exception):
                    out += self.ws.send(ev.response())
            elif isinstance(ev, Ping):
                out += self.ws.send(ev.response())
        return accepted, bytes(out)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def _fill(self) -> None:
        """Read until at least one whole message is pending. Raises WsError if the
        server closed the connection."""
        while not self.pending:
            if self.closed:
                raise WsError("the server closed the WebSocket")
            data = await self.stream.receive_some(READ_SIZE)
            now = time.monotonic()
            if not data:
                self.closed = True
                raise WsError("the server closed the connection")
            self.ws.receive_data(data)
            _, reply = self._absorb(now)
            if reply:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(reply)

    async def receive(self) -> list[tuple[float, str | bytes]]:
        """The next whole messages (at least one), each with its arrival time."""
        await self._fill()
        out, self.pending = self.pending, []
        return out

    async def receive_text(self) -> tuple[float, str]:
        """The next text message (binary ones are skipped)."""
        while True:
            await self._fill()
            t, msg = self.pending.pop(0)
            if isinstance(msg, str):
                return t, msg

    async def aclose(self) -> None:
        """A polite close: a close frame, then the TCP connection."""
        with trio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
            await self.stream.aclose()
        self.closed = True

    async def abort(self) -> None:
        """Drop the TCP connection at once, no close frame."""
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        self.closed = True
