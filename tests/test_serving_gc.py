"""The serving processes' garbage-collection policy (`aogstream.serving.process_setup`).

Abandoned streams leave their garbage in reference cycles that a young collection
promoted while the stream was alive; with the serving thresholds only a rare full
collection frees it. Proven here, on the real interpreter collector and the real
`collect_garbage` task (trio's autojump clock stands in for waiting): aged cyclic
garbage is freed at the first quiet moment; a process that never gets quiet still frees
it after `max_wait`; a process with nothing aged is never paused. The interpreter's own
automatic collections are switched off during each test, so only the task can free the
cycle. The effect on a real gateway is measured by `benchmarks/soak_memory.py gateway`.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
import trio

from aogstream.serving import process_setup


class Node:
    """One object in a reference cycle (it refers to itself), as a traceback and the
    frame that holds its exception do."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collections while the test runs; counts start from zero."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def aged_cycle() -> weakref.ref[Node]:
    """A cycle that was alive at a young collection (so it was promoted), then dropped."""
    node = Node()
    gc.collect(0)  # node is alive here: it moves to the middle generation
    return weakref.ref(node)


async def run_collector(quiet: Callable[[], bool], seconds: float,
                        max_wait: float = process_setup.MAX_WAIT) -> None:
    with trio.move_on_after(seconds):
        await process_setup.collect_garbage(quiet, check_interval=0.5, max_wait=max_wait)


async def test_aged_cycle_is_freed_at_the_first_quiet_moment(collector_off, autojump_clock):
    ref = aged_cycle()
    assert ref() is not None and process_setup.garbage_may_have_aged()
    await run_collector(lambda: True, 0.4)  # before the first look
    assert ref() is not None
    await run_collector(lambda: True, 0.6)
    assert ref() is None
    assert not process_setup.garbage_may_have_aged()


async def test_busy_process_frees_aged_cycle_after_max_wait(collector_off, autojump_clock):
    ref = aged_cycle()
    await run_collector(lambda: False, 5.0, max_wait=10.0)
    assert ref() is not None, "collected although never quiet and within max_wait"
    await run_collector(lambda: False, 12.0, max_wait=10.0)
    assert ref() is None


async def test_idle_process_is_never_paused(collector_off, autojump_clock):
    runs: list[str] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(phase)

    gc.callbacks.append(seen)
    try:
        await run_collector(lambda: True, 60.0)
    finally:
        gc.callbacks.remove(seen)
    assert runs == []
