"""Native calls on worker threads, with the fewest thread and GIL handoffs per call.

A native call may block (an executor doing its own network I/O does), so it never runs
on the trio thread. `trio.to_thread.run_sync` did the hop before; profiling a closed
loop of non-stream requests through an in-process executor showed the hop, not the C
call, to be the native path's cost: the same loop with the executor's call made inline
(blocking the loop: an experiment only) cost ≈ 0.2–0.3 CPU-ms less per request. Most of
that is not trio's bookkeeping but the threads taking the GIL from each other while
the trio thread is busy: every time a worker thread takes the GIL back (when it wakes,
when the C call returns, when it wakes the loop with a write to trio's wake-up socket)
it may have to wait for the trio thread, and the trio thread then for it, each wait a
pair of context switches.

`Offload.run` keeps the hop but trims it:

- the worker thread comes from trio's own thread cache (`start_thread_soon`), without
  `to_thread`'s per-call machinery (its message loop for `from_thread` calls, which
  native callbacks never use: they pass the loop's token and so always run as system
  tasks, see `callbacks`); the caller's contextvars go with the call, as before;
- the answer goes back to the loop through a queue and a pipe the loop watches, the
  byte written with a libc `write` made while the GIL is held (a write to a
  non-blocking pipe returns at once), so the worker takes the GIL once after the C call
  and not again for the wake-up (trio's `run_sync_soon` writes its wake-up byte with
  the GIL released, and the loop, woken by that very byte, races the worker for it).

Semantics are `to_thread.run_sync(..., limiter=..., abandon_on_cancel=True)`'s: a
per-plugin `CapacityLimiter` bounds the threads (a slot is held until the thread
finishes, even for an abandoned call), a cancelled caller leaves at once and the
thread finishes the call and drops its answer on its own.
"""

from __future__ import annotations

import contextvars
import ctypes
import fcntl
import functools
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import outcome
import trio

# libc write(2), called with the GIL held (see the module docstring)
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
_write_holding_gil: Callable[[int, bytes, int], int] | None = None
_write_address = ctypes.cast(_libc.write, ctypes.c_void_p).value if _libc is not None \
    else None
if _write_address is not None:
    _write_holding_gil = ctypes.PYFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_char_p,
                                           ctypes.c_size_t)(_write_address)


class _Doorbell:
    """The answers of finished calls and the pipe that wakes the loop for them: one per
    trio run (a serving process), drained by one system task."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._done: deque[tuple[Callable[[outcome.Outcome[Any]], None],
                                outcome.Outcome[Any]]] = deque()
        self._lock = threading.Lock()
        self._rung = False  # a byte waits in the pipe: no need to write another
        self._closed = False  # the loop ended: the pipe is closed

    def ring(self, finish: Callable[[outcome.Outcome[Any]], None],
             result: outcome.Outcome[Any]) -> None:
        """From a worker thread: queue `finish(result)` for the loop and wake it."""
        with self._lock:  # the write under the lock: `serve` may close the pipe
            if self._closed:
                return  # the loop is gone: nobody waits for the answer
            self._done.append((finish, result))
            if self._rung:
                return
            self._rung = True
            if _write_holding_gil is not None:
                _write_holding_gil(self._w, b"\0", 1)  # EAGAIN: a byte waits already
            else:  # pragma: no cover - posix only
                try:
                    os.write(self._w, b"\0")
                except BlockingIOError:
                    pass

    async def serve(self) -> None:
        """The system task: run each finished call's `finish` on the loop."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._r)
                with self._lock:
                    self._rung = False
                    try:
                        os.read(self._r, 4096)
                    except BlockingIOError:
                        pass
                    done, self._done = self._done, deque()
                for finish, result in done:
                    finish(result)
        finally:
            with self._lock:
                self._closed = True
                os.close(self._r)
                os.close(self._w)


_doorbells: dict[trio.lowlevel.TrioToken, _Doorbell] = {}


def _doorbell() -> _Doorbell:
    """This trio run's doorbell, its system task started on first use."""
    token = trio.lowlevel.current_trio_token()
    bell = _doorbells.get(token)
    if bell is None:
        bell = _doorbells[token] = _Doorbell()

        async def serve() -> None:
            try:
                await bell.serve()
            finally:
                _doorbells.pop(token, None)

        trio.lowlevel.spawn_system_task(serve, name="native call answers")
    return bell


class Offload:
    """Runs one plugin's blocking calls on worker threads (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a worker thread; its result (or exception) here."""
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = object()  # the limiter's borrower: held until the thread is done
        limiter = self.limiter
        await limiter.acquire_on_behalf_of(slot)
        task = trio.lowlevel.current_task()
        bell = _doorbell()
        abandoned = False

        def finish(result: outcome.Outcome[Any]) -> None:  # on the loop
            limiter.release_on_behalf_of(slot)
            if not abandoned:
                trio.lowlevel.reschedule(task, result)

        def deliver(result: outcome.Outcome[Any]) -> None:  # on the worker thread
            bell.ring(finish, result)

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal abandoned
            abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        ctx = contextvars.copy_context()
        try:
            trio.lowlevel.start_thread_soon(functools.partial(ctx.run, fn, *args), deliver)
        except BaseException:
            limiter.release_on_behalf_of(slot)
            raise
        return await trio.lowlevel.wait_task_rescheduled(abort)
