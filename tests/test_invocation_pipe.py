"""`Invocation.attach_pipe`: a bidi provider's direct path for frames, unit-tested.

Real parts: `open_invocation` and `Invocation` as the gateway uses them, driven by a
`FunctionProvider`. The one fake is the pipe itself (lists and a trio channel standing
for a plugin's gRPC session), since what is proven here is the invocation's side of
the contract: client frames queued before the pipe was attached reach it first and in
order, later ones go to it directly; the north side's `frames()` reads the pipe's
frames, and when the pipe ends it ends with the provider's error; the north side
leaving cancels the provider's task waiting on the pipe.
"""

from __future__ import annotations

import trio

from aogstream import errors
from aogstream.invocation import Frame, Invocation, Mode, open_invocation
from aogstream.testing import FunctionProvider


class ListPipe:
    """Client frames into a list; provider frames out of a channel."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.out_send, self.out_recv = trio.open_memory_channel[Frame](10)
        self.ended = trio.Event()

    async def send(self, frame: Frame) -> None:
        self.sent.append(frame.data)

    def send_nowait(self, frame: Frame) -> None:
        self.sent.append(frame.data)

    async def send_many(self, frames: list[Frame]) -> None:
        self.sent.extend(f.data for f in frames)

    def close(self) -> None:
        self.closed = True

    async def receive(self) -> Frame:
        try:
            return await self.out_recv.receive()
        except trio.EndOfChannel:
            self.ended.set()
            raise


async def test_queued_frames_go_first_then_frames_flow_through_the_pipe_until_its_end():
    pipe = ListPipe()
    attached = trio.Event()

    async def handler(inv: Invocation) -> None:
        first = await inv.incoming().receive()
        assert first.data == b"run"
        await attached.wait()  # the client queues two more frames meanwhile
        inv.attach_pipe(pipe)
        await pipe.ended.wait()
        raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR, "the plugin failed")

    provider = FunctionProvider("p", handler)
    async with open_invocation(provider, "s", Mode.BIDI, b"", timeout=None) as inv:
        await inv.send(Frame(b"run"))
        await inv.send(Frame(b"a", "binary"))
        await inv.send(Frame(b"b", "binary"))
        attached.set()
        await pipe.out_send.send(Frame(b"partial 1"))
        frames = inv.frames()
        assert (await frames.__anext__()).data == b"partial 1"
        await inv.send(Frame(b"c", "binary"))  # straight into the pipe, after a and b
        assert pipe.sent == [b"a", b"b", b"c"]
        await pipe.out_send.send(Frame(b"partial 2"))
        pipe.out_send.close()  # the plugin's stream ends
        rest = [f.data async for f in frames]
        assert rest == [b"partial 2"]
        assert inv.error is not None and inv.error.message == "the plugin failed"


async def test_the_client_leaving_cancels_the_provider_waiting_on_its_pipe():
    pipe = ListPipe()
    left = trio.Event()

    async def handler(inv: Invocation) -> None:
        await inv.incoming().receive()
        inv.attach_pipe(pipe)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            left.set()
            raise

    provider = FunctionProvider("p", handler)
    with trio.fail_after(5):
        async with open_invocation(provider, "s", Mode.BIDI, b"", timeout=None) as inv:
            await inv.send(Frame(b"run"))
            await pipe.out_send.send(Frame(b"hello"))
            async for frame in inv.frames():
                assert frame.data == b"hello"
                break
            inv.close_input()
            assert pipe.closed
        await left.wait()
