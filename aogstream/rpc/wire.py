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
