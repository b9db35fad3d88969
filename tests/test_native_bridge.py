"""Unit tests of the chunk queues between native plugins' threads and the trio loop
(`aogstream.host.native.bridge`): real OS threads on one side, a trio task on the other.

Proven: `PushQueue` delivers chunks in order from a thread, blocks the thread while
`limit` chunks wait (backpressure), lets the consumer drain what was sent before the
end, and fails a producer the moment the consumer leaves (`offer`, which never waits,
says when it would have); `PullQueue` hands a thread
what has arrived, coalesced up to a byte limit, bounds what is read ahead, and ends
with the producer's error.
"""

from __future__ import annotations

import threading

import pytest
import trio

from aogstream.host.native.bridge import PullQueue, PushQueue


async def test_push_queue_delivers_in_order_and_ends() -> None:
    q = PushQueue(trio.lowlevel.current_trio_token(), limit=4)

    def produce() -> None:
        for i in range(50):
            assert q.put(i)
        assert q.end("last")

    thread = threading.Thread(target=produce)
    thread.start()
    got = [item async for item in q]
    await trio.to_thread.run_sync(thread.join)
    assert got == [*range(50), "last"]
    assert not q.put(99)  # ended: later chunks are refused


async def test_push_queue_blocks_the_producer_at_its_limit() -> None:
    q = PushQueue(trio.lowlevel.current_trio_token(), limit=3)
    sent: list[int] = []
    changed = threading.Condition()

    def produce() -> None:
        for i in range(10):
            if not q.put(i):
                return
            with changed:
                sent.append(i)
                changed.notify_all()

    def reached(n: int, timeout: float) -> bool:
        with changed:
            return changed.wait_for(lambda: len(sent) >= n, timeout)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    assert await trio.to_thread.run_sync(reached, 3, 5.0)
    assert not await trio.to_thread.run_sync(reached, 4, 0.05)  # the 4th waits for room
    assert await q.get() == 0
    assert await trio.to_thread.run_sync(reached, 4, 5.0)
    q.abort()  # the consumer leaves: the waiting producer fails at once
    await trio.to_thread.run_sync(thread.join, 5)
    assert not thread.is_alive() and len(sent) == 4


async def test_push_queue_offer_never_waits() -> None:
    q = PushQueue(trio.lowlevel.current_trio_token(), limit=2)
    assert q.offer(b"a") is True and q.offer(b"b") is True
    assert q.offer(b"c") is None and q.waiting() == 2  # full: the caller must wait in put
    q.abort()
    assert q.offer(b"d") is False


async def test_push_queue_takes_a_whole_answer_from_the_loop() -> None:
    q = PushQueue(trio.lowlevel.current_trio_token(), limit=2)
    q.put_all([b"a", b"b", b"c"])  # beyond the limit: it is in memory already
    assert [x async for x in q] == [b"a", b"b", b"c"]


async def test_pull_queue_coalesces_bounds_and_ends_with_the_error() -> None:
    q = PullQueue(trio.lowlevel.current_trio_token(), limit_bytes=10)
    assert await q.put(b"12345")
    assert await q.put(b"6789")
    assert await q.put(b"abc")  # 9 bytes waited: room for one more piece
    assert await trio.to_thread.run_sync(q.take, 10) == (b"123456789", "", False)
    with trio.move_on_after(0.05):
        await q.put(b"x" * 20)
        await q.put(b"y")  # full: waits for a reader
        pytest.fail("the queue took more than its bound")
    assert await trio.to_thread.run_sync(q.take, 3) == (b"abc", "", False)
    q.finish("broke")
    assert await trio.to_thread.run_sync(q.take, 100) == (b"x" * 20, "", False)
    assert await trio.to_thread.run_sync(q.take, 100) == (b"", "broke", True)
    assert not await q.put(b"late")
