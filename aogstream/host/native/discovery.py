"""Which native plugin libraries are on disk: the files, their IDs and versions.

Discovery (spec §4.1): in each plugin root, `.so` files in
`<root>/linux/<amd64|arm64>-<variant>` (the x86-64 levels this CPU runs, best first;
CPA searched them until mid-2026), then `<root>/linux/<arch>`, then `<root>`. The roots
are `plugins.dir` when set (relative to the data directory), then the plugin folders the
gateway already searches for process plugins. A file `<id>.so` or `<id>-v<version>.so`
gives the plugin ID; several files of one ID: the configured `store.version`, else the
highest version, a versioned file before an unversioned one, the first seen on a tie.
"""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path
from typing import Any

import attrs

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^(?P<id>.+)-v(?P<version>[0-9][0-9A-Za-z.+-]*)$")
EXTENSION = ".so"


def goarch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i386": "386", "i686": "386"}.get(machine, machine)


@functools.cache
def amd64_levels() -> tuple[str, ...]:
    """The x86-64 micro-architecture levels this CPU runs, best first (v4..v1); read
    once (the loader looks for changed files every second, the CPU does not change)."""
    try:
        flags: set[str] = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        return ("v1",)
    levels = ["v1"]
    if {"sse4_2", "popcnt", "ssse3", "pni"} <= flags:
        levels.append("v2")
        if {"avx", "avx2", "bmi1", "bmi2", "fma"} <= flags:
            levels.append("v3")
            if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
                levels.append("v4")
    return tuple(levels[::-1])


def search_dirs(root: Path) -> list[Path]:
    arch = goarch()
    dirs = [root / "linux" / f"{arch}-{v}" for v in amd64_levels()] if arch == "amd64" else []
    return [*dirs, root / "linux" / arch, root]


@attrs.define
class Found:
    """One plugin library on disk."""

    id: str
    path: Path
    version: str = ""


def _version_key(version: str) -> tuple[Any, ...]:
    parts = re.split(r"[.+-]", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def parse_name(path: Path) -> Found | None:
    if path.suffix.lower() != EXTENSION:
        return None
    stem = path.name[: -len(EXTENSION)]
    match = VERSION_RE.match(stem)
    pid, version = (match["id"], match["version"]) if match else (stem, "")
    if not ID_RE.match(pid):
        return None
    return Found(pid, path, version)


def discover(roots: list[Path], desired: dict[str, str] | None = None) -> dict[str, Found]:
    """The library chosen for each plugin ID under `roots` (see the module docstring)."""
    desired = desired or {}
    seen: dict[str, list[Found]] = {}
    visited: set[Path] = set()
    for root in roots:
        for folder in search_dirs(root):
            try:
                real = folder.resolve()
                if real in visited or not folder.is_dir():
                    continue
                visited.add(real)
                files = sorted(folder.iterdir())
            except OSError:
                continue
            for path in files:
                found = parse_name(path)
                if found is not None and path.is_file():
                    seen.setdefault(found.id, []).append(found)
    chosen: dict[str, Found] = {}
    for pid, candidates in seen.items():
        want = desired.get(pid, "").removeprefix("v")
        if want:
            match = [c for c in candidates if c.version == want]
            if match:
                chosen[pid] = match[0]
            continue
        best = candidates[0]
        for c in candidates[1:]:
            if c.version and (not best.version or
                              _version_key(c.version) > _version_key(best.version)):
                best = c
        chosen[pid] = best
    return chosen
