"""Blocking plugin code beside the SDK's event loop: worker threads, and the way back.

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
* `run_on_loop`: the way back. A sync `ctx.llm` call made on a worker thread runs its
  exchange on the SDK's loop (the thread waits, the loop does not), which lets the SDK
  cancel it: when the host cancels the request, `request_scope` cancels the calls that
  request's threads are waiting on, so they end at once instead of running to their
  timeout while the gateway keeps the model busy for nobody.

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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

# Enough for the host's limit of calls in flight per plugin (16) and some plain work;
# a thread costs little while it waits.
WORKER_THREADS = 32

_loop: asyncio.AbstractEventLoop | None = None
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def bind_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Tell the SDK which loop serves this plugin (`server` does, at start and at stop)."""
    global _loop
    _loop = loop


def sdk_loop() -> asyncio.AbstractEventLoop | None:
    """The loop serving this plugin, while it runs."""
    loop = _loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


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
        return items
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
    """The sync calls that one request's threads are waiting on, to cancel them all
    when the request is cancelled (and any that start after that, at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self.cancelled = False

    def add(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if not self.cancelled:
                self._waiting.add(fut)
                return
        fut.cancel()

    def discard(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waiting.discard(fut)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            waiting, self._waiting = self._waiting, set()
        for fut in waiting:
            fut.cancel()


_scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "aogstream_sdk_request_scope", default=None)


@contextlib.contextmanager
def request_scope() -> Iterator[RequestScope]:
    """Around one request's plugin code: if the request is cancelled, so are the
    sync calls its threads wait on. A request that ends normally leaves them alone
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


def run_on_loop(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop,
                wait_s: float) -> Any:
    """Run `coro` on `loop` and wait for it on this (non-loop) thread.

    Raises `concurrent.futures.CancelledError` when the request this thread works for
    was cancelled or the plugin is stopping, and `TimeoutError` if the loop never
    answered within `wait_s` (it stopped underneath us)."""
    scope = _scope.get()
    try:
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop closed since `sdk_loop()`: the plugin is stopping
        coro.close()
        raise concurrent.futures.CancelledError from None
    if scope is not None:
        scope.add(fut)
    try:
        return fut.result(wait_s)
    finally:
        if scope is not None:
            scope.discard(fut)
        if not fut.done():
            fut.cancel()
