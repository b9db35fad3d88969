"""The ASGI types every raw-ASGI layer shares (http/, sse/, bidi/): one definition.

Shaped like Starlette's: a scope and each event are string-keyed mappings, because the
routes read a handful of keys from events of many kinds (`http.request`,
`websocket.receive`, `http.disconnect`, ...) and build the ones they send as dict
literals; hypercorn's per-event TypedDicts would make every such read a union
narrowing without catching more than the names here do. It lives apart from `http/`
so that `sse/` and `bidi/`, which sit below it, need not import upwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

type Scope = MutableMapping[str, Any]
"""A connection's scope: `type`, `path`, `method`, `headers`, `query_string`, ..."""

type Message = MutableMapping[str, Any]
"""One ASGI event, received or sent: its `type` says which keys it has."""

type Receive = Callable[[], Awaitable[Message]]
type Send = Callable[[Message], Awaitable[None]]
type ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

type Headers = list[tuple[bytes, bytes]]
"""Response headers as ASGI sends them: lower-case names, raw bytes."""
