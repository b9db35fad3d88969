"""Blocking plugin code beside the SDK's event loop: worker threads, tied to requests.

A plugin process serves every request on one asyncio loop (the grpc.aio server's).
Plugin code that blocks on that loop's thread (a sync `ctx.llm.complete`, a
CPU-bound model, a blocking library) holds up every other request of the plugin for
as long as it blocks. So the SDK lets plugin authors write blocking code and keeps it
off the loop:

* `call_plugin`: a provider method written as plain `def` runs in a worker thread
  (the SDK's own pool, `WORKER_THREADS`, so it never competes with the plugin's own
  `asyncio.to_thread` work); an `async def` is awaited on the loop as before, at no
  extra cost.
* `iterate_plugin`: a stream written as a plain generator (`def` with `yield`) is
  stepped in a worker thread, one item at a time.
* `request_scope`: what ties blocking code to its request. A sync `ctx.llm` call
  waits on its own thread with a socket of its own, never on the loop (so no pattern
  of threads and loop can deadlock it), and registers a way to cut that socket with
  the scope of the request it runs for. When the host cancels the request, the scope
  cuts it: the call ends at once instead of running to its timeout, and the gateway,
  seeing the connection close, stops the model that was working for nobody.

What no library can do is wait on the loop's own thread without holding the loop: a
sync twin called straight from `async def` code still blocks the loop for its call
(`on_loop_thread` lets the client see that and say so). Such code should `await` the
`a*` twin, or be written as `def` so that it runs here, on a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

# Enough for the host's limit of calls in flight per plugin (16) and some plain work;
# a thread costs little while it waits.
WORKER_THREADS = 32

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def on_loop_thread() -> bool:
    """Whether the calling thread is running an event loop (so it must not wait)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                WORKER_THREADS, thread_name_prefix="aogstream-plugin")
        return _executor


async def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a worker thread, in a copy of the caller's context (so the
    request's scope travels with it)."""
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_workers(), functools.partial(ctx.run, fn, *args))


async def call_plugin(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a provider method: await an `async def`, run a plain `def` on a worker
    thread (and await what it returns, should that be awaitable)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await in_worker(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


_END = object()


def iterate_plugin(items: Any) -> AsyncIterator[Any]:
    """The plugin's stream as an async iterator: as is when it is one, else (a plain
    iterator or generator) stepped on worker threads."""
    if hasattr(items, "__anext__"):
        stream: AsyncIterator[Any] = items
        return stream
    return _threaded(iter(items))


def _step(it: Iterator[Any]) -> Any:
    return next(it, _END)


async def _threaded(it: Iterator[Any]) -> AsyncIterator[Any]:
    ctx = contextvars.copy_context()
    step: concurrent.futures.Future[Any] | None = None
    try:
        while True:
            step = _workers().submit(ctx.run, _step, it)
            item = await asyncio.wrap_future(step)
            if item is _END:
                return
            yield item
    finally:
        # Cancelled or closed early: close the generator (its `finally` blocks) on a
        # worker once the step in flight, if any, is over; never on the loop.
        close = getattr(it, "close", None)
        if close is not None:
            if step is not None:
                step.add_done_callback(lambda _f: _workers().submit(close))
            else:
                _workers().submit(close)


class RequestScope:
    """How to cut short the blocking calls one request's threads are waiting on, to do
    so when the request is cancelled (and at once for any that start after that)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cuts: list[Callable[[], None]] = []
        self.cancelled = False

    def add(self, cut: Callable[[], None]) -> bool:
        """Register `cut`; False (and nothing registered) if the request is already
        cancelled, so the caller should not start."""
        with self._lock:
            if not self.cancelled:
                self._cuts.append(cut)
                return True
        return False

    def discard(self, cut: Callable[[], None]) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._cuts.remove(cut)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            cuts, self._cuts = self._cuts, []
        for cut in cuts:
            with contextlib.suppress(Exception):
                cut()


_scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "aogstream_sdk_request_scope", default=None)


def current_scope() -> RequestScope | None:
    """The scope of the request this code runs for (worker threads inherit it)."""
    return _scope.get()


@contextlib.contextmanager
def request_scope() -> Iterator[RequestScope]:
    """Around one request's plugin code: if the request is cancelled, the blocking
    calls its threads wait on are cut. A request that ends normally leaves them alone
    (plugin code may have handed work to a thread of its own on purpose)."""
    scope = RequestScope()
    token = _scope.set(scope)
    try:
        yield scope
    except asyncio.CancelledError:
        scope.cancel()
        raise
    finally:
        _scope.reset(token)
