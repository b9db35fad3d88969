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

With those thresholds alone a full collection almost never runs, and garbage held in
reference cycles waits for one: each stream a client abandons leaves ~260 unreachable
objects (trio's `Cancelled` and the connection-reset exceptions, whose tracebacks hold
the request's frames, which hold the exceptions) that a young collection promoted while
the stream was still alive. Cycles of 200 abandoned streams crept a gateway's RSS by
~2 MB each with no plateau, in a sawtooth as long as the process's life.

So `collect_garbage` runs a full collection once a young collection has promoted
objects since the last one (an idle process is left alone), at a quiet moment: when
the process holds no more than a few client connections (`hypercorn_serve.is_quiet`),
or else once that garbage has waited `MAX_WAIT` seconds. The pause is mostly the
freeing of what it finds (the start-up heap is frozen, so the walk is short): 27-61 ms
for the ~30,000-40,000 objects a burst of 200 abandoned streams leaves, measured on a
loaded 2-core machine; that is work a rare old-generation collection would otherwise do
later, all at once, at a time of its choosing. With it, 16 such bursts held a gateway at
95-104 MB where it had crept from 97 to 113 MB. The task looks once per `CHECK_INTERVAL`
(one `gc.get_count()` and one semaphore read); nothing is added per request or chunk.

The plugin SDK (`sdk/server.py`) keeps its own copy of the thresholds: `sdk/` may
import only `rpc/` and the manifest, and a plugin runs asyncio, not trio.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable

import trio

log = logging.getLogger("aogstream")

# (young, middle, old): see the module docstring
THRESHOLDS = (50_000, 50, 1000)
# How often `collect_garbage` looks, and how long aged garbage waits for a quiet moment.
CHECK_INTERVAL = 1.0
MAX_WAIT = 10.0


def tune_gc() -> None:
    """Collect what start-up left, freeze the rest out of later collections, and
    collect the young generation less often. Call once, when the process serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def garbage_may_have_aged() -> bool:
    """True when a young collection ran since the last full one: objects then alive
    were promoted, and those that died since (abandoned streams' exception cycles)
    wait for an older collection. `gc.get_count()` is (allocations, young collections
    since the middle one, middle collections since the old one)."""
    _young, middle, old = gc.get_count()
    return middle > 0 or old > 0


def full_collection() -> tuple[int, float]:
    """One full collection: (objects found unreachable, seconds it took)."""
    began = time.perf_counter()
    found = gc.collect()
    return found, time.perf_counter() - began


async def collect_garbage(quiet: Callable[[], bool], *,
                          check_interval: float = CHECK_INTERVAL,
                          max_wait: float = MAX_WAIT) -> None:
    """Run for the life of the process: a full collection when garbage may have aged
    and `quiet()` says no client is being served, or when it has waited `max_wait`
    seconds for that (see the module docstring)."""
    aged_since: float | None = None
    while True:
        await trio.sleep(check_interval)
        if not garbage_may_have_aged():
            aged_since = None  # the interpreter ran a full collection itself
            continue
        now = trio.current_time()
        if aged_since is None:
            aged_since = now
        if quiet() or now - aged_since >= max_wait:
            aged_since = None
            found, took = full_collection()
            log.debug("full garbage collection: %d unreachable objects in %.1f ms",
                      found, took * 1000)


async def stop_on_signal(stop: trio.Event) -> None:
    """Set `stop` on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            stop.set()
            return
