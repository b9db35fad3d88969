"""Decoders shared by realtime sessions.

Why a pool
----------
A decoder holds the whole model (~50-90 MB of native memory) and takes ~0.3 s of CPU to
build. Building one per session and dropping it at the end was not enough to get the
memory back:

* the recogniser comes back from its worker thread as a future's result, and asyncio's
  future chaining keeps that result in a reference cycle. The plugin collects cycles
  rarely (see ``aogstream.sdk.server._tune_gc``: the collector is kept off the stream
  path), and the collector sees a few Python objects, not the tens of MB behind them, so
  decoders piled up session after session;
* even when freed, glibc keeps the pages of a freed decoder in its arenas: 8 decoders
  built and freed one after another left a process at 330 MB with one decoder alive,
  and ``malloc_trim(0)`` took it back to 35 MB. (``bin/pocketsphinx-plugin`` also pins
  glibc's mmap threshold, so a decoder's large tables are mappings of their own that a
  free returns whole.)

So a session borrows a decoder and gives it back when it ends, however it ends (clean
finish, task-failed, client gone, host cancel). A returned decoder is restarted (a
fresh instance's state, so no client's audio shapes another's results) and kept for
the next session, up to ``idle`` of them; any beyond that is released explicitly (the
model freed whoever still references the Python object) and the heap trimmed. Sequential
sessions then reuse one decoder and the plugin's memory stays flat; a burst of N
concurrent sessions costs N decoders only while it lasts. How many sessions decode at
once is capped apart from the pool (``POCKETSPHINX_MAX_SESSIONS``, the engine toolkit's
``aogstream.engines.realtime.SessionCap``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pocketsphinx_plugin.recognizer import ModelPaths, StreamingRecognizer

log = logging.getLogger("pocketsphinx-plugin")

DEFAULT_IDLE = 1
"""Decoders kept ready between sessions (each holds the model, ~50-90 MB of RSS)."""

RETURN_WAIT_S = 2.0
"""How long a new session waits for a decoder that an ended session is still giving back
(finishing a decode in flight) before building its own."""

Key = tuple[int, ModelPaths]


def _libc_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _libc_malloc_trim()


def trim_heap() -> None:
    """Give the heap pages a freed decoder leaves behind back to the system."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class RecognizerPool:
    """Borrow and return recognisers; thread-safe (returns happen in worker threads)."""

    def __init__(self, build: Callable[[int, ModelPaths], StreamingRecognizer], *,
                 idle: int = DEFAULT_IDLE) -> None:
        self._build = build
        self.idle_limit = idle
        self._lock = threading.Condition()
        self._idle: dict[Key, list[StreamingRecognizer]] = {}
        self._returning = 0  # decoders of ended sessions not back yet
        # returns get their own threads: a borrow waiting for a return must never sit in
        # the same executor queue as the return it waits for
        self._returns = ThreadPoolExecutor(2, thread_name_prefix="decoder-return")

    def borrow(self, rate: int, paths: ModelPaths) -> StreamingRecognizer:
        """An idle recogniser for this rate and model, else a new one (blocks: call it in
        a worker thread).

        When a session that just ended is still giving its decoder back, this waits for
        it (up to RETURN_WAIT_S) instead of building a second one: a client that leaves
        and comes straight back would otherwise cost a model load and a decoder's worth
        of heap that the allocator does not fully give back.
        """
        deadline = time.monotonic() + RETURN_WAIT_S
        with self._lock:
            while True:
                idle = self._idle.get((rate, paths))
                if idle:
                    return idle.pop()
                left = deadline - time.monotonic()
                if self._returning <= 0 or left <= 0:
                    break
                self._lock.wait(left)
        return self._build(rate, paths)

    def give_back_soon(self, rec: StreamingRecognizer, paths: ModelPaths) -> None:
        """`give_back` in a worker thread, without waiting (for a session being
        cancelled); `borrow` meanwhile knows the decoder is on its way."""
        with self._lock:
            self._returning += 1
        self._returns.submit(self.give_back, rec, paths, expected=True)

    def give_back(self, rec: StreamingRecognizer, paths: ModelPaths, *,
                  expected: bool = False) -> None:
        """End `rec`'s stream and keep it for the next session, or free it (blocks on a
        decode still running in another thread: call it in a worker thread)."""
        keep = False
        try:
            rec.restart()
            ok = True
        except Exception:  # a decoder in a bad state is not reused
            log.warning("a decoder could not be reset; freeing it", exc_info=True)
            ok = False
        with self._lock:
            if expected:
                self._returning -= 1
            keep = ok and self.idle_count() < self.idle_limit
            if keep:
                self._idle.setdefault((rec.sample_rate, paths), []).append(rec)
            self._lock.notify_all()
        if keep:
            trim_heap()  # what the session's buffers left behind
        else:
            self._free(rec)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def clear(self) -> None:
        """Free every idle decoder (engine stopped, models unloaded or deleted)."""
        with self._lock:
            idle = [r for recs in self._idle.values() for r in recs]
            self._idle.clear()
        for rec in idle:
            rec.release()
        if idle:
            trim_heap()

    @staticmethod
    def _free(rec: Any) -> None:
        rec.release()
        trim_heap()
