"""direct_ws: the realtime benchmarks' direct baseline, a WebSocket server that behaves
like the gateway and benchmarks/realtime_plugin/realtime-plugin together, with no relay.

    .venv/bin/python benchmarks/realtime_plugin/direct_ws.py --port P [--events FILE]

trio raw sockets and wsproto (the WebSocket state machine hypercorn uses), one task per
connection, any path. On a `run-task` text frame it answers `task-started` (the bytes
the gateway sends), on each binary frame a `result-generated` partial naming the
frame's sequence number, on `finish-task` a `task-finished` (those two built by the
plugin's own `events.py`, so both systems send identical frames). The run-task
parameter `first_delay` holds the first answer that long, as the plugin does. Frames
that arrive together are answered with one write, as a lean server would.

With `--events FILE` it appends the plugin's JSON lines (`start`, `finished`, and
`cancelled` when the client leaves during a task, `t` = time.monotonic()), so
benchmarks/cancel.py reads both systems the same way. This file sits beside the plugin
folder, not in it: the gateway only loads sub-folders that hold a plugin.yaml.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

HERE = Path(__file__).resolve().parent
READ_SIZE = 65536


def _load_events() -> Any:
    """The plugin's events.py (its folder name has a dash, so load it by path)."""
    spec = importlib.util.spec_from_file_location(
        "realtime_plugin_events", HERE / "realtime-plugin" / "events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVENTS = _load_events()


def task_started(task_id: str) -> str:
    """The gateway's own `task-started` (aogstream.bidi.realtime_asr.event)."""
    return json.dumps({"header": {"action": "", "streaming": "", "task_id": task_id,
                                  "event": "task-started"}, "payload": {}},
                      ensure_ascii=False)


class Recorder:
    """The plugin's event lines, when asked for (`--events`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")


class Session:
    """One connection: the WebSocket state machine and the running task's state."""

    def __init__(self, stream: trio.SocketStream, record: Recorder) -> None:
        self.stream = stream
        self.record = record
        self.ws = WSConnection(ConnectionType.SERVER)
        self.conn_id = str(uuid.uuid4())
        self.running = False
        self.seq = 0
        self.first_delay = 0.0
        self.held = 0  # frames waiting for first_delay to pass
        self.due: float | None = None  # when the held frames are answered
        self.text: list[str] = []
        self.binary = bytearray()

    async def run(self) -> None:
        try:
            while True:
                data = await self._read()
                if data is None:
                    continue  # the held answers went out
                if not data:
                    self._left()
                    return
                self.ws.receive_data(data)
                out, done = self._handle()
                if out:
                    await self.stream.send_all(out)
                if done:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._left()
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _read(self) -> bytes | None:
        """The next bytes, or None after answering held frames whose delay passed."""
        if self.due is None:
            return await self.stream.receive_some(READ_SIZE)
        with trio.move_on_at(self.due):
            return await self.stream.receive_some(READ_SIZE)
        out = bytearray()
        for _ in range(self.held):
            out += self._result()
        self.held, self.due, self.first_delay = 0, None, 0.0
        await self.stream.send_all(out)
        return None

    def _result(self) -> bytes:
        msg = EVENTS.result_event(self.conn_id, self.seq).decode()
        self.seq += 1
        return self.ws.send(TextMessage(data=msg))

    def _left(self) -> None:
        if self.running:
            self.running = False
            self.record("cancelled", conn=self.conn_id, frames=self.seq)

    def _handle(self) -> tuple[bytes, bool]:
        out = bytearray()
        for ev in self.ws.events():
            if isinstance(ev, Request):
                out += self.ws.send(AcceptConnection())
            elif isinstance(ev, BytesMessage):
                self.binary += ev.data
                if ev.message_finished:
                    self.binary.clear()
                    if self.held or (self.seq == 0 and self.first_delay):
                        self.held += 1
                        if self.due is None:
                            self.due = trio.current_time() + self.first_delay
                    else:
                        out += self._result()
            elif isinstance(ev, TextMessage):
                self.text.append(ev.data)
                if ev.message_finished:
                    ctl = json.loads("".join(self.text) or "{}")
                    self.text.clear()
                    out += self._control(ctl)
            elif isinstance(ev, CloseConnection):
                self._left()
                out += self.ws.send(ev.response())
                return bytes(out), True
            elif isinstance(ev, Ping):
                out += self.ws.send(ev.response())
        return bytes(out), False

    def _control(self, ctl: dict[str, Any]) -> bytes:
        action = ctl.get("action")
        if action == "run-task":
            params = ctl.get("parameters") or {}
            self.first_delay = float(params.get("first_delay") or 0)
            self.seq, self.running = 0, True
            self.record("start", conn=self.conn_id)
            return self.ws.send(TextMessage(data=task_started(self.conn_id)))
        if action == "finish-task":
            self.running = False
            self.record("finished", conn=self.conn_id, frames=self.seq)
            return self.ws.send(TextMessage(data=EVENTS.finished_event(self.conn_id).decode()))
        return b""


async def serve(port: int, events: str) -> None:
    """Serve until SIGINT or SIGTERM (a clean exit, no traceback)."""
    record = Recorder(events)

    async def handler(stream: trio.SocketStream) -> None:
        await Session(stream, record).run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(trio.serve_tcp, handler, port, host="127.0.0.1",
                                             backlog=4096))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--events", default="", help="append start/cancelled/finished JSON lines")
    args = ap.parse_args(argv)
    trio.run(serve, args.port, args.events)


if __name__ == "__main__":
    main()
