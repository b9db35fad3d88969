"""The last N request records of one serving process, in a shared-memory file.

Every serving process (the primary and each worker) writes its own ring
(`requests-<pid>.ring` in the run's directory); the primary's management route reads
all of them, so the console sees the requests of every process whichever one it asks.
A file mapping costs a memory copy per request and no system call, and needs no
channel between the processes; a dead worker's ring is removed with its metrics.

Layout: a header (magic, slot count, slot size, records written so far), then fixed
slots of `[u64 sequence][u32 length][JSON]`. The writer (one trio thread per process)
zeroes a slot's sequence, writes the record, then sets the sequence; a reader that finds
the sequence changed or zero skips the slot, so a record being written is never read
half old, half new.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAGIC = b"AOGR"
HEADER = struct.Struct("<4sIIQ")  # magic, slots, slot size, written
SLOT_HEAD = struct.Struct("<QI")  # sequence, length
SLOT_SIZE = 1024
RING_PREFIX = "requests-"
RING_SUFFIX = ".ring"
# one encoder for every record (json.dumps with options builds a new one per call)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def ring_path(folder: Path, pid: int) -> Path:
    return folder / f"{RING_PREFIX}{pid}{RING_SUFFIX}"


class RingWriter:
    """This process's ring: `append` one record (a dict of plain values)."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = max(1, slots)
        size = HEADER.size + self.slots * SLOT_SIZE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.written = 0
        HEADER.pack_into(self._map, 0, MAGIC, self.slots, SLOT_SIZE, 0)

    def append(self, record: dict[str, Any]) -> None:
        data = _COMPACT.encode(record).encode()
        limit = SLOT_SIZE - SLOT_HEAD.size
        if len(data) > limit:  # long names: keep the record, shorten its path and model
            record = {**record, "path": str(record.get("path", ""))[:80],
                      "model": str(record.get("model", ""))[:80]}
            data = _COMPACT.encode(record).encode()
            if len(data) > limit:
                return
        self._write(data)

    def append_encoded(self, data: bytes, record: Callable[[], dict[str, Any]]) -> None:
        """Append a record already encoded as compact JSON (`data`); one too long for
        a slot goes through `append` as `record()` gives it, to be shortened there."""
        if len(data) > SLOT_SIZE - SLOT_HEAD.size:
            self.append(record())
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        seq = self.written + 1
        offset = HEADER.size + (self.written % self.slots) * SLOT_SIZE
        m = self._map
        SLOT_HEAD.pack_into(m, offset, 0, 0)
        m[offset + SLOT_HEAD.size: offset + SLOT_HEAD.size + len(data)] = data
        SLOT_HEAD.pack_into(m, offset, seq, len(data))
        self.written = seq
        HEADER.pack_into(m, 0, MAGIC, self.slots, SLOT_SIZE, seq)

    def close(self) -> None:
        self._map.close()


def read_ring(path: Path) -> list[dict[str, Any]]:
    """The records of one ring, oldest first (empty when the file is not a ring)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    if len(raw) < HEADER.size:
        return []
    magic, slots, slot_size, written = HEADER.unpack_from(raw, 0)
    if magic != MAGIC or slot_size != SLOT_SIZE or len(raw) < HEADER.size + slots * SLOT_SIZE:
        return []
    out = []
    for seq in range(max(1, written - slots + 1), written + 1):
        offset = HEADER.size + ((seq - 1) % slots) * SLOT_SIZE
        found, length = SLOT_HEAD.unpack_from(raw, offset)
        if found != seq or length > SLOT_SIZE - SLOT_HEAD.size:
            continue
        try:
            rec = json.loads(raw[offset + SLOT_HEAD.size: offset + SLOT_HEAD.size + length])
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_all(folder: Path, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` records of every ring in `folder`, newest first."""
    records: list[dict[str, Any]] = []
    try:
        paths = [p for p in folder.iterdir()
                 if p.name.startswith(RING_PREFIX) and p.name.endswith(RING_SUFFIX)]
    except OSError:
        return []
    for path in paths:
        records.extend(read_ring(path))
    records.sort(key=lambda r: r.get("ts", 0), reverse=True)
    return records[:limit]
