"""`aogstream.sdk.blocking` on its own: blocking plugin code kept off the event loop.

A unit test of the module on a plain asyncio loop (no gRPC, no gateway): a `def`
method runs on a worker thread and an `async def` on the loop; a plain generator is
stepped on worker threads and closed when its consumer is cancelled; a sync wait on
the loop (`run_on_loop`) ends at once when its request is cancelled, and one that
starts after the cancellation never runs. The same through a real plugin process is
in tests/test_plugin_llm_sync.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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


def test_cancelling_the_request_ends_the_sync_wait_at_once():
    started = asyncio.Event()  # set on the loop, by the coroutine the worker waits on
    outcome: list[str] = []

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    def blocking_code() -> None:
        loop = blocking.sdk_loop()
        assert loop is not None and not blocking.on_loop_thread()
        try:
            blocking.run_on_loop(forever(), loop, 60)
        except concurrent.futures.CancelledError:
            outcome.append("cancelled")
        # a call after the cancellation does not even start
        never = forever()
        try:
            blocking.run_on_loop(never, loop, 60)
        except concurrent.futures.CancelledError:
            outcome.append("cancelled again")

    async def main() -> None:
        blocking.bind_loop(asyncio.get_running_loop())
        try:
            async def request() -> None:
                with blocking.request_scope():
                    await blocking.call_plugin(blocking_code)

            task = asyncio.ensure_future(request())
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(10_000):  # the worker finishes on its own, promptly
                if len(outcome) == 2:
                    break
                await asyncio.sleep(0.001)
        finally:
            blocking.bind_loop(None)

    asyncio.run(main())
    assert outcome == ["cancelled", "cancelled again"]


def test_without_a_bound_loop_there_is_no_sdk_loop():
    blocking.bind_loop(None)
    assert blocking.sdk_loop() is None and not blocking.on_loop_thread()
