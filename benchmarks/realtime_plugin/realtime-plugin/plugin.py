"""realtime-plugin: a stub `speech-to-text-ws` plugin for the realtime and
cancellation benchmarks, written with aogstream.sdk.

It speaks AOG's realtime protocol as a plugin does (the gateway sends `task-started`
itself): the host forwards the client's run-task (text), PCM frames (binary) and
finish-task (text). This plugin decodes nothing: it answers every binary frame at
once with a `result-generated` partial whose text names the frame's sequence number
in the task (0, 1, 2 …), so a client can pair each answer with the frame it sent and
measure the latency the gateway adds per frame. finish-task is answered with
`task-finished`. The event bytes come from `events.py` beside this file, which the
direct baseline (benchmarks/realtime_plugin/direct_ws.py) imports too, so both systems
send identical frames.

Run-task `parameters` the benchmarks may set:
- `first_delay` (seconds, default 0): wait this long before answering the first
  frame — the "waiting for the first token" window of benchmarks/cancel.py.

When REALTIME_PLUGIN_EVENTS names a file, the plugin appends JSON lines there
(`{"event", "t", "conn", "frames"}`, `t` = time.monotonic(): CLOCK_MONOTONIC is
system-wide on Linux, so the benchmark compares it with its own clock): `start` at
run-task, `cancelled` when the host cancels the session (the client left), `finished`
at finish-task, `closed` if the host ends the input without either. Nothing is
recorded per frame, so the realtime figures pay no I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from events import finished_event, result_event

from aogstream.sdk import BidiMessage, BidirectionalPlugin, LocalPluginProvider, serve

EVENTS = os.environ.get("REALTIME_PLUGIN_EVENTS", "")


def record(event: str, **fields: Any) -> None:
    """One JSON line in the events file (only when the benchmark asked for it)."""
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")


class RealtimeStub(LocalPluginProvider, BidirectionalPlugin):
    """Answers each audio frame at once; keeps no per-session state but a counter."""

    async def invoke_service_bidirectional(
        self, service_name: str, ws_conn_id: str, auth_info: str,
        incoming: AsyncIterator[BidiMessage], send: Any,
    ) -> None:
        task_id = ws_conn_id
        seq = 0
        first_delay = 0.0
        finished = False  # the host cancels the call once task-finished is through
        try:
            async for msg in incoming:
                if msg.message_type == "binary":
                    if seq == 0 and first_delay:
                        await asyncio.sleep(first_delay)
                    await send(BidiMessage(result_event(task_id, seq), "text"))
                    seq += 1
                    continue
                ctl = json.loads(msg.data or b"{}")
                task_id = str(ctl.get("task_id") or task_id)
                action = ctl.get("action")
                if action == "run-task":
                    params = ctl.get("parameters") or {}
                    first_delay = float(params.get("first_delay") or 0)
                    seq = 0
                    record("start", conn=task_id)
                elif action == "finish-task":
                    finished = True
                    record("finished", conn=task_id, frames=seq)
                    await send(BidiMessage(finished_event(task_id), "text"))
                    return
            record("closed", conn=task_id, frames=seq)  # the host half-closed instead
        except asyncio.CancelledError:
            if not finished:
                record("cancelled", conn=task_id, frames=seq)
            raise

    async def health_check(self) -> None:
        return None

    async def check_engine(self) -> bool:
        return True


if __name__ == "__main__":
    serve(RealtimeStub())
