"""The bridge's send window (`rpc.bridge.Stream.send`), as a unit over a real
`GrpcLoop` thread but no gRPC call: the loop thread's writer is played by calling
`_return_send_credits` on that thread, as the writer does once messages are written.

Proven: a sender may have `window` messages unacknowledged and then waits; credits
returned on the loop thread wake it (the trio side is woken only because a sender is
parked); a paced sender whose messages are acknowledged never waits, although no
wake-up is sent to trio for its acknowledgements; a cancelled waiting sender leaves
no trace.
"""

from __future__ import annotations

import trio

from aogstream.rpc.bridge import GrpcLoop, Stream


async def test_a_full_window_waits_until_the_loop_thread_returns_credits():
    async with GrpcLoop.open() as gl:
        s: Stream[bytes, object] = Stream(gl, window=4, bidi=True)  # type: ignore[type-var]
        for i in range(4):
            with trio.fail_after(5):
                await s.send(b"m%d" % i)
        with trio.move_on_after(0.2) as blocked:
            await s.send(b"m4")
        assert blocked.cancelled_caught, "a fifth unacknowledged message must wait"
        assert not s._send_waiters, "a cancelled sender must not stay registered"

        async def ack_later() -> None:
            await trio.sleep(0.05)
            gl.call_soon(s._return_send_credits, 2)  # the writer, on its own thread

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ack_later)
            with trio.fail_after(5):
                await s.send(b"m4")
                await s.send(b"m5")
        assert list(s._outbox) == [b"m%d" % i for i in range(6)]


async def test_acknowledged_messages_free_the_window_without_waking_trio():
    async with GrpcLoop.open() as gl:
        s: Stream[bytes, object] = Stream(gl, window=2, bidi=True)  # type: ignore[type-var]
        woken = 0
        wake = s._wake_senders

        def counting_wake() -> None:
            nonlocal woken
            woken += 1
            wake()

        s._wake_senders = counting_wake  # type: ignore[method-assign]
        for _ in range(50):
            with trio.fail_after(5):
                await s.send(b"x")
            done = trio.Event()
            gl.call_soon(s._return_send_credits, 1)
            gl.call_soon(gl.to_trio, done.set)  # after the ack, in order
            with trio.fail_after(5):
                await done.wait()
        assert woken == 0
