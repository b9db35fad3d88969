"""A test plugin written with aogstream.sdk: it streams tokens, sleeps, fails and
crashes on request, and records what it saw (notably cancellations) as JSON lines in
the file named by ECHO_PLUGIN_EVENTS, with CLOCK_MONOTONIC times (system-wide, so
tests can compare them with their own clock)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from aogstream.rpc.wire import PACK_COUNTS
from aogstream.sdk import (
    BidiMessage,
    BidirectionalPlugin,
    LocalPluginProvider,
    PluginError,
    StreamablePlugin,
    current_transport,
    serve,
)

EVENTS = os.environ.get("ECHO_PLUGIN_EVENTS", "")


def record(event: str, **fields: Any) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "t": time.monotonic(), "pid": os.getpid(),
                                **fields}) + "\n")


def chunk(tag: str, content: str, finished: bool = False) -> dict[str, Any]:
    # AOG's created_at is an RFC 3339 string (the flavor templates convert it)
    stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    out: dict[str, Any] = {"id": tag, "model": "echo", "created_at": stamp,
                           "message": {"role": "assistant", "content": content},
                           "finished": finished}
    if finished:
        out["finish_reason"] = "stop"
    return out


class Echo(LocalPluginProvider, StreamablePlugin, BidirectionalPlugin):
    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        req = json.loads(request or b"{}")
        tag = str(req.get("id", ""))
        record("unary", service=service_name, id=tag, transport=current_transport())
        try:
            await asyncio.sleep(float(req.get("sleep", 0)))
        except asyncio.CancelledError:
            record("cancelled", service=service_name, id=tag)
            raise
        if req.get("crash"):
            os._exit(3)
        if req.get("fail_code"):
            raise PluginError(int(req["fail_code"]), str(req.get("fail_message", "asked to fail")))
        if service_name == "chat":
            text = "".join(f"tok{i} " for i in range(int(req.get("tokens", 5))))
            return json.dumps(chunk(tag, text, True)).encode()
        return json.dumps({"id": tag, "service": service_name, "echo": req}).encode()

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        req = json.loads(request or b"{}")
        tag = str(req.get("id", ""))
        n = int(req.get("tokens", 5))
        interval = float(req.get("interval", 0))
        pad = "x" * int(req.get("pad", 0))
        record("stream-start", service=service_name, id=tag, transport=current_transport())
        sent = 0
        try:
            await asyncio.sleep(float(req.get("first_delay", 0)))
            for i in range(n):
                if req.get("crash_after") is not None and i == int(req["crash_after"]):
                    os._exit(4)
                if req.get("error_after") is not None and i == int(req["error_after"]):
                    raise PluginError(11, "asked to fail mid-stream")
                yield chunk(tag, f"tok{i} {pad}")
                sent += 1
                if req.get("report_every") and sent % int(req["report_every"]) == 0:
                    record("sent", id=tag, n=sent)
                if interval:
                    await asyncio.sleep(interval)
            yield chunk(tag, "", True)
        except asyncio.CancelledError:
            record("cancelled", service=service_name, id=tag, sent=sent)
            raise
        record("stream-end", id=tag, sent=sent)

    async def invoke_service_bidirectional(self, service_name: str, ws_conn_id: str,
                                           auth_info: str, incoming: AsyncIterator[BidiMessage],
                                           send: Any) -> None:
        record("bidi-start", conn=ws_conn_id, transport=current_transport())
        try:
            async for msg in incoming:
                if msg.message_type == "text" and msg.data == b"crash":
                    os._exit(5)
                if msg.message_type == "text" and msg.data == b"fail":
                    raise PluginError(11, "asked to fail")
                if msg.message_type == "text" and msg.data == b"pack-counts":
                    # how many packed messages this process read and wrote so far
                    await send(BidiMessage.text(PACK_COUNTS.as_dict()))
                    continue
                if msg.message_type == "text" and msg.data == b"transport":
                    # which transport serves this session: "grpc", or "lane" (rpc/lane.py)
                    await send(BidiMessage.text({"transport": current_transport()}))
                    continue
                await send(BidiMessage(msg.data, msg.message_type))
        except asyncio.CancelledError:
            record("cancelled", conn=ws_conn_id)
            raise
        record("bidi-end", conn=ws_conn_id)

    async def health_check(self) -> None:
        return None

    async def check_engine(self) -> bool:
        return True


if __name__ == "__main__":
    serve(Echo())
