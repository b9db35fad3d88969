"""Raw-ASGI pieces every hot route needs (AOG services and the flavor front doors).

Raw ASGI has no safety net, so these do what a framework would: bound the body,
notice a client that hangs up (a send after a disconnect is silently dropped and the
provider would run on), parse the JSON object with errors that say where, and shield
the final send (or hypercorn never closes the connection).
"""

from __future__ import annotations

import json
from typing import Any

import trio

from aogstream import errors
from aogstream.gateway import Route

JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


def header(scope: dict[str, Any], name: bytes) -> bytes:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return b""


# An answer sent before the request body was read (unknown service, wrong method, body
# over the limit) must end the connection: the unread body is still on the socket, and
# a client that reuses the connection would see it closed under its next request.
CLOSE_AFTER = [(b"connection", b"close")]


async def send_json(send: Any, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON response; the last send is shielded so the connection closes."""
    headers = JSON_HEADERS + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": body, "more_body": False})


def served_by_headers(route: Route) -> list[tuple[bytes, bytes]]:
    """Which provider row and plugin served the request, on every answer."""
    return [(b"x-aogstream-provider", route.provider_name.encode()),
            (b"x-aogstream-plugin", route.provider.name.encode())]


async def read_body(scope: dict[str, Any], receive: Any, max_body: int) -> bytes:
    """The whole request body, refused (413) past `max_body`: by its declared length
    before reading, else as soon as the bytes read pass the limit."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > max_body:
        raise errors.GatewayError(
            errors.BODY_TOO_LARGE,
            f"request body of {int(declared)} bytes is over the {max_body} byte "
            f"limit (AOGSTREAM_MAX_BODY_BYTES); send smaller requests",
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body = msg.get("body", b"")
        size += len(body)
        if size > max_body:
            raise errors.GatewayError(
                errors.BODY_TOO_LARGE,
                f"request body is over the {max_body} byte limit "
                f"(AOGSTREAM_MAX_BODY_BYTES); send smaller requests",
            )
        chunks.append(body)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def parse_object(body: bytes, example: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong (and where)."""
    if not body.strip():
        raise errors.GatewayError(errors.BAD_JSON,
                                  f"request body is empty; send a JSON object, {example}")
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise errors.GatewayError(
            errors.BAD_JSON, f"request body is not valid JSON{where}: "
            f"{getattr(exc, 'msg', str(exc))}") from None
    if not isinstance(obj, dict):
        raise errors.GatewayError(errors.BAD_JSON,
                                  "request body must be a JSON object, not "
                                  f"{type(obj).__name__}")
    return obj


async def watch_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    """A client that hangs up cancels the provider call (raw ASGI has no one else to)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            scope.cancel()
            return
