"""One bidirectional session of a plugin: host frames in, plugin frames out.

The host's frames are read by a pump task into a bounded queue that plugin code reads
as `incoming`; what plugin code sends goes straight back. The pump is what lets a
cancelled call look cancelled to plugin code (not like a clean end of input: see
`EOF_GRACE_S`), and the bounded queue is the session's back-pressure. The servicer
only checks the first message and picks the plugin; the session itself lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

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
    queue: asyncio.Queue[BidiMessage | None] = asyncio.Queue(maxsize=64)
    if first.data or first.message_type:
        queue.put_nowait(
            BidiMessage(first.data, first.message_type or "text", dict(first.metadata))
        )

    async def pump() -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                await asyncio.sleep(EOF_GRACE_S)
                await queue.put(None)
                return
            await queue.put(BidiMessage(msg.data, msg.message_type, dict(msg.metadata)))

    async def incoming() -> AsyncIterator[BidiMessage]:
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    async def send(out: BidiMessage) -> None:
        await context.write(
            pb.InvokeServiceBidiResponse(
                code=0, data=out.data, message_type=out.message_type,
                metadata=out.metadata,
            )
        )

    pump_task = asyncio.ensure_future(pump())
    try:
        await plugin.invoke_service_bidirectional(
            first.service_name,
            first.metadata.get("ws_conn_id", ""),
            first.auth_info,
            incoming(),
            send,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        code, msg = error_code(exc)
        log.warning("bidi session of %s failed: %s", first.service_name, msg)
        with contextlib.suppress(Exception):
            await context.write(pb.InvokeServiceBidiResponse(code=code, message=msg))
    finally:
        pump_task.cancel()
