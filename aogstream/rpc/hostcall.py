"""The wire of host calls: what a plugin sends to reach the gateway's own services.

A plugin process finds, in its environment (`HOST_SOCKET_ENV`), the path of a unix
socket the gateway created for that plugin alone when it launched it (in a 0700
folder, the socket itself 0600). Whoever connects there *is* that plugin: the
gateway binds each socket to one plugin id, so identity comes from the channel and
anything a request says about who sent it is ignored.

One connection carries one call, which keeps cancellation trivial: the plugin closes
the connection and the gateway cancels the call; the gateway closes it once it has
answered. Each direction sends one frame: a 4-byte big-endian length, then that many
bytes of UTF-8 JSON.

    request:  {"op": "complete" | "complete_structured" | "embed", "args": {...}}
    answer:   {"ok": true, "result": {...}}
              {"ok": false, "error": {"code": ERROR_*, "message": "...", "key": "..."}}

Both sides (the gateway's `host.llm_service`, the SDK's `sdk.llm`) import this
module and nothing else of each other.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HOST_SOCKET_ENV = "AOGSTREAM_HOST_SOCKET"
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 24 * 1024 * 1024   # images included (base64)
MAX_ANSWER_BYTES = 64 * 1024 * 1024    # embeddings of a full batch

OPS = ("complete", "complete_structured", "embed")

# Stable error codes (the SDK turns them into exceptions).
ERROR_TRUST_DENIED = "trust_denied"     # never retried; `key` is the config key to set
ERROR_INVALID_INPUT = "invalid_input"   # the plugin's request is wrong (ValueError)
ERROR_TOO_LARGE = "too_large"           # a size limit (ValueError)
ERROR_NO_ROUTE = "no_route"             # nothing can serve it (configure a provider)
ERROR_RECURSION = "recursion"           # it would re-enter a plugin of its own chain
ERROR_TIMEOUT = "timeout"
ERROR_UPSTREAM = "upstream"             # the provider failed (after fallback)
ERROR_CANCELLED = "cancelled"           # the call's request was cancelled (audit, SDK side)
ERROR_INTERNAL = "internal"


class FrameError(Exception):
    """A frame that is too large, cut short or not a JSON object."""


def encode(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    n: int
    (n,) = HEADER.unpack(header)
    if n > limit:
        raise FrameError(f"frame of {n} bytes is larger than the limit of {limit} bytes")
    return n


def decode(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    return obj
