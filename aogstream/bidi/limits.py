"""How many WebSocket sessions each service may hold open at once.

A realtime session is the expensive thing a client can open for free: the
pocketsphinx plugin holds a decoder of ~50-90 MB and a share of a core for each one, and
nothing else bounds how many a client (or a page, or a script) opens. So each
serving process counts the open sessions per service and refuses the one over
`AOGSTREAM_MAX_REALTIME_SESSIONS` (`Config.max_realtime_sessions`, default 16: about
what two cores decode in real time, with headroom, and ~1.4 GB of pocketsphinx
decoders at most) with a clear error: a `task-failed` on AOG's realtime protocol,
`{"error": ...}` on the generic relay, then a close with 1013 (try again later). The
count is per serving process (`AOGSTREAM_WORKERS`); plugins that hold real resources
cap their own sessions too.

Counting is synchronous (one trio thread per process), so there is no window between
checking and taking a slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

CLOSE_TRY_AGAIN_LATER = 1013


class SessionLimit:
    """Open sessions per service; `limit` <= 0 means no cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    @contextlib.contextmanager
    def session(self, service: str) -> Iterator[bool]:
        """Yields True with a slot taken for the block, or False when `service` is full."""
        count = self.open.get(service, 0)
        if 0 < self.limit <= count:
            yield False
            return
        self.open[service] = count + 1
        try:
            yield True
        finally:
            left = self.open[service] - 1
            if left:
                self.open[service] = left
            else:
                del self.open[service]  # no entry left behind per service name

    def message(self, service: str) -> str:
        return (f"service {service!r} already has {self.limit} open WebSocket sessions, "
                f"the gateway's limit; retry when one ends, or raise "
                f"AOGSTREAM_MAX_REALTIME_SESSIONS (0 = no limit)")
