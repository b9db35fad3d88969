"""`host.native.offload.Offload`: the worker-thread hop every native call takes.

Real: trio runs, real worker threads (trio's thread cache), the real pipe that hands
answers back to the loop. Nothing is faked; the blocking "native calls" are Python
functions that wait on `threading.Event`s, so each test decides when a call finishes.

Proven: a call's value and exception come back to the caller; the caller's contextvars
go with it; calls run at once up to the limit and the rest wait for a slot; a cancelled
caller leaves at once while its thread finishes on its own, and its slot stays held
until then (as `trio.to_thread.run_sync(..., abandon_on_cancel=True)` does); calls
never run on the trio thread; answers still arrive after many calls (the pipe drains).
"""

from __future__ import annotations

import contextvars
import threading

import pytest
import trio
import trio.testing

from aogstream.host.native.offload import Offload

WAIT = 10.0  # s: the bound of every wait on another thread

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("offload_test", default="")


async def test_a_call_answers_its_value_off_the_trio_thread() -> None:
    loop_thread = threading.get_ident()
    value, thread = await Offload(4).run(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert value == 5 and thread != loop_thread


async def test_a_call_raises_what_the_function_raised() -> None:
    def fail() -> None:
        raise ValueError("the plugin said no")

    with pytest.raises(ValueError, match="the plugin said no"):
        await Offload(1).run(fail)


async def test_the_callers_contextvars_go_with_the_call() -> None:
    VAR.set("request 7")
    assert await Offload(1).run(VAR.get) == "request 7"


async def test_calls_beyond_the_limit_wait_for_a_slot() -> None:
    offload = Offload(2)
    release = threading.Event()
    entered = threading.Semaphore(0)
    running = 0
    most = 0
    lock = threading.Lock()

    def blocking() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        entered.release()
        release.wait(WAIT)
        with lock:
            running -= 1

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(offload.run, blocking)
            for _ in range(2):  # two calls run in threads …
                assert await trio.to_thread.run_sync(entered.acquire, True, WAIT)
            await trio.testing.wait_all_tasks_blocked()  # … and three wait for a slot
            assert offload.limiter.borrowed_tokens == 2
            assert offload.limiter.statistics().tasks_waiting == 3
            release.set()
    assert most == 2
    assert offload.limiter.borrowed_tokens == 0


async def test_a_cancelled_caller_leaves_at_once_and_the_thread_keeps_its_slot() -> None:
    offload = Offload(1)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(WAIT)
        finished.set()
        return "late"

    with trio.fail_after(WAIT):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(offload.run, blocking)
                await trio.to_thread.run_sync(started.wait, WAIT)
                scope.cancel()
        assert scope.cancelled_caught
        assert not finished.is_set()  # the caller left while the call still runs
        assert offload.limiter.borrowed_tokens == 1  # its thread still holds the slot
        release.set()
        # the one slot comes back once the thread is done: the next call gets it
        assert await offload.run(lambda: "next") == "next"
    assert finished.is_set()
    assert offload.limiter.borrowed_tokens == 0


async def test_a_caller_cancelled_before_the_call_starts_runs_nothing() -> None:
    ran = threading.Event()
    with trio.CancelScope() as scope:
        scope.cancel()
        await Offload(1).run(ran.set)
    assert scope.cancelled_caught and not ran.is_set()


async def test_many_concurrent_calls_all_answer() -> None:
    offload = Offload(8)
    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await offload.run(lambda: i * 2))

    with trio.fail_after(WAIT * 3):
        async with trio.open_nursery() as nursery:
            for i in range(2000):
                nursery.start_soon(one, i)
    assert sorted(results) == [i * 2 for i in range(2000)]
