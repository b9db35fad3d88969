"""`aogstream.sdk.blocking` on its own: blocking plugin code kept off the event loop.

A unit test of the module on a plain asyncio loop (no gRPC, no gateway): a `def`
method runs on a worker thread and an `async def` on the loop; a plain generator is
stepped on worker threads and closed when its consumer is cancelled; cancelling a
request cuts what its threads registered with its scope, and refuses what they would
start after; a request that ends normally cancels nothing. The same through a real
plugin process is in tests/test_plugin_llm_sync.py, and the sync `ctx.llm` call cut
this way in tests/test_sdk_llm.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from aogstream.sdk import blocking


def test_a_def_runs_on_a_worker_thread_and_an_async_def_on_the_loop():
    def plain(x: int) -> tuple[int, str]:
        return x + 1, threading.current_thread().name

    async def coroutine(x: int) -> tuple[int, str]:
        return x + 2, threading.current_thread().name

    async def main() -> None:
        value, thread = await blocking.call_plugin(plain, 1)
        assert value == 2 and thread.startswith("aogstream-plugin")
        value, thread = await blocking.call_plugin(coroutine, 1)
        assert value == 3 and thread == threading.current_thread().name

    asyncio.run(main())


def test_a_plain_generator_is_stepped_on_workers_and_closed_when_cancelled():
    closed = threading.Event()
    threads: list[str] = []
    gate = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for i in range(100):
                threads.append(threading.current_thread().name)
                if i == 2:
                    gate.wait(10)  # blocks a worker, never the loop
                yield i
        finally:
            closed.set()

    async def main() -> list[int]:
        seen: list[int] = []
        two = asyncio.Event()

        async def consume() -> None:
            async for item in blocking.iterate_plugin(numbers()):
                seen.append(item)
                if len(seen) == 2:
                    two.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(two.wait(), 10)  # the loop runs while a worker blocks
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()  # the step in flight ends; the generator is closed after it
        return seen

    assert asyncio.run(main()) == [0, 1]
    assert closed.wait(10)
    assert threads and all(t.startswith("aogstream-plugin") for t in threads)


def test_an_async_iterator_is_used_as_it_is():
    async def gen():
        yield 1

    it = gen()
    assert blocking.iterate_plugin(it) is it


def test_cancelling_the_request_cuts_the_blocking_calls_its_threads_wait_on():
    """What a worker registers with its request's scope is called when the request is
    cancelled; a call that would start after that is refused."""
    registered, cut, done = threading.Event(), threading.Event(), threading.Event()
    outcome: list[str] = []

    def blocking_code() -> None:
        scope = blocking.current_scope()
        assert scope is not None and not blocking.on_loop_thread()
        assert scope.add(cut.set)
        registered.set()
        outcome.append("cut" if cut.wait(10) else "never cut")
        scope.discard(cut.set)
        outcome.append("refused" if not scope.add(cut.set) else "accepted")
        done.set()

    async def main() -> None:
        async def request() -> None:
            with blocking.request_scope():
                await blocking.call_plugin(blocking_code)

        task = asyncio.ensure_future(request())
        assert await asyncio.to_thread(registered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert done.wait(10)  # the worker goes on briefly after its request
    assert outcome == ["cut", "refused"]


def test_a_request_that_ends_normally_leaves_its_threads_alone():
    scopes: list[blocking.RequestScope | None] = []

    async def main() -> None:
        with blocking.request_scope() as scope:
            await blocking.call_plugin(lambda: scopes.append(blocking.current_scope()))
        assert not scope.cancelled

    asyncio.run(main())
    assert scopes and scopes[0] is not None and not scopes[0].cancelled
    assert blocking.current_scope() is None
