"""A small WebSocket object over raw ASGI events, so bidi handlers stay readable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from aogstream.asgi_types import Receive, Send


class Disconnected(Exception):
    """The client closed the socket (or the connection dropped)."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(f"websocket closed ({code})")
        self.code = code


class AsgiWebSocket:
    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.closed = False
        # the server's queue of ASGI events, when `receive` is a trio channel's (as
        # hypercorn's is), or a wrapper's that offers it (`observe.middleware`): lets
        # `receive_nowait` take what is already waiting
        queue = getattr(receive, "__self__", None)
        self._receive_nowait: Callable[[], Any] | None = (
            queue.receive_nowait if isinstance(queue, trio.MemoryReceiveChannel)
            else getattr(receive, "receive_nowait", None))

    async def accept(self, subprotocol: str | None = None) -> None:
        """Accept the upgrade, selecting `subprotocol` when given (a browser that offered
        subprotocols fails the handshake unless one is selected)."""
        if subprotocol:
            await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
        else:
            await self._send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        """The next text (str) or binary (bytes) message; Disconnected at the end."""
        while True:
            got = self._message(await self._receive())
            if got is not None:
                return got

    def receive_nowait(self) -> str | bytes:
        """`receive` of a message that is already waiting, else trio.WouldBlock (also
        when the server's queue cannot be looked into). A burst of frames is then
        handed on together, so the plugin's session can pack them into one message
        (`aogstream.rpc.wire`), and each skips a schedule point."""
        nowait = self._receive_nowait
        if nowait is None:
            raise trio.WouldBlock
        while True:
            try:
                msg = nowait()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise trio.WouldBlock from None  # `receive` reports the end
            got = self._message(msg)
            if got is not None:
                return got

    def _message(self, msg: Mapping[str, Any]) -> str | bytes | None:
        """A received message's text or bytes; None for other ASGI events (skipped);
        Disconnected at the end."""
        kind = msg["type"]
        if kind == "websocket.receive":
            text = msg.get("text")
            return text if text is not None else (msg.get("bytes") or b"")
        if kind == "websocket.disconnect":
            self.closed = True
            raise Disconnected(msg.get("code"))
        return None

    async def send_text(self, text: str) -> None:
        if not self.closed:
            await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        if not self.closed:
            await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
