"""What every serving process sets up once it serves: the stop signals and the garbage
collector's policy (the primary, a worker and the single process share this one copy).

**Signals.** SIGINT and SIGTERM set one `trio.Event` (`stop_on_signal`); hypercorn
drains on it (graceful shutdown), then the process stops its workers or plugins.

**The collector.** Collection pauses, not CPU, set the stream tail, so once a process
has started (`tune_gc`):

- everything allocated at start-up (modules, protos, the app, the routing table) lives
  as long as the process, so it is frozen out of every later collection (`gc.freeze`);
- the young generation is collected after 50,000 net allocations instead of 700, the
  older ones after 50 and 1,000 of those (`THRESHOLDS`).

The plugin SDK (`sdk/server.py`) keeps its own copy of the thresholds: `sdk/` may
import only `rpc/` and the manifest, and a plugin runs asyncio, not trio.
"""

from __future__ import annotations

import gc
import logging
import signal

import trio

log = logging.getLogger("aogstream")

# (young, middle, old): see the module docstring
THRESHOLDS = (50_000, 50, 1000)


def tune_gc() -> None:
    """Collect what start-up left, freeze the rest out of later collections, and
    collect the young generation less often. Call once, when the process serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


async def stop_on_signal(stop: trio.Event) -> None:
    """Set `stop` on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            return
