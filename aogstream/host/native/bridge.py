"""Chunk queues between plugin threads and the trio loop, without a loop round trip
per chunk.

A streamed answer crosses the ABI once per chunk (`host.stream.emit`, and
`host.http.stream_read` when the plugin pulls its upstream through the host). Running
each of those as a task on the loop (`trio.from_thread.run`) costs two thread
handoffs per chunk; these queues let the plugin's thread hand a chunk over (or take
one) under a lock, and touch the loop only to wake a consumer that waits.

- `PushQueue` (plugin threads → one trio consumer): the executor stream of
  `host.stream.emit`/`close`; `put` blocks the plugin's thread while `limit` chunks
  wait (CPA's 16-chunk backpressure) and fails once the consumer is gone.
- `PullQueue` (a trio producer → plugin threads): a response the host reads ahead
  for `host.http.stream_read`, bounded in bytes so a slow plugin slows the upstream.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import trio


class Ended(Exception):
    """The queue is closed (the consumer left, or the producer finished)."""


def _wake(token: trio.lowlevel.TrioToken, event: trio.Event | None) -> None:
    if event is not None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass


class PushQueue:
    """Chunks from any thread to one consumer task (see the module docstring)."""

    def __init__(self, token: trio.lowlevel.TrioToken, limit: int) -> None:
        self._token = token
        self._limit = limit
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._items: deque[Any] = deque()
        self._ended = False  # the producer closed it: the consumer drains what is left
        self._aborted = False  # the consumer left: producers fail
        self._waiter: trio.Event | None = None
        self._taken = 0

    # ---- producers ----

    def put(self, item: Any) -> bool:
        """From a plugin thread (never the loop's): wait while `limit` chunks wait;
        False when the queue is closed."""
        with self._room:
            while len(self._items) >= self._limit and not (self._aborted or self._ended):
                self._room.wait()
            if self._aborted or self._ended:
                return False
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        _wake(self._token, waiter)
        return True

    def offer(self, item: Any) -> bool | None:
        """`put` that never waits: None (nothing done) when `limit` chunks wait."""
        with self._room:
            if self._aborted or self._ended:
                return False
            if len(self._items) >= self._limit:
                return None
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        _wake(self._token, waiter)
        return True

    def waiting(self) -> int:
        """How many chunks wait for the consumer."""
        with self._lock:
            return len(self._items)

    def put_all(self, items: list[Any]) -> None:
        """From the loop: a whole answer at once (no bound: it is in memory already),
        and the end."""
        with self._lock:
            if not (self._aborted or self._ended):
                self._items.extend(items)
                self._ended = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    def end(self, last: Any = None, *, on_loop: bool = False) -> bool:
        """The producer is done (`last`, e.g. an error chunk, goes after the rest);
        False when it was closed already."""
        with self._room:
            if self._aborted or self._ended:
                return False
            if last is not None:
                self._items.append(last)
            self._ended = True
            self._room.notify_all()
            waiter, self._waiter = self._waiter, None
        if on_loop:
            if waiter is not None:
                waiter.set()
        else:
            _wake(self._token, waiter)
        return True

    # ---- the consumer (on the loop) ----

    def abort(self) -> None:
        """The consumer leaves: drop what waits, and make producers fail."""
        with self._room:
            self._aborted = True
            self._items.clear()
            self._room.notify_all()

    async def get(self) -> Any:
        """The next chunk; `Ended` after the last."""
        item: Any = None  # bound before the only `break` (for the type checker)
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    self._room.notify()
                    break
                if self._ended or self._aborted:
                    raise Ended
                waiter = self._waiter = trio.Event()
            await waiter.wait()
        self._taken += 1
        if self._taken % 16 == 0:
            await trio.lowlevel.checkpoint()  # a fast producer must not starve the loop
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return item

    def __aiter__(self) -> PushQueue:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.get()
        except Ended:
            raise StopAsyncIteration from None


class PullQueue:
    """Bytes read ahead on the loop for plugin threads (see the module docstring)."""

    def __init__(self, token: trio.lowlevel.TrioToken, limit_bytes: int) -> None:
        self._token = token
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self._data = threading.Condition(self._lock)
        self._items: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error = ""
        self._room: trio.Event | None = None

    async def put(self, data: bytes) -> bool:
        """On the loop: queue `data`, waiting while the queue is full; False once
        it is closed."""
        while True:
            with self._data:
                if self._done:
                    return False
                if self._size < self._limit:
                    self._items.append(data)
                    self._size += len(data)
                    self._data.notify()
                    return True
                room = self._room = trio.Event()
            await room.wait()

    def finish(self, error: str = "") -> None:
        """No more data (`error`: why it broke); readers get what is left, then the end."""
        with self._data:
            if not self._done:
                self._done, self._error = True, error
            self._data.notify_all()
            room, self._room = self._room, None
        if room is not None:
            room.set()

    def take(self, max_bytes: int, timeout: float | None = None) -> tuple[bytes, str, bool]:
        """From a plugin thread: (data, error, done) — the bytes waiting, up to
        `max_bytes` (at least one piece), or the end with its error."""
        with self._data:
            if not self._data.wait_for(lambda: self._items or self._done, timeout):
                return b"", "no data within the read timeout", True
            out: list[bytes] = []
            n = 0
            while self._items and (not out or n + len(self._items[0]) <= max_bytes):
                piece = self._items.popleft()
                out.append(piece)
                n += len(piece)
            self._size -= n
            room, self._room = self._room, None
            error, done = self._error, self._done and not self._items
        _wake(self._token, room)
        if out:
            return b"".join(out), "", False
        return b"", error, done
