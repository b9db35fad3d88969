"""One bidirectional session of a plugin: host frames in, plugin frames out.

Plugin code reads the host's frames as `incoming`, which reads the call itself (no
pump task and queue in between: a realtime frame every 20 ms per session paid a task
hop and a queue round trip each way for them); what plugin code sends goes straight
back. gRPC's own flow control is the session's back-pressure: a frame is read from
the call only when plugin code asks for the next one. `incoming` also makes a
cancelled call look cancelled to plugin code, not like a clean end of input (see
`EOF_GRACE_S`). The servicer only checks the first message and picks the plugin; the
session itself lives here.
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
    read = context.read
    write = context.write
    eof = grpc.aio.EOF

    async def incoming() -> AsyncIterator[BidiMessage]:
        if first.data or first.message_type:
            yield BidiMessage(first.data, first.message_type or "text", dict(first.metadata))
        while True:
            msg = await read()
            if msg is eof:
                await asyncio.sleep(EOF_GRACE_S)
                return
            # the map field is nearly always empty on frames after the first: copying
            # it only when it has entries saves most of the per-frame cost here
            yield BidiMessage(msg.data, msg.message_type,
                              dict(msg.metadata) if msg.metadata else {})

    response = pb.InvokeServiceBidiResponse

    async def send(out: BidiMessage) -> None:
        # setting the map field, even empty, costs more than the rest of the message
        if out.metadata:
            await write(response(data=out.data, message_type=out.message_type,
                                 metadata=out.metadata))
        else:
            await write(response(data=out.data, message_type=out.message_type))

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
