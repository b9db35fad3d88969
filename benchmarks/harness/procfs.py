"""What /proc says about processes and the machine: CPU seconds, resident memory, the
process tree, the load average and the machine's busy time.

The benchmarks measure CPU from `/proc/PID/stat` (utime + stime) for every process of a
system under test, rather than from the client's clock, because CPU is the figure that
stays honest on a shared machine (see `../shared/benchmarks.md`). Linux only.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
NCPU = os.cpu_count() or 1


def read_stat(pid: int) -> tuple[int, str, float]:
    """(ppid, state, utime+stime in seconds) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[1]), fields[0].decode(), (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size of one process, kB (from /proc/PID/statm)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KB


def machine_busy() -> float:
    """CPU seconds the whole machine has used (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4] - vals[7]) / CLK_TCK


def alive(pid: int) -> bool:
    try:
        return read_stat(pid)[1] not in ("Z", "X")
    except (OSError, ValueError):
        return False


def descendants(root: int) -> list[int]:
    """root and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, state, _ = read_stat(int(entry))
            except (OSError, ValueError):
                continue
            if state not in ("Z", "X"):
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"
