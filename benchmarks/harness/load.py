"""Is the machine quiet enough to quote the figures? The load checks every report
carries.

The benchmarks run on shared machines, so a report says how busy the machine was rather
than assume it was quiet: the load average at the start, and how many CPUs *other*
processes used during the measurements — the machine's busy time from /proc/stat minus
the CPU of the benchmark's own processes (client, engine, systems) over the same wall
time. `busy()` is the verdict behind the report's warning line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .procfs import NCPU, machine_busy, read_stat


@dataclass(frozen=True)
class CpuMark:
    """A moment's CPU counters: our processes', the whole machine's, the wall clock."""

    own: float
    machine: float
    wall: float


def mark(pids: Iterable[int]) -> CpuMark:
    """The counters now; `pids` are the benchmark's own processes (gone ones count 0)."""
    own = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            own += read_stat(pid)[2]
    return CpuMark(own, machine_busy(), time.monotonic())


def foreign_cpus(before: CpuMark, after: CpuMark) -> float:
    """CPUs used on average by processes other than ours between two marks."""
    other = (after.machine - before.machine) - (after.own - before.own)
    return max(0.0, other) / max(after.wall - before.wall, 1e-9)


def busy(load_start: str, foreign: float) -> bool:
    """True when the figures should not be quoted: other processes used over a quarter
    of a CPU, or the load average at the start was at least half the CPUs."""
    first = float(load_start.split()[0]) if load_start != "n/a" else 0.0
    return (foreign == foreign and foreign > 0.25) or first >= 0.5 * NCPU
