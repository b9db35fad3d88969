"""Wire agreements between our host and our SDK's plugins that AOG does not define.

AOG's host expects exactly one SSE event per `InvokeServiceStream` message, and AOG's
Go plugins send exactly that. Packing several events that are already waiting into one
message saves a gRPC message per event on both sides (a message costs far more CPU
than its bytes), so our host *offers* it in the call's metadata and our SDK packs only
when offered. An AOG host never sends the key, so it keeps getting one event per
message; an AOG plugin ignores the key, and our host decodes any number of events per
message anyway.
"""

from __future__ import annotations

import os

# gRPC metadata our host sends on InvokeServiceStream: "this host reads several SSE
# events from one message's chunk_data". The value is the most events it wants in one
# message (a decimal number).
BATCH_EVENTS_KEY = "x-aogstream-batch-events"
# What our host offers: enough to amortise a message, small enough that a burst is
# still handed to the client in a few writes.
HOST_BATCH_EVENTS = 64
# The SDK stops adding events to a message past this many bytes of chunk_data.
MAX_BATCH_BYTES = 64 * 1024

BATCH_OFFER: tuple[tuple[str, str], ...] = ((BATCH_EVENTS_KEY, str(HOST_BATCH_EVENTS)),)


def batch_limit(metadata: object) -> int:
    """How many events a plugin may pack into one message, from the call's metadata
    (`context.invocation_metadata()`): 1 when the host did not offer batching."""
    for item in metadata or ():  # type: ignore[attr-defined]
        key, value = item
        if key == BATCH_EVENTS_KEY:
            try:
                return max(1, min(int(value), 1024))
            except (TypeError, ValueError):
                return 1
    return 1


# ---- bidirectional sessions (InvokeServiceBidi) ---------------------------------------
#
# A realtime session carries a frame every 20 ms each way, one gRPC message per frame,
# and a message costs far more than a 640-byte frame. When several frames of one kind
# are already waiting to be written (the writer was busy with the previous message),
# they may go as one message whose `data` is the frames back to back and whose
# metadata lists their lengths. A lone frame always goes at once, on its own, exactly
# as AOG sends it.
#
# Negotiation, per call and per direction:
# * plugin → host: our host puts BATCH_FRAMES_KEY in the call's metadata ("I unpack");
#   our SDK then packs what plugin code sends while a write is in progress. An AOG
#   host never offers, so it keeps getting one frame per message.
# * host → plugin: our SDK, when offered, answers with BATCH_FRAMES_KEY in its initial
#   metadata ("I unpack too"); our host packs only after it has read that. AOG's Go
#   plugins never send it, so they keep getting one frame per message, byte for byte.

# call metadata (host's offer) and initial metadata (plugin's answer): the most frames
# the sender of the key reads from one message (a decimal number)
BATCH_FRAMES_KEY = "x-aogstream-batch-frames"
# the metadata key of a packed message: its frames' lengths in bytes, comma-separated
FRAME_LENGTHS_KEY = "x-aogstream-frames"


def _env_batch_frames() -> int:
    """AOGSTREAM_BIDI_BATCH_FRAMES: the most frames per message this process accepts
    and packs (default 64); 1 turns packing off in both directions (our host then
    offers nothing, so our SDK answers nothing)."""
    raw = os.environ.get("AOGSTREAM_BIDI_BATCH_FRAMES", "")
    try:
        return max(1, min(int(raw), 1024)) if raw else 64
    except ValueError:
        return 64


BATCH_FRAMES = _env_batch_frames()
BIDI_BATCH_OFFER: tuple[tuple[str, str], ...] = (
    ((BATCH_FRAMES_KEY, str(BATCH_FRAMES)),) if BATCH_FRAMES > 1 else ())


def frame_batch_limit(metadata: object) -> int:
    """How many frames the peer reads from one message, from the metadata it sent
    (a host's call metadata, a plugin's initial metadata); 1 when it said nothing,
    and never more than this process packs itself."""
    for item in metadata or ():  # type: ignore[attr-defined]
        key, value = item
        if key == BATCH_FRAMES_KEY:
            try:
                return max(1, min(int(value), BATCH_FRAMES))
            except (TypeError, ValueError):
                return 1
    return 1


def pack_frames(frames: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """Several frames of one kind as one message's `data` and `metadata`."""
    return b"".join(frames), {FRAME_LENGTHS_KEY: ",".join([str(len(f)) for f in frames])}


def unpack_frames(data: bytes, lengths: str) -> list[bytes] | None:
    """The frames of a packed message (`lengths` is its FRAME_LENGTHS_KEY value), or
    None when the lengths are not a list of sizes adding up to `data`: the message is
    then not a packed one and is delivered as it is."""
    try:
        sizes = [int(x) for x in lengths.split(",")]
    except ValueError:
        return None
    if sum(sizes) != len(data) or min(sizes) < 0:
        return None
    out: list[bytes] = []
    pos = 0
    view = memoryview(data)
    for n in sizes:
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out


class PackCounts:
    """How many packed messages this process wrote and read, and the frames they
    held: a debugging aid (tests read it to see that packing happened). Counted per
    packed message, never per frame."""

    __slots__ = ("frames_read", "frames_written", "read", "written")

    def __init__(self) -> None:
        self.written = self.frames_written = self.read = self.frames_read = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


PACK_COUNTS = PackCounts()
