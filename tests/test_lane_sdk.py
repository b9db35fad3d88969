"""The plugin's end of the lane (`aogstream.sdk.lane_server`, contract in `rpc/lane.py`).

Real parts: the echo plugin (tests/plugins/echo-plugin, built on aogstream.sdk) runs as
a real process started the way our host starts it (magic cookie, plus the lane's offer
in the environment), its handshake line read from its stdout; the tests then speak the
lane's frames to it over its real unix socket with a small trio client built on the
shared codec (`rpc.lane`), and read what the plugin recorded (its events file) to see
what plugin code saw. Proven: the lane's socket exists beside the gRPC one only when
offered and is gone after shutdown; the three rpcs answer as the contract says (a
unary answer is one MSG then END OK; stream events then END; bidi frames both ways,
packed bursts included when the call's metadata offers packing); calls follow each
other on one connection, an unknown rpc is refused without losing the connection;
closing the connection cancels plugin code (it records its CancelledError); OPEN's
timeout ends the call DEADLINE_EXCEEDED; plugin code reads `current_transport()` as
"lane" over the lane and "grpc" over gRPC.

The last tests are unit tests of `lane_server` alone, in process, with a stand-in
servicer (the only fake here): a handler that raises ends its call UNKNOWN and the
connection serves on, and a stream the host does not read waits on the socket instead
of buffering without bound.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from hostutil import wait_event

from aogstream.rpc import lane, wire
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.gen import provider_pb2_grpc
from aogstream.rpc.handshake import COOKIE_KEY, COOKIE_VALUE, parse_handshake
from aogstream.sdk import lane_server

ECHO = Path(__file__).parent / "plugins" / "echo-plugin"


# ---- a plugin process, started as our host starts it -------------------------------------


class Plugin:
    def __init__(self, proc: trio.Process, address: str, events: Path) -> None:
        self.proc = proc
        self.address = address
        self.events = events

    @property
    def lane_path(self) -> str:
        path = lane.lane_path("unix", self.address)
        assert path is not None
        return path


@asynccontextmanager
async def echo_plugin(tmp_path: Path, offer: bool, network: str = "unix",
                      ) -> AsyncIterator[Plugin]:
    events = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if k != lane.LANE_ENV}
    env.update({COOKIE_KEY: COOKIE_VALUE, "AOGSTREAM_PYTHON": sys.executable,
                "ECHO_PLUGIN_EVENTS": str(events), "PLUGIN_UNIX_SOCKET_DIR": str(tmp_path)})
    if offer:
        env[lane.LANE_ENV] = lane.LANE_OFFER
    if network != "unix":
        env["AOGSTREAM_PLUGIN_NETWORK"] = network
    proc = await trio.lowlevel.open_process([str(ECHO / "bin" / "echo-plugin")], env=env,
                                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await proc.stdout.receive_some(4096)
                assert data, "the plugin exited before its handshake line"
                line += data
        got, address = parse_handshake(line.decode())
        assert got == network
        yield Plugin(proc, address, events)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # the plugin's own orderly shutdown
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class LaneClient:
    """The host's side of one lane connection, as plain frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = lane.FrameDecoder()

    async def send(self, *frames: bytes) -> None:
        await self.stream.send_all(b"".join(frames))

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame, or None when the plugin closed the connection."""
        while True:
            got = self.decoder.next()
            if got is not None:
                return got
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    async def until_end(self) -> tuple[list[tuple[int, bytes]], tuple[str, str]]:
        """Every frame of the call up to its END, and the END's (code, details)."""
        frames = []
        with trio.fail_after(20):
            while True:
                got = await self.frame()
                assert got is not None, f"connection closed before END, after {frames}"
                if got[0] == lane.END:
                    return frames, lane.parse_end(got[1])
                frames.append(got)

    async def unary(self, service: str, body: dict[str, Any], timeout: float | None = None,
                    ) -> tuple[list[tuple[int, bytes]], tuple[str, str]]:
        req = pb.InvokeServiceRequest(service_name=service, request_data=json.dumps(body).encode())
        await self.send(lane.open_frame("InvokeService", (), timeout),
                        lane.frame(lane.MSG, req.SerializeToString()),
                        lane.frame(lane.HALF_CLOSE))
        return await self.until_end()


@asynccontextmanager
async def lane_client(plugin: Plugin) -> AsyncIterator[LaneClient]:
    stream = await trio.open_unix_socket(plugin.lane_path)
    try:
        yield LaneClient(stream)
    finally:
        await stream.aclose()


def _stream_request(service: str, body: dict[str, Any]) -> bytes:
    req = pb.InvokeServiceRequest(service_name=service, request_data=json.dumps(body).encode())
    return lane.frame(lane.MSG, req.SerializeToString())


def _bidi(data: bytes, kind: str = "binary", **fields: Any) -> bytes:
    return lane.frame(lane.MSG, pb.InvokeServiceBidiRequest(
        data=data, message_type=kind, **fields).SerializeToString())


def _bidi_frames(frames: list[tuple[int, bytes]]) -> list[tuple[bytes, str]]:
    """What the plugin sent in a bidi call, frame by frame (packed messages unpacked)."""
    out = []
    for kind, payload in frames:
        assert kind == lane.MSG
        msg = pb.InvokeServiceBidiResponse.FromString(payload)
        md = msg.metadata
        if md and wire.FRAME_LENGTHS_KEY in md:
            packed = wire.unpack_frames(msg.data, md[wire.FRAME_LENGTHS_KEY])
            assert packed is not None
            out.extend((f, msg.message_type) for f in packed)
        else:
            out.append((msg.data, msg.message_type))
    return out


# ---- negotiation -------------------------------------------------------------------------


async def test_lane_socket_exists_beside_the_grpc_socket_only_when_offered(tmp_path):
    for offer in (False, True):
        base = tmp_path / ("offered" if offer else "plain")
        base.mkdir()
        async with echo_plugin(base, offer) as plugin:
            assert os.path.exists(plugin.address)
            assert os.path.exists(plugin.lane_path) is offer
            folder = os.path.dirname(plugin.address)
        assert not os.path.exists(folder), "shutdown left the plugin's socket folder behind"


async def test_a_plugin_on_tcp_opens_no_lane_even_when_offered(tmp_path):
    async with echo_plugin(tmp_path, offer=True, network="tcp") as plugin:
        assert lane.lane_path("tcp", plugin.address) is None
        assert not list(tmp_path.glob("**/*.sock"))


async def test_grpc_calls_of_a_plugin_offered_the_lane_still_read_grpc(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin:
        async with lane_client(plugin) as c:  # a lane call first: its "lane" must not leak
            _, end = await c.unary("generate", {"id": "over-lane"})
            assert end == ("OK", "")
        def call() -> pb.InvokeServiceResponse:
            with grpc.insecure_channel(f"unix:{plugin.address}") as channel:
                stub = provider_pb2_grpc.ProviderServiceStub(channel)
                return stub.InvokeService(pb.InvokeServiceRequest(
                    service_name="generate", request_data=b'{"id": "over-grpc"}'), timeout=20)

        resp = await trio.to_thread.run_sync(call)
        assert resp.code == 0 and json.loads(resp.response_data)["id"] == "over-grpc"
        ev = await wait_event(plugin.events, event="unary", id="over-grpc")
        assert ev is not None and ev["transport"] == "grpc"


# ---- the three rpcs ----------------------------------------------------------------------


async def test_unary_call_is_answered_with_one_message_then_end_ok(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        frames, end = await c.unary("generate", {"id": "u1", "x": 1})
        assert end == ("OK", "")
        assert [k for k, _ in frames] == [lane.MSG]
        resp = pb.InvokeServiceResponse.FromString(frames[0][1])
        assert resp.code == 0
        assert json.loads(resp.response_data) == {"id": "u1", "service": "generate",
                                                  "echo": {"id": "u1", "x": 1}}
        ev = await wait_event(plugin.events, event="unary", id="u1")
        assert ev is not None and ev["transport"] == "lane"


async def test_business_errors_travel_in_the_message_and_the_call_still_ends_ok(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        frames, end = await c.unary("generate", {"fail_code": 40001, "fail_message": "nope"})
        assert end == ("OK", "")
        resp = pb.InvokeServiceResponse.FromString(frames[0][1])
        assert (resp.code, resp.message) == (40001, "nope")


async def test_stream_call_sends_its_events_then_end_ok(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        await c.send(lane.open_frame("InvokeServiceStream"),
                     _stream_request("chat", {"id": "s1", "tokens": 4}),
                     lane.frame(lane.HALF_CLOSE))
        frames, end = await c.until_end()
        assert end == ("OK", "")
        msgs = [pb.InvokeServiceStreamResponse.FromString(p) for _, p in frames]
        body = b"".join(m.chunk_data for m in msgs)
        events = [json.loads(e[len(b"data: "):]) for e in body.split(b"\n\n") if e]
        assert [e["message"]["content"] for e in events] == \
            ["tok0 ", "tok1 ", "tok2 ", "tok3 ", ""]
        assert msgs[-1].is_final and all(m.code == 0 for m in msgs)
        ev = await wait_event(plugin.events, event="stream-start", id="s1")
        assert ev is not None and ev["transport"] == "lane"


async def test_bidi_frames_travel_both_ways_with_packed_bursts_when_offered(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        burst = [b"f%03d" % i for i in range(20)]
        packed, md = wire.pack_frames(burst)
        await c.send(
            lane.open_frame("InvokeServiceBidi", ((wire.BATCH_FRAMES_KEY, "16"),)),
            _bidi(b"", "", service_name="echo-ws", is_first=True, metadata={"ws_conn_id": "b1"}),
            _bidi(b"single"),
            _bidi(packed, "binary", metadata=md),
            _bidi(b"transport", "text"),
            lane.frame(lane.HALF_CLOSE))
        frames, end = await c.until_end()
        assert end == ("OK", "")
        # the session answered the offer in its initial metadata, before any message
        assert frames[0][0] == lane.HEADERS
        assert dict(lane.parse_headers(frames[0][1]))[wire.BATCH_FRAMES_KEY]
        got = _bidi_frames(frames[1:])
        assert got == ([(b"single", "binary")] + [(f, "binary") for f in burst]
                       + [(b'{"transport":"lane"}', "text")])
        # the echoes of the burst went back packed, not one message per frame
        assert len(frames) - 1 < len(got)
        ev = await wait_event(plugin.events, event="bidi-end", conn="b1")
        assert ev is not None


async def test_bidi_without_the_offer_sends_no_headers_and_one_frame_per_message(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        await c.send(lane.open_frame("InvokeServiceBidi"),
                     _bidi(b"", "", service_name="echo-ws", is_first=True),
                     *[_bidi(b"x%d" % i) for i in range(5)],
                     lane.frame(lane.HALF_CLOSE))
        frames, end = await c.until_end()
        assert end == ("OK", "")
        assert [k for k, _ in frames] == [lane.MSG] * 5
        assert _bidi_frames(frames) == [(b"x%d" % i, "binary") for i in range(5)]


async def test_calls_follow_each_other_on_one_connection(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        for i in range(3):
            frames, end = await c.unary("generate", {"id": f"seq{i}"})
            assert end == ("OK", "")
            assert json.loads(pb.InvokeServiceResponse.FromString(
                frames[0][1]).response_data)["id"] == f"seq{i}"
            await c.send(lane.open_frame("InvokeServiceStream"),
                         _stream_request("chat", {"id": f"sseq{i}", "tokens": 2}),
                         lane.frame(lane.HALF_CLOSE))
            frames, end = await c.until_end()
            assert end == ("OK", "") and frames


async def test_an_unknown_method_is_unimplemented_and_the_connection_still_serves(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        await c.send(lane.open_frame("GetManifest"),
                     lane.frame(lane.MSG, b""), lane.frame(lane.HALF_CLOSE))
        frames, (code, details) = await c.until_end()
        assert frames == [] and code == "UNIMPLEMENTED"
        assert "GetManifest" in details and "InvokeService" in details
        frames, end = await c.unary("generate", {"id": "after-unknown"})
        assert end == ("OK", "")


async def test_bytes_that_are_not_lane_frames_close_the_connection(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin:
        async with lane_client(plugin) as c:
            await c.send(b"GET / HTTP/1.1\r\n\r\n")
            with trio.fail_after(20):
                assert await c.frame() is None
        async with lane_client(plugin) as c:  # the lane itself serves on
            _, end = await c.unary("generate", {"id": "after-garbage"})
            assert end == ("OK", "")


# ---- cancellation and deadlines -----------------------------------------------------------


async def test_closing_the_connection_mid_stream_cancels_plugin_code(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin:
        async with lane_client(plugin) as c:
            await c.send(lane.open_frame("InvokeServiceStream"),
                         _stream_request("chat", {"id": "cut", "tokens": 100000,
                                                  "interval": 0.005}),
                         lane.frame(lane.HALF_CLOSE))
            with trio.fail_after(20):
                for _ in range(3):
                    got = await c.frame()
                    assert got is not None and got[0] == lane.MSG
        ev = await wait_event(plugin.events, timeout=20, event="cancelled", id="cut")
        assert ev is not None and 3 <= ev["sent"] < 100000
        assert await wait_event(plugin.events, timeout=0, event="stream-end", id="cut") is None


async def test_closing_the_connection_mid_session_cancels_bidi_plugin_code(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin:
        async with lane_client(plugin) as c:
            await c.send(lane.open_frame("InvokeServiceBidi"),
                         _bidi(b"", "", service_name="echo-ws", is_first=True,
                               metadata={"ws_conn_id": "cut-bidi"}),
                         _bidi(b"hello"))
            with trio.fail_after(20):
                got = await c.frame()
            assert got is not None and _bidi_frames([got]) == [(b"hello", "binary")]
        ev = await wait_event(plugin.events, timeout=20, event="cancelled", conn="cut-bidi")
        assert ev is not None


async def test_a_timeout_in_open_ends_the_call_deadline_exceeded(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        frames, (code, _) = await c.unary("generate", {"id": "slow", "sleep": 60}, timeout=0.3)
        assert frames == [] and code == "DEADLINE_EXCEEDED"
        # plugin code was cancelled, as by a gRPC deadline, and the connection serves on
        assert await wait_event(plugin.events, timeout=20, event="cancelled", id="slow")
        frames, end = await c.unary("generate", {"id": "after-deadline"}, timeout=20)
        assert end == ("OK", "")


async def test_a_timeout_in_open_ends_a_bidi_session_deadline_exceeded(tmp_path):
    async with echo_plugin(tmp_path, offer=True) as plugin, lane_client(plugin) as c:
        await c.send(lane.open_frame("InvokeServiceBidi", (), 2.0),
                     _bidi(b"", "", service_name="echo-ws", is_first=True,
                           metadata={"ws_conn_id": "slow-bidi"}),
                     _bidi(b"one"))
        frames, (code, _) = await c.until_end()
        assert _bidi_frames(frames) == [(b"one", "binary")] and code == "DEADLINE_EXCEEDED"
        assert await wait_event(plugin.events, timeout=20, event="cancelled", conn="slow-bidi")
        # what the host still sends of that session is dropped; the next call is served
        await c.send(_bidi(b"late"), lane.frame(lane.HALF_CLOSE))
        frames, end = await c.unary("generate", {"id": "after-bidi-deadline"})
        assert end == ("OK", "") and [k for k, _ in frames] == [lane.MSG]


# ---- lane_server alone (in process, a stand-in servicer) ---------------------------------


class _Servicer:
    """Only the three methods the lane calls; 'boom' raises, 'flood' streams `n`
    messages of `size` bytes, recording the server's write buffer as it goes."""

    def __init__(self) -> None:
        self.max_buffered = 0
        self.written = 0
        self.held = asyncio.Event()  # set when the transport first pauses the writer
        self.go = asyncio.Event()  # lets the bidi handler start reading
        self.read_paused = asyncio.Event()  # set when the connection first stops reading
        self.bidi_conn: Any = None
        self.cancelled = 0
        self.late: asyncio.Task[None] | None = None
        self.late_error: RuntimeError | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.all_cancelled = asyncio.Event()

    async def InvokeService(self, request: Any, context: Any) -> pb.InvokeServiceResponse:  # noqa: N802
        if request.service_name == "boom":
            raise RuntimeError("the handler broke")
        if request.service_name == "late":  # leaves a task that writes after the call
            async def write_late() -> None:
                await self.go.wait()
                try:
                    await context.write(pb.InvokeServiceResponse(message="too late"))
                except RuntimeError as exc:
                    self.late_error = exc

            self.late = asyncio.create_task(write_late())
        return pb.InvokeServiceResponse(code=0, response_data=request.request_data)

    async def InvokeServiceStream(self, request: Any, context: Any) -> None:  # noqa: N802
        body = json.loads(request.request_data)
        if body.get("hang"):  # writes one message, then waits until cancelled
            await context.write(pb.InvokeServiceStreamResponse(chunk_data=b"started"))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                if self.cancelled == body["hang"]:
                    self.all_cancelled.set()
                raise
        chunk = b"z" * body["size"]
        conn = context._conn
        pause = conn.pause_writing

        def paused() -> None:
            pause()
            self.held.set()

        conn.pause_writing = paused
        for _ in range(body["n"]):
            await context.write(pb.InvokeServiceStreamResponse(chunk_data=chunk))
            self.written += 1
            self.max_buffered = max(self.max_buffered, conn.transport.get_write_buffer_size())

    async def InvokeServiceBidi(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        if ("mode", "leave-reader") in context.invocation_metadata():
            self.reader = asyncio.create_task(context.read())  # outlives the call
            await asyncio.sleep(0)  # it waits for a message now
            return
        # reads nothing until told to, then echoes how many messages came, in order
        conn = self.bidi_conn = context._conn
        pause = conn.pause_reading

        def paused() -> None:
            pause()
            self.read_paused.set()

        conn.pause_reading = paused
        await self.go.wait()
        seen = []
        while (msg := await context.read()) is not grpc.aio.EOF:
            seen.append(int(msg.data))
        assert seen == list(range(len(seen)))
        await context.write(pb.InvokeServiceBidiResponse(data=str(len(seen)).encode()))


async def _read_until_end(reader: asyncio.StreamReader) -> tuple[list[tuple[int, bytes]],
                                                                 tuple[str, str]]:
    dec = lane.FrameDecoder()
    frames = []
    while True:
        got = dec.next()
        if got is None:
            data = await reader.read(1 << 16)
            assert data, "closed before END"
            dec.feed(data)
            continue
        if got[0] == lane.END:
            return frames, lane.parse_end(got[1])
        frames.append(got)


def _in_process(test: Any) -> None:
    """Run `test(servicer, server, path)` on an asyncio loop beside a lane server."""
    async def main() -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, lane.LANE_NAME)
            servicer = _Servicer()
            server = await lane_server.start_lane(servicer, path)  # type: ignore[arg-type]
            try:
                await asyncio.wait_for(test(servicer, server, path), 30)
            finally:
                await server.stop()
            assert not os.path.exists(path)

    asyncio.run(main())


def test_a_handler_that_raises_ends_its_call_unknown_and_the_connection_serves_on():
    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        req = pb.InvokeServiceRequest(service_name="boom").SerializeToString()
        writer.write(lane.open_frame("InvokeService") + lane.frame(lane.MSG, req)
                     + lane.frame(lane.HALF_CLOSE))
        frames, (code, details) = await _read_until_end(reader)
        assert frames == [] and code == "UNKNOWN" and "the handler broke" in details
        req = pb.InvokeServiceRequest(service_name="ok", request_data=b"again").SerializeToString()
        writer.write(lane.open_frame("InvokeService") + lane.frame(lane.MSG, req)
                     + lane.frame(lane.HALF_CLOSE))
        frames, end = await _read_until_end(reader)
        assert end == ("OK", "")
        assert pb.InvokeServiceResponse.FromString(frames[0][1]).response_data == b"again"
        writer.close()

    _in_process(test)


def test_a_write_after_its_call_ended_fails_and_never_reaches_the_next_call():
    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)

        def call(service: str) -> bytes:
            req = pb.InvokeServiceRequest(service_name=service, request_data=service.encode())
            return (lane.open_frame("InvokeService") + lane.frame(lane.MSG, req.SerializeToString())
                    + lane.frame(lane.HALF_CLOSE))

        writer.write(call("late"))
        _, end = await _read_until_end(reader)
        assert end == ("OK", "")
        servicer.go.set()
        assert servicer.late is not None
        await servicer.late
        assert servicer.late_error is not None and "has ended" in str(servicer.late_error)
        writer.write(call("next"))
        frames, end = await _read_until_end(reader)
        assert end == ("OK", "") and len(frames) == 1
        assert pb.InvokeServiceResponse.FromString(frames[0][1]).response_data == b"next"
        writer.close()

    _in_process(test)


def test_a_reader_left_behind_reads_eof_once_its_call_ended():
    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(lane.open_frame("InvokeServiceBidi", (("mode", "leave-reader"),)))
        _, end = await _read_until_end(reader)
        assert end == ("OK", "")
        assert servicer.reader is not None
        assert await servicer.reader is grpc.aio.EOF
        writer.close()

    _in_process(test)


def test_a_stream_the_host_does_not_read_waits_instead_of_buffering_without_bound():
    n, size = 400, 32 * 1024  # 12.5 MiB: far more than the socket and the buffer hold

    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        req = pb.InvokeServiceRequest(request_data=json.dumps({"n": n, "size": size}).encode())
        writer.write(lane.open_frame("InvokeServiceStream")
                     + lane.frame(lane.MSG, req.SerializeToString()) + lane.frame(lane.HALF_CLOSE))
        # wait until the handler is held by the full socket, without reading anything
        await servicer.held.wait()
        held_at = servicer.written
        assert held_at < n
        frames, end = await _read_until_end(reader)
        assert end == ("OK", "") and len(frames) == n == servicer.written
        # never more than the transport's high-water mark plus the message being written
        (conn,) = server.connections
        high = conn.transport.get_write_buffer_limits()[1]
        assert servicer.max_buffered <= high + size + 64
        writer.close()

    _in_process(test)


def test_a_bidi_handler_that_does_not_read_stops_the_connection_reading():
    n = 5000

    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(lane.open_frame("InvokeServiceBidi"))

        async def send_all() -> None:
            for i in range(n):
                writer.write(lane.frame(lane.MSG, pb.InvokeServiceBidiRequest(
                    data=str(i).encode() + b" " * 1000).SerializeToString()))
                await writer.drain()  # waits once the plugin stops reading
            writer.write(lane.frame(lane.HALF_CLOSE))

        sender = asyncio.create_task(send_all())
        # the plugin stops reading the socket while its handler reads nothing ...
        await servicer.read_paused.wait()
        conn = servicer.bidi_conn
        assert conn.reading_paused
        assert not sender.done() and conn.call is not None
        # ... holding at most one read's worth past its high mark, not the whole input
        assert len(conn.call.inbox) < n // 2
        servicer.go.set()
        frames, end = await _read_until_end(reader)
        await sender
        assert end == ("OK", "")
        assert pb.InvokeServiceBidiResponse.FromString(frames[0][1]).data == str(n).encode()
        writer.close()

    _in_process(test)


def test_a_cancelled_call_is_freed_at_once_not_left_to_the_garbage_collector():
    """The plugin runs with a lazy collector (`sdk.server._tune_gc`): a reference cycle
    per cancelled call (a realtime client that leaves) would pile up megabytes."""
    n = 20

    async def test(servicer: _Servicer, server: Any, path: str) -> None:
        gc.collect()
        gc.disable()
        try:
            for _ in range(n):
                reader, writer = await asyncio.open_unix_connection(path)
                req = pb.InvokeServiceRequest(request_data=json.dumps({"hang": n}).encode())
                writer.write(lane.open_frame("InvokeServiceStream")
                             + lane.frame(lane.MSG, req.SerializeToString()))
                dec = lane.FrameDecoder()
                while dec.next() is None:  # the handler runs: its first message came
                    dec.feed(await reader.read(1 << 16))
                writer.close()  # the host cancels the call
                await writer.wait_closed()
            await servicer.all_cancelled.wait()
            await asyncio.sleep(0)  # the connections' own close callbacks
            left = sum(isinstance(o, lane_server._Call | lane_server._LaneConnection)
                       for o in gc.get_objects())
            assert left == 0, f"{left} calls or connections are left for the collector"
        finally:
            gc.enable()

    _in_process(test)


@pytest.mark.parametrize("method", sorted(lane.LANE_METHODS))
def test_every_lane_method_has_a_handler(method):
    assert method in lane_server._KIND_OF
