"""One bidirectional session of a plugin: host frames in, plugin frames out.

Plugin code reads the host's frames as `incoming`, which reads the call itself (no
pump task and queue in between: a realtime frame every 20 ms per session paid a task
hop and a queue round trip each way for them); what plugin code sends goes straight
back. gRPC's own flow control is the session's back-pressure: a frame is read from
the call only when plugin code asks for the next one. `incoming` also makes a
cancelled call look cancelled to plugin code, not like a clean end of input (see
`EOF_GRACE_S`). The servicer only checks the first message and picks the plugin; the
session itself lives here.

Packing (`aogstream.rpc.wire`), when our host offers it: the session tells the host in
its initial metadata that it unpacks the host's packed frames, and hands them to plugin
code one at a time. While plugin code works through the frames of one packed message
(more are already waiting), what it sends is held, and goes out as one message when it
has taken the last of them, or as soon as it waits on anything else: nothing is held
past the moment plugin code would wait. Without the offer (AOG's host), every frame is
read and written on its own, exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aogstream.rpc import wire
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.sdk.error_codes import error_code
from aogstream.sdk.provider import BidiMessage, BidirectionalPlugin

log = logging.getLogger("aogstream.sdk")

# After the host's stream reads EOF, wait this long before telling plugin code the
# input ended: a cancelled call reads EOF first and is cancelled ~0.1 ms later, and
# plugin code must see the cancellation, not a clean end of input.
EOF_GRACE_S = 0.01


async def run_bidi_session(plugin: BidirectionalPlugin, first: Any,
                           context: grpc.aio.ServicerContext[Any, pb.InvokeServiceBidiResponse],
                           ) -> None:
    """Serve the session that `first` (checked by the caller) opened, until plugin
    code returns, fails (reported to the host as one error message) or is cancelled.
    (`context`'s request type is Any: its read() also returns grpc.aio.EOF, which the
    stubs omit.)"""
    read = context.read
    write = context.write
    eof = grpc.aio.EOF
    limit = wire.frame_batch_limit(context.invocation_metadata())
    out = _Outbox(write, limit) if limit > 1 else None
    if out is not None:
        # the host offered: tell it we unpack its packed frames too
        await context.send_initial_metadata(
            ((wire.BATCH_FRAMES_KEY, str(wire.BATCH_FRAMES)),))
    frames_key = wire.FRAME_LENGTHS_KEY
    counts = wire.PACK_COUNTS

    async def incoming() -> AsyncIterator[BidiMessage]:
        if first.data or first.message_type:
            yield BidiMessage(first.data, first.message_type or "text", dict(first.metadata))
        while True:
            if out is not None and out.buf:
                await out.flush()  # about to wait: nothing is held past this point
            msg = await read()
            if msg is eof:
                await asyncio.sleep(EOF_GRACE_S)
                return
            # the map field is nearly always empty on frames after the first: copying
            # it only when it has entries saves most of the per-frame cost here
            md = msg.metadata
            if not md:
                yield BidiMessage(msg.data, msg.message_type, {})
                continue
            packed = (wire.unpack_frames(msg.data, md[frames_key])
                      if out is not None and frames_key in md and len(md) == 1 else None)
            if out is None or packed is None:
                yield BidiMessage(msg.data, msg.message_type, dict(md))
                continue
            counts.read += 1
            counts.frames_read += len(packed)
            kind = msg.message_type
            last = len(packed) - 1
            try:
                for i, data in enumerate(packed):
                    out.hold = i < last  # more frames waiting: hold what plugin code sends
                    yield BidiMessage(data, kind, {})
            finally:  # also when plugin code stops reading in the middle
                out.hold = False

    response = pb.InvokeServiceBidiResponse

    async def send_one(msg: BidiMessage) -> None:
        # setting the map field, even empty, costs more than the rest of the message
        if msg.metadata:
            await write(response(data=msg.data, message_type=msg.message_type,
                                 metadata=msg.metadata))
        else:
            await write(response(data=msg.data, message_type=msg.message_type))

    try:
        await plugin.invoke_service_bidirectional(
            first.service_name,
            first.metadata.get("ws_conn_id", ""),
            first.auth_info,
            incoming(),
            send_one if out is None else out.send,
        )
        if out is not None:
            await out.drain()
    except asyncio.CancelledError:
        if out is not None:
            out.abandon()
        raise
    except Exception as exc:  # noqa: BLE001
        code, msg = error_code(exc)
        log.warning("bidi session of %s failed: %s", first.service_name, msg)
        with contextlib.suppress(Exception):
            if out is not None:  # what plugin code sent before failing goes first
                await out.drain()
            await context.write(pb.InvokeServiceBidiResponse(code=code, message=msg))


class _Outbox:
    """What plugin code sends in a session whose host unpacks packed frames.

    A frame is written at once unless it is held: plugin code is still working
    through frames the host packed together (`hold`), or another write of this
    session is in progress. Held frames go out at the next write, packed by runs of
    one kind; a flusher task scheduled when the first one is held writes them as soon
    as plugin code waits on anything (it runs at the event loop's next turn).
    """

    __slots__ = ("_flusher", "_idle", "_limit", "_write", "_writing", "buf", "hold")

    def __init__(self, write: Any, limit: int) -> None:
        self._write = write
        self._limit = limit
        self.buf: list[BidiMessage] = []
        self.hold = False
        self._writing = False
        self._idle: asyncio.Event | None = None  # set when a write ends
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, msg: BidiMessage) -> None:
        buf = self.buf
        if not buf and not self.hold and not self._writing:
            # the usual case (a frame answered on its own): write it now, as is
            self._writing = True
            try:
                if msg.metadata:
                    await self._write(pb.InvokeServiceBidiResponse(
                        data=msg.data, message_type=msg.message_type, metadata=msg.metadata))
                else:
                    await self._write(pb.InvokeServiceBidiResponse(
                        data=msg.data, message_type=msg.message_type))
            finally:
                self._writing = False
                if self._idle is not None:
                    self._idle.set()
            if buf:  # sent by another task meanwhile
                await self.flush()
            return
        buf.append(msg)
        if self._writing:
            # the write in progress takes this one next; wait only when a window's
            # worth is already queued (back-pressure)
            while self._writing and len(buf) >= self._limit:
                if self._idle is None:
                    self._idle = asyncio.Event()
                self._idle.clear()
                await self._idle.wait()
            return
        if self.hold and len(buf) < self._limit:
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
            return
        await self.flush()

    async def _flush_later(self) -> None:
        try:
            await self.flush()
        except Exception as exc:  # noqa: BLE001 - the call is gone; plugin code's own
            log.debug("bidi flush failed: %r", exc)  # next send or read reports it

    async def flush(self) -> None:
        """Write everything held, in order (a write already in progress does it)."""
        if self._writing:
            return
        self._writing = True
        try:
            buf = self.buf
            while buf:
                await self._write(self._next_message(buf))
        finally:
            self._writing = False
            if self._idle is not None:
                self._idle.set()

    def _next_message(self, buf: list[BidiMessage]) -> pb.InvokeServiceBidiResponse:
        """Take the head of `buf` and the frames of its kind right behind it (no
        metadata, up to the host's limit and MAX_BATCH_BYTES) as one message."""
        head = buf[0]
        n = 1
        if not head.metadata:
            kind = head.message_type
            size = len(head.data)
            while n < len(buf) and n < self._limit:
                nxt = buf[n]
                if nxt.metadata or nxt.message_type != kind:
                    break
                size += len(nxt.data)
                if size > wire.MAX_BATCH_BYTES:
                    break
                n += 1
        if n == 1:
            del buf[0]
            if head.metadata:
                return pb.InvokeServiceBidiResponse(
                    data=head.data, message_type=head.message_type, metadata=head.metadata)
            return pb.InvokeServiceBidiResponse(data=head.data, message_type=head.message_type)
        group = buf[:n]
        del buf[:n]
        data, md = wire.pack_frames([g.data for g in group])
        counts = wire.PACK_COUNTS
        counts.written += 1
        counts.frames_written += n
        return pb.InvokeServiceBidiResponse(data=data, message_type=head.message_type,
                                            metadata=md)

    async def drain(self) -> None:
        """Plugin code is done: write what is still held (after a flusher's write)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await flusher
        await self.flush()

    def abandon(self) -> None:
        """The call is cancelled: drop what is held and stop the flusher."""
        self.buf.clear()
        if self._flusher is not None:
            self._flusher.cancel()
