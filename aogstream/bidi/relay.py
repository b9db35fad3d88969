"""Generic bidi relay: WebSocket frames ⇄ an Invocation, as AOG does for plugin
services exposed over WEBSOCKET. The plugin session opens with the first client
frame; a plugin failure becomes `{"error": "..."}` and a close, as AOG clients expect."""

from __future__ import annotations

import json

import trio

from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.gateway import Gateway, Route
from aogstream.invocation import Frame, Invocation, Mode

# the most client frames already waiting that are handed to the session together
BURST_FRAMES = 32


def to_frame(msg: str | bytes, metadata: dict[str, str] | None = None) -> Frame:
    if isinstance(msg, str):
        return Frame(msg.encode(), "text", metadata or {})
    return Frame(msg, "binary", metadata or {})


async def send_frame(ws: AsgiWebSocket, frame: Frame) -> None:
    if frame.kind == "text":
        await ws.send_text(frame.data.decode(errors="replace"))
    elif frame.kind == "close":
        await ws.close()
    elif frame.kind in ("ping", "pong"):
        return  # the server answers pings itself
    else:
        await ws.send_bytes(frame.data)


async def pump_client(ws: AsgiWebSocket, inv: Invocation, scope: trio.CancelScope) -> None:
    """Client → provider until the client leaves; then cancel the whole session
    (`scope`), which cancels the plugin's call. Check `ws.closed` afterwards. Frames
    already waiting behind one are handed on with it (see
    `AsgiWebSocket.receive_nowait`), so the session may pack them."""
    try:
        while True:
            burst = [to_frame(await ws.receive())]
            while len(burst) < BURST_FRAMES:
                try:
                    burst.append(to_frame(ws.receive_nowait()))
                except trio.WouldBlock:
                    break
            if len(burst) == 1:
                await inv.send(burst[0])
            else:
                await inv.send_many(burst)
    except Disconnected:
        scope.cancel()


async def serve_relay(ws: AsgiWebSocket, gateway: Gateway, route: Route, conn_id: str) -> None:
    try:
        first = await ws.receive()
    except Disconnected:
        return
    meta = {"ws_conn_id": conn_id}
    async with gateway.invoke(route, Mode.BIDI, b"", metadata=meta) as inv:
        await inv.send(to_frame(first, meta))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_client, ws, inv, nursery.cancel_scope)
            async for frame in inv.frames():
                await send_frame(ws, frame)
            nursery.cancel_scope.cancel()
        if ws.closed:
            return
        if inv.error is not None:
            await ws.send_text(json.dumps({"error": inv.error.message}))
        await ws.close()
