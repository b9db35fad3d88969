"""What benchmarks/memory.py, cancel.py, realtime.py and coldstart.py need beyond
benchmarks/harness.py: a lean WebSocket client, the realtime protocol's frames, and
small process helpers those scripts share.

- `WsClient`: a WebSocket client on trio raw sockets and wsproto (the state machine
  hypercorn itself uses), so the client's cost per frame is small and the same for
  every system. `receive()` returns whole messages stamped with `time.monotonic()` at
  the read that completed them. `abort()` drops the TCP connection without a close
  frame (a client that crashes or loses its network); `aclose()` says goodbye first.
- `run_task(...)`, `FINISH_TASK`, `frame_seq(text)`: AOG's realtime speech protocol as
  the realtime stub (benchmarks/realtime_plugin) answers it.
- `start_direct_ws`, `start_realtime_gateway`, `adopt`: the realtime systems (the
  direct WebSocket baseline, the gateway with the realtime stub plugin) as harness
  `System`s, handed to a `harness.Bench` so it measures, reports and stops them.
- `read_events`, `raise_fd_limit`: the stubs' event lines; the client's fd limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

HERE = Path(__file__).resolve().parent
REALTIME_PLUGIN_DIR = HERE / "realtime_plugin"
REALTIME_PLUGIN = "realtime-plugin"
REALTIME_PATH = "/aog/v0.2/services/speech-to-text-ws"
HOST = "127.0.0.1"
READ_SIZE = 65536

FINISH_TASK = json.dumps({"task": "speech-to-text-ws", "action": "finish-task"})


def run_task(first_delay: float = 0.0) -> str:
    """A run-task for 16 kHz PCM16 mono; `first_delay` holds the stub's first answer."""
    params: dict[str, object] = {"format": "pcm", "sample_rate": 16000, "language": "en"}
    if first_delay:
        params["first_delay"] = first_delay
    return json.dumps({"task": "speech-to-text-ws", "action": "run-task",
                       "model": "stub-asr", "parameters": params})


_FRAME_MARK = '"text":"frame '


def frame_seq(text: str) -> int:
    """The sequence number a `result-generated` partial of the stub names, or -1."""
    i = text.find(_FRAME_MARK)
    if i < 0:
        return -1
    j = i + len(_FRAME_MARK)
    return int(text[j:text.index('"', j)])


def event_name(text: str) -> str:
    """A server event's `header.event`, cheaply (the stub's events, AOG's envelope)."""
    i = text.find('"event":')
    if i < 0:
        return ""
    j = text.index('"', i + 8)
    return text[j + 1:text.index('"', j + 1)]


class WsError(Exception):
    """The WebSocket could not be opened or broke; the message says what happened."""


@dataclass
class WsClient:
    """One client WebSocket over a trio socket stream (see the module docstring)."""

    stream: trio.SocketStream
    ws: WSConnection
    pending: list[tuple[float, str | bytes]] = field(default_factory=list)
    closed: bool = False
    _text: list[str] = field(default_factory=list)
    _binary: bytearray = field(default_factory=bytearray)

    @classmethod
    async def connect(cls, port: int, path: str, host: str = HOST) -> WsClient:
        stream = await trio.open_tcp_stream(host, port)
        ws = WSConnection(ConnectionType.CLIENT)
        client = cls(stream, ws)
        try:
            await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=path)))
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise WsError(f"{host}:{port}{path} closed the connection during the "
                                  "WebSocket handshake")
                ws.receive_data(data)
                accepted, reply = client._absorb(time.monotonic())
                if reply:
                    await stream.send_all(reply)
                if accepted:
                    return client
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise

    def _absorb(self, now: float) -> tuple[bool, bytes]:
        """Turn wsproto events into `pending` messages. Returns (handshake accepted,
        bytes to send back: pongs and the close reply)."""
        accepted = False
        out = bytearray()
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                accepted = True
            elif isinstance(ev, RejectConnection | RejectData):
                raise WsError(f"the server refused the WebSocket: {ev!r}")
            elif isinstance(ev, TextMessage):
                self._text.append(ev.data)
                if ev.message_finished:
                    self.pending.append((now, "".join(self._text)))
                    self._text.clear()
            elif isinstance(ev, BytesMessage):
                self._binary += ev.data
                if ev.message_finished:
                    self.pending.append((now, bytes(self._binary)))
                    self._binary.clear()
            elif isinstance(ev, CloseConnection):
                self.closed = True
                with contextlib.suppress(Exception):
                    out += self.ws.send(ev.response())
            elif isinstance(ev, Ping):
                out += self.ws.send(ev.response())
        return accepted, bytes(out)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def _fill(self) -> None:
        """Read until at least one whole message is pending. Raises WsError if the
        server closed the connection."""
        while not self.pending:
            if self.closed:
                raise WsError("the server closed the WebSocket")
            data = await self.stream.receive_some(READ_SIZE)
            now = time.monotonic()
            if not data:
                self.closed = True
                raise WsError("the server closed the connection")
            self.ws.receive_data(data)
            _, reply = self._absorb(now)
            if reply:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(reply)

    async def receive(self) -> list[tuple[float, str | bytes]]:
        """The next whole messages (at least one), each with its arrival time."""
        await self._fill()
        out, self.pending = self.pending, []
        return out

    async def receive_text(self) -> tuple[float, str]:
        """The next text message (binary ones are skipped)."""
        while True:
            await self._fill()
            t, msg = self.pending.pop(0)
            if isinstance(msg, str):
                return t, msg

    async def aclose(self) -> None:
        """A polite close: a close frame, then the TCP connection."""
        with trio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
            await self.stream.aclose()
        self.closed = True

    async def abort(self) -> None:
        """Drop the TCP connection at once, no close frame."""
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        self.closed = True


# ---- systems the harness does not start itself -------------------------------------


def start_direct_ws(tmp: Path, events: Path | None = None, name: str = "direct") -> h.System:
    """The realtime direct baseline (realtime_plugin/direct_ws.py) as a harness System,
    measured like any other (its one process)."""
    port = h.free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, str(REALTIME_PLUGIN_DIR / "direct_ws.py"), "--port", str(port)]
    if events is not None:
        argv += ["--events", str(events)]
    sut = h.System(name, h.popen(argv, log), port, log, paths={"ws": REALTIME_PATH})
    try:
        deadline = time.monotonic() + 30
        while True:
            if sut.proc.poll() is not None:
                raise RuntimeError(f"direct_ws.py exited with {sut.proc.returncode}; log "
                                   f"{log}:\n{h.tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"direct_ws.py did not listen on :{port} in 30 s")
            time.sleep(0.05)
        sut.roles = {sut.proc.pid: "direct ws server"}
    except BaseException:
        h.stop(sut)
        raise
    return sut


def start_realtime_gateway(tmp: Path, stub: h.System, events: Path | None = None,
                           workers: int | None = None, name: str = "aogstream") -> h.System:
    """The gateway with the realtime stub plugin (benchmarks/realtime_plugin). The plugin
    inherits the gateway's environment, which is how it learns where to record its
    events."""
    if events is not None:
        os.environ["REALTIME_PLUGIN_EVENTS"] = str(events)
    try:
        sut = h.start_aogstream(tmp, stub, name=name, plugin_dir=REALTIME_PLUGIN_DIR,
                                plugin_name=REALTIME_PLUGIN, workers=workers)
    finally:
        os.environ.pop("REALTIME_PLUGIN_EVENTS", None)
    sut.paths = {"ws": REALTIME_PATH}
    return sut


def adopt(bench: h.Bench, sut: h.System) -> h.System:
    """Make `bench` report, measure and stop a system it did not start itself."""
    bench.systems[sut.name] = sut
    bench._started.append(sut)  # stopped in Bench.__exit__ like its own
    return sut


def read_events(path: Path) -> list[dict[str, object]]:
    """The JSON lines a realtime stub (plugin or direct) recorded; [] if none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file soft limit toward `want` (children inherit it);
    returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
