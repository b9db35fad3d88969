"""The lane: a plain framed unix socket beside a plugin's gRPC one, our host ⇄ our SDK.

Measured on the relay benchmarks, a call through gRPC costs far more than the work it
carries: in the gateway each message crosses to grpc.aio's thread and back (a syscall
and a GIL hand-over each way) and HTTP/2 frames it; in the plugin grpc.aio's server
does the same in reverse. A bare gRPC echo alone costs about three times a direct
WebSocket server per realtime frame, so no tuning of the bridge can bring a relayed
frame or a non-stream request near the cost of the HTTP stack itself. The lane carries
the same protobuf messages of the same three rpcs (`LANE_METHODS`) over a socket trio
and asyncio read directly: no thread, no HTTP/2, one write per message or per burst.

Negotiation (AOG defines none of this, so neither side assumes it):
* our host offers the lane by setting `LANE_ENV`=`LANE_OFFER` when it starts a plugin;
* our SDK, when offered and listening on a unix socket, also listens on `LANE_NAME`
  in the same private folder *before* printing the handshake line;
* our host (and every serving process that dials the plugin) uses the lane when that
  file exists beside the plugin's socket (`lane_path`). AOG's Go plugins never create
  it, AOG's host never offers it: both keep speaking gRPC only, byte for byte.
Every other rpc (health, models, engines, auth) stays on gRPC.

Wire format, per connection, one call at a time (like HTTP/1.1 keep-alive): frames
of `HEADER` (payload length, u32 big-endian, then one kind byte) and the payload.
* host → plugin: `OPEN` (JSON `{"method", "metadata": [[k, v], ...], "timeout"}`,
  timeout in seconds or null), then request messages (`MSG`, protobuf bytes), then
  `HALF_CLOSE` once it sends no more;
* plugin → host: optionally `HEADERS` (JSON `[[k, v], ...]`, the initial metadata),
  response messages (`MSG`), and `END` (JSON `{"code", "details"}`, a gRPC status
  name such as "OK" or "UNIMPLEMENTED") after which the connection takes the next call.
  The plugin may end a call before the host is done sending (a refused `OPEN`, a
  handler that returns early, a deadline): `MSG` and `HALF_CLOSE` frames that reach it
  while no call is open are that call's and are dropped, so the host may write
  `OPEN`, request and `HALF_CLOSE` in one go and needs only wait for `END`.
The host cancels a call by closing its connection (the plugin cancels the handler at
once, as a cancelled gRPC call would); a plugin that dies closes it too, which the
host reports as "UNAVAILABLE". Nothing here does I/O: this module is the codec and the
agreements; host/lane.py and sdk/lane_server.py are the two ends.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Final

LANE_ENV: Final = "AOGSTREAM_LANE"
LANE_OFFER: Final = "1"
LANE_NAME: Final = "lane.sock"
# the only rpcs that travel on the lane (method names of protocol.ProviderService)
LANE_METHODS: Final = frozenset({"InvokeService", "InvokeServiceStream", "InvokeServiceBidi"})

HEADER: Final = struct.Struct(">IB")
MAX_PAYLOAD: Final = 2**31 - 1  # gRPC's own ceiling, as the gRPC side is configured

OPEN: Final = ord("O")
MSG: Final = ord("M")
HALF_CLOSE: Final = ord("H")
HEADERS: Final = ord("I")
END: Final = ord("E")
KINDS: Final = frozenset({OPEN, MSG, HALF_CLOSE, HEADERS, END})

type Metadata = list[tuple[str, str]]


class LaneProtocolError(Exception):
    """Bytes on the lane that are not a frame this codec knows (a peer bug, or not a
    lane at all): the connection must be closed, its call fails."""


def lane_path(network: str, address: str) -> str | None:
    """Where the lane of a plugin listening on (`network`, `address`) would be: beside
    its unix socket; None for a TCP plugin (no private folder, no lane)."""
    if network != "unix":
        return None
    return os.path.join(os.path.dirname(address), LANE_NAME)


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame, header and payload."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"lane message of {len(payload)} bytes is over {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), kind) + payload


def open_frame(method: str, metadata: Metadata | tuple[tuple[str, str], ...] = (),
               timeout: float | None = None) -> bytes:
    body = {"method": method, "metadata": [list(kv) for kv in metadata], "timeout": timeout}
    return frame(OPEN, json.dumps(body, separators=(",", ":")).encode())


def end_frame(code: str = "OK", details: str = "") -> bytes:
    return frame(END, json.dumps({"code": code, "details": details},
                                 separators=(",", ":")).encode())


def headers_frame(metadata: Metadata | tuple[tuple[str, str], ...]) -> bytes:
    return frame(HEADERS, json.dumps([list(kv) for kv in metadata],
                                     separators=(",", ":")).encode())


# the frames of the most common call, a unary rpc's answer, built once
END_OK: Final = end_frame()


def parse_open(payload: bytes) -> tuple[str, Metadata, float | None]:
    """An `OPEN` payload → (method, metadata, timeout)."""
    try:
        body = json.loads(payload)
        method = body["method"]
        metadata = [(str(k), str(v)) for k, v in body.get("metadata") or ()]
        timeout = body.get("timeout")
        if not isinstance(method, str) or not (timeout is None
                                               or isinstance(timeout, int | float)):
            raise TypeError
    except (ValueError, TypeError, KeyError) as exc:
        raise LaneProtocolError(f"bad OPEN frame: {exc}") from None
    return method, metadata, (float(timeout) if timeout is not None else None)


def parse_end(payload: bytes) -> tuple[str, str]:
    """An `END` payload → (status code name, details)."""
    try:
        body: Any = json.loads(payload)
        return str(body["code"]), str(body.get("details") or "")
    except (ValueError, TypeError, KeyError) as exc:
        raise LaneProtocolError(f"bad END frame: {exc}") from None


def parse_headers(payload: bytes) -> Metadata:
    try:
        return [(str(k), str(v)) for k, v in json.loads(payload)]
    except (ValueError, TypeError) as exc:
        raise LaneProtocolError(f"bad HEADERS frame: {exc}") from None


class FrameDecoder:
    """Frames out of a byte stream that arrives in arbitrary pieces.

    `feed` what was read, then take frames with `next` until it returns None (a frame
    is still incomplete). Pure and synchronous, so both ends (trio and asyncio) share it.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()  # everything before was taken: start over, no copy
            self._pos = 0
        self._buf += data

    def next(self) -> tuple[int, bytes] | None:
        """The next complete frame as (kind, payload), or None."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        size, kind = HEADER.unpack_from(buf, pos)
        if kind not in KINDS:
            raise LaneProtocolError(f"unknown lane frame kind {kind!r}")
        end = pos + 5 + size
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + 5:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
            if end > 1 << 16 and end > len(buf) // 2:  # drop what was read, now and then
                del buf[:end]
                self._pos = 0
        return kind, payload

    @property
    def pending(self) -> int:
        """Bytes fed and not yet returned as frames."""
        return len(self._buf) - self._pos
