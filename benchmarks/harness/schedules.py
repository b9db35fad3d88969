"""Load schedules: how requests are offered to a system.

- `open_loop`: request i starts at start + i·interval whatever the system does, so a
  slow system sees more requests in flight rather than fewer requests (the way real
  clients arrive; a closed loop would hide queueing).
- `closed_loop`: each of `concurrency` workers sends its next request as soon as the
  previous one answered (the ceiling a system reaches).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter

import trio

from .http_client import Result

MAX_INFLIGHT = 4000  # open-loop requests in flight at once, whatever the schedule says


async def open_loop(n: int, interval: float, one: Callable[[int], Awaitable[Result]]
                    ) -> list[Result]:
    """Start request i at start + i·interval whatever the system does (open loop), at
    most MAX_INFLIGHT at once; return the results in order."""
    out: list[Result | None] = [None] * n
    limit = trio.CapacityLimiter(MAX_INFLIGHT)

    async def run(i: int) -> None:
        async with limit:
            out[i] = await one(i)

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        for i in range(n):
            await trio.sleep_until(t0 + i * interval)
            nursery.start_soon(run, i)
    return [r if r is not None else Result(error="not run") for r in out]


async def closed_loop(concurrency: int, seconds: float,
                      one: Callable[[int], Awaitable[Result]], max_requests: int = 1_000_000
                      ) -> tuple[list[Result], float]:
    """`concurrency` workers each send a request as soon as the previous one answered,
    for `seconds` (or max_requests in all); returns the results and the span (s)."""
    out: list[Result] = []
    t_end = trio.current_time() + seconds
    start = perf_counter()

    async def worker(w: int) -> None:
        while trio.current_time() < t_end and len(out) < max_requests:
            out.append(await one(w))

    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    return out, perf_counter() - start
