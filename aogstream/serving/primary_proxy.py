"""What a worker process does not serve itself goes to the primary, unchanged: the
management API, health, the plugin list (the primary is the one writer and the one
source of truth). A worker reaches it over the primary's private unix socket."""

from __future__ import annotations

import httpx
import trio

from aogstream import errors
from aogstream.asgi_types import Receive, Scope, Send
from aogstream.config import Config
from aogstream.http.asgi import CLOSE_AFTER, ClientGone, read_body, send_json, watch_disconnect

# headers that describe one connection, not the message: never forwarded either way
IDLE_EXPIRY_S = 2.0  # below hypercorn's keep_alive_timeout (5 s) on the primary's socket
IDEMPOTENT = {"GET", "HEAD", "OPTIONS"}  # safe to send again when the connection broke
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
              b"proxy-connection", b"trailer", b"content-length"}


class PrimaryProxy:
    """Everything a worker does not serve itself goes to the primary, unchanged
    (management, health, plugin list; streamed answers such as model-pull progress
    are relayed as they come)."""

    def __init__(self, socket_path: str, cfg: Config) -> None:
        self.cfg = cfg
        self.max_body = cfg.max_body_bytes
        # an idle pooled connection is dropped well before the primary's hypercorn closes
        # it (keep_alive_timeout, 5 s): reusing one the primary is closing at that very
        # moment is reset, and the client would get a 503 for nothing
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            limits=httpx.Limits(keepalive_expiry=IDLE_EXPIRY_S),
            base_url="http://aogstream-primary", timeout=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            body = await read_body(scope, receive, self.max_body, self.cfg.body_timeout,
                                   self.cfg.body_min_rate)
        except errors.GatewayError as err:
            await send_json(send, err.status, err.body(), CLOSE_AFTER)
            return
        except ClientGone:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope)
            await self._forward(scope, body, send)
            nursery.cancel_scope.cancel()

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = self.client.build_request(scope["method"], target.decode("latin-1"),
                                            headers=headers, content=body)
        try:
            try:
                resp = await self.client.send(request, stream=True)
            except httpx.TransportError:
                if scope["method"] not in IDEMPOTENT:
                    raise
                # a reset on a reused connection, before any answer: once more, fresh
                resp = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            err = errors.GatewayError(errors.PLUGIN_UNAVAILABLE,
                                      f"the gateway's primary process is not reachable ({exc})"
                                      "; it may be restarting, retry in a moment")
            await send_json(send, err.status, err.body())
            return
        try:
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(k, v) for k, v in resp.headers.raw
                                    if k.lower() not in HOP_BY_HOP]})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            with trio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with trio.CancelScope(shield=True):
                await resp.aclose()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
