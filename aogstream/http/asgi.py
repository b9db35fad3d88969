"""Raw-ASGI pieces every hot route needs (AOG services and the flavor front doors).

Raw ASGI has no safety net, so these do what a framework would: bound the body,
notice a client that hangs up (a send after a disconnect is silently dropped and the
provider would run on), parse the JSON object with errors that say where, and shield
the final send (or hypercorn never closes the connection).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qs

import trio

from aogstream import errors, safejson
from aogstream.asgi_types import Headers, Receive, Scope, Send
from aogstream.gateway import Route

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected while we were reading its request."""


def header(scope: Scope, name: bytes) -> bytes:
    """The first value of request header `name` (lower-case), or b"" when absent."""
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for k, v in headers:
        if k == name:
            return v
    return b""


# An answer sent before the request body was read (unknown service, wrong method, body
# over the limit) must end the connection: the unread body is still on the socket, and
# a client that reuses the connection would see it closed under its next request.
CLOSE_AFTER: Headers = [(b"connection", b"close")]


async def send_json(send: Send, status: int, body: bytes,
                    extra: Headers | None = None) -> None:
    """A complete JSON response; the last send is shielded so the connection closes."""
    headers = JSON_HEADERS + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    with trio.CancelScope(shield=True):
        await send({"type": "http.response.body", "body": body, "more_body": False})


def served_by_headers(route: Route) -> Headers:
    """Which provider row and plugin served the request, on every answer."""
    return [(b"x-aogstream-provider", route.provider_name.encode()),
            (b"x-aogstream-plugin", route.provider.name.encode())]


def _too_large(max_body: int) -> errors.GatewayError:
    return errors.GatewayError(
        errors.BODY_TOO_LARGE,
        f"request body is over the {max_body} byte limit "
        f"(AOGSTREAM_MAX_BODY_BYTES); send smaller requests",
    )


async def read_body(scope: Scope, receive: Receive, max_body: int,
                    timeout: float | None = None, min_rate: int = 64 * 1024) -> bytes:
    """The whole request body, refused (413) past `max_body`: by its declared length
    before reading, else as soon as the bytes read pass the limit.

    With `timeout`, the body must have arrived `timeout` seconds after we started
    reading it, plus one second per `min_rate` bytes received so far (408 otherwise).
    hypercorn times out the request head but not the body, and its `read_timeout`
    would also cut quiet streams, so the deadline lives here: a client trickling a
    body byte by byte no longer holds its connection (and a file descriptor) forever,
    while a large upload that keeps moving is never cut."""
    declared = header(scope, b"content-length")
    if declared.isdigit() and int(declared) > max_body:
        raise errors.GatewayError(
            errors.BODY_TOO_LARGE,
            f"request body of {int(declared)} bytes is over the {max_body} byte "
            f"limit (AOGSTREAM_MAX_BODY_BYTES); send smaller requests",
        )
    chunks: list[bytes] = []
    size = 0
    started = trio.current_time()
    # a body already queued whole (most requests: it came with the head, as hypercorn's
    # body message and its empty last one) is taken at once, without the deadline's
    # cancel scope or a schedule point; otherwise what was there starts the loop below
    nowait = getattr(receive, "receive_nowait", None)
    while nowait is not None:
        try:
            msg = nowait()
        except trio.WouldBlock:
            break
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body: bytes = msg.get("body", b"")
        size += len(body)
        if size > max_body:
            raise _too_large(max_body)
        if not msg.get("more_body", False):
            if not chunks:
                return body
            chunks.append(body)
            return b"".join(chunks)
        chunks.append(body)
    with trio.CancelScope() as deadline:
        if timeout is not None:
            deadline.deadline = started + timeout + size / max(1, min_rate)
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone
            body = msg.get("body", b"")
            size += len(body)
            if size > max_body:
                raise _too_large(max_body)
            chunks.append(body)
            if not msg.get("more_body", False):
                return b"".join(chunks)
            if timeout is not None:
                deadline.deadline = started + timeout + size / max(1, min_rate)
    raise errors.GatewayError(
        errors.BODY_TIMEOUT,
        f"the request body did not arrive in time ({size} bytes in "
        f"{trio.current_time() - started:.1f} s; the limit is {timeout or 0:g} s plus 1 s per "
        f"{min_rate} bytes, AOGSTREAM_BODY_TIMEOUT); send the whole body without pausing")


def parse_object(body: bytes, example: str) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong (and where): bad JSON,
    bad UTF-8, nesting, huge numbers and lone surrogates included (`safejson`)."""
    if not body.strip():
        raise errors.GatewayError(errors.BAD_JSON,
                                  f"request body is empty; send a JSON object, {example}")
    try:
        return safejson.loads_object(body)
    except safejson.JSONInputError as exc:
        raise errors.GatewayError(errors.BAD_JSON, str(exc)) from None


# Fields every chat/generate/embed flavor (AOG, OpenAI, Ollama, ...) gives the same type;
# a wrong one is the client's mistake, answered here rather than by a plugin's crash.
_NUMBER_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty",
                  "repeat_penalty")
_INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_k",
                   "num_predict")


def check_fields(obj: dict[str, Any], service: str) -> None:
    """A 400 naming the first common field whose type is wrong (`model` a string,
    `stream` a boolean, `messages` a list of objects, sampling options numbers, ...);
    fields a flavor adds are its templates' and the provider's business."""
    def bad(field: str, wanted: str) -> errors.GatewayError:
        return errors.GatewayError(errors.BAD_REQUEST, f"'{field}' must be {wanted}, not "
                                   f"{safejson.type_name(obj[field])}")

    for field, kind, wanted in (("model", str, "a string (the model's name)"),
                                ("stream", bool, "true or false"),
                                ("hybrid_policy", str, "a string"),
                                ("options", dict, "an object")):
        if obj.get(field) is not None and not isinstance(obj[field], kind):
            raise bad(field, wanted)
    for field in _NUMBER_FIELDS:
        value = obj.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad(field, "a number")
    for field in _INTEGER_FIELDS:
        value = obj.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad(field, "an integer")
    if service == "chat" and obj.get("messages") is not None:
        messages = obj["messages"]
        if not isinstance(messages, list):
            raise bad("messages", "a list of {role, content} objects")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise errors.GatewayError(
                    errors.BAD_REQUEST, f"'messages[{i}]' must be a {{role, content}} "
                    f"object, not {safejson.type_name(msg)}")
            if msg.get("role") is not None and not isinstance(msg["role"], str):
                raise errors.GatewayError(
                    errors.BAD_REQUEST, f"'messages[{i}].role' must be a string such as "
                    f"\"user\", not {safejson.type_name(msg['role'])}")


def query_object(scope: Scope) -> dict[str, list[str]]:
    """A GET's query string as `{key: [values]}` (AOG's way), or a 400 when it is not
    UTF-8 (percent-escapes that are not UTF-8 become U+FFFD, as everywhere)."""
    try:
        query = scope.get("query_string", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise errors.GatewayError(errors.BAD_REQUEST, "the query string is not UTF-8; "
                                  "percent-encode it") from None
    return dict(parse_qs(query, keep_blank_values=True))


class ClientWatch:
    """The serving loop's word that a request's client hung up, without a task per
    request waiting on `receive()` for it: the server (`serving.hypercorn_serve`) makes
    one per HTTP request, says `client_left` as it queues the `http.disconnect`, and
    the request's task finds it in `CLIENT_WATCH`. Where no server made one (another
    ASGI server, a test's app), `watch_disconnect` is the way."""

    __slots__ = ("_scopes", "gone")

    def __init__(self) -> None:
        self.gone = False
        self._scopes: set[trio.CancelScope] = set()

    def client_left(self) -> None:
        """The client hung up: cancel what is watched (and what will be)."""
        self.gone = True
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def cancelling(self, scope: trio.CancelScope) -> Iterator[None]:
        """Cancel `scope` if the client hangs up while the block runs (or already has)."""
        if self.gone:
            scope.cancel()
        self._scopes.add(scope)
        try:
            yield
        finally:
            self._scopes.discard(scope)


CLIENT_WATCH: ContextVar[ClientWatch | None] = ContextVar("aogstream_client_watch",
                                                           default=None)


async def watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """A client that hangs up cancels the provider call (raw ASGI has no one else to)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            scope.cancel()
            return
