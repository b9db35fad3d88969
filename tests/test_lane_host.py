"""The host's end of the lane (`host.lane`), against a plugin end written here.

Real parts: `LaneChannel` and `PluginClient` as the gateway uses them, real unix
sockets in a temporary folder, the lane's codec (`rpc.lane`) on both sides, the real
protobuf messages. The plugin end is a small trio server in this module that speaks the
contract of `rpc.lane` and does what each test asks (answer, refuse, stay silent, hang
up); the SDK's own end is proven against this host end in its own tests. The supervisor
check builds the environment a plugin would be launched with, without launching one;
the worker check dials the real echo plugin over gRPC, with a lane socket bound beside
its socket here when the plugin did not make one itself.

Proven: a unary round trip reuses its connection and concurrent calls use several;
messages larger than the socket's buffer cross whole both ways; a stream's burst is
read at once and handed out by `receive_nowait`, and the connection is kept; after its
last message a stream's connection waits for the END, is reused once it came, and is
closed (the call cancelled) once the bridge's linger time is over without it; a bidi
session carries frames both ways with one task reading and another sending, packs
queued frames once the plugin said it unpacks them, and a reader parked on it flushes
what a `send_nowait` left behind; a deadline gives DEADLINE_EXCEEDED and closes the
connection (the plugin sees EOF), as does a caller cancelled mid-stream; a plugin that
hangs up mid-call gives UNAVAILABLE, and one that ends a call with a status gives that
status; a pooled connection the plugin closed is not reused; `close()` closes the idle
connections and refuses new calls; `end_reading` wakes a parked reader;
`AOGSTREAM_PLUGIN_LANE=off` means no offer; and a worker process dials the lane beside
the socket the primary reports only when the primary says the plugin serves on it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hostutil import ECHO_PLUGIN, running_plugin

from aogstream import manifest as m
from aogstream.config import Config
from aogstream.host import lane as host_lane
from aogstream.host.attached import AttachedPlugin
from aogstream.host.client import PluginClient
from aogstream.host.lane import LaneChannel, open_lane
from aogstream.host.process import PluginSupervisor
from aogstream.rpc import bridge, lane, wire
from aogstream.rpc.bridge import RpcFailure
from aogstream.rpc.gen import provider_pb2 as pb

SERVICE = "/protocol.ProviderService/"
UNARY = SERVICE + "InvokeService"
STREAM = SERVICE + "InvokeServiceStream"
BIDI = SERVICE + "InvokeServiceBidi"
# bound on every wait for something the other end does (never reached when it works)
WAIT_S = 5.0


def msg(message: Any) -> bytes:
    return lane.frame(lane.MSG, message.SerializeToString())


class FakePlugin:
    """A plugin's end of the lane: one task per connection, calls one at a time; what
    a call does is chosen by its request's `service_name`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accepted = 0
        self.eofs = 0  # connections the host closed (or that broke)
        self.opens: list[tuple[str, list[tuple[str, str]], float | None]] = []
        self.holding = 0
        self.ends_sent = 0
        self.release = trio.Event()
        self.go = trio.Event()
        self.bidi_msgs: list[pb.InvokeServiceBidiRequest] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, cond: Callable[[], bool], what: str) -> None:
        with trio.fail_after(WAIT_S):
            while not cond():
                await self._changed.wait()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        await trio.serve_listeners(self._connection, [listener], task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self._notify()
        decoder = lane.FrameDecoder()
        call: dict[str, Any] = {}
        try:
            async with trio.open_nursery() as nursery:
                try:
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        decoder.feed(data)
                        while (item := decoder.next()) is not None:
                            await self._frame(stream, nursery, call, *item)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()  # the host left: the call is cancelled
        finally:
            self.eofs += 1
            self._notify()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _frame(self, stream: trio.SocketStream, nursery: trio.Nursery,
                     call: dict[str, Any], kind: int, payload: bytes) -> None:
        if kind == lane.OPEN:
            method, metadata, timeout = lane.parse_open(payload)
            self.opens.append((method, metadata, timeout))
            call.clear()
            call.update(method=method, first=True)
            self._notify()
        elif kind == lane.MSG and call.get("method") == "InvokeServiceBidi":
            req = pb.InvokeServiceBidiRequest.FromString(payload)
            if call["first"]:
                call["first"] = False
                call["service"] = req.service_name
                if req.service_name == "packed":
                    await stream.send_all(lane.headers_frame(
                        [(wire.BATCH_FRAMES_KEY, "64")]))
                return
            self.bidi_msgs.append(req)
            self._notify()
            if call["service"] == "sink":
                await self.go.wait()  # reads nothing more until told to
                call["bytes"] = call.get("bytes", 0) + len(req.data)
            elif call["service"] != "silent":
                await stream.send_all(msg(pb.InvokeServiceBidiResponse(
                    data=req.data, message_type=req.message_type,
                    metadata=dict(req.metadata))))
        elif kind == lane.MSG and call.get("first"):
            call["first"] = False
            req = pb.InvokeServiceRequest.FromString(payload)
            nursery.start_soon(self._call, stream, call["method"], req)
        elif kind == lane.HALF_CLOSE and call.get("method") == "InvokeServiceBidi":
            if call.get("service") == "sink":
                await stream.send_all(msg(pb.InvokeServiceBidiResponse(
                    data=str(call.get("bytes", 0)).encode())) + lane.END_OK)
            elif call.get("service") != "silent":
                await stream.send_all(lane.END_OK)
            call.clear()

    async def _call(self, stream: trio.SocketStream, method: str,
                    req: pb.InvokeServiceRequest) -> None:
        what = req.service_name
        if what == "echo":
            await stream.send_all(msg(pb.InvokeServiceResponse(
                response_data=req.request_data)) + lane.END_OK)
        elif what == "hold":
            self.holding += 1
            self._notify()
            await self.release.wait()
            await stream.send_all(msg(pb.InvokeServiceResponse(
                response_data=req.request_data)) + lane.END_OK)
        elif what == "refuse":
            await stream.send_all(lane.end_frame("UNIMPLEMENTED", "no such service here"))
        elif what == "hangup":
            if method == "InvokeServiceStream":
                await stream.send_all(msg(pb.InvokeServiceStreamResponse(
                    chunk_data=b"data: 1\n\n")))
            await stream.aclose()
        elif what == "echo_and_hangup":
            await stream.send_all(msg(pb.InvokeServiceResponse(
                response_data=req.request_data)) + lane.END_OK)
            await stream.aclose()
        elif what == "burst":  # every message and the END in one write
            await stream.send_all(b"".join(
                msg(pb.InvokeServiceStreamResponse(chunk_data=f"data: {i}\n\n".encode(),
                                                   is_final=i == 4))
                for i in range(5)) + lane.END_OK)
        elif what == "ticks":
            for i in range(10**6):
                await stream.send_all(msg(pb.InvokeServiceStreamResponse(
                    chunk_data=f"data: {i}\n\n".encode())))
                await trio.sleep(0.01)
        elif what in ("final_no_end", "final_then_end"):
            await stream.send_all(msg(pb.InvokeServiceStreamResponse(
                chunk_data=b"data: last\n\n", is_final=True)))
            if what == "final_then_end":
                await self.release.wait()
                await stream.send_all(lane.END_OK)
                self.ends_sent += 1
                self._notify()
        # "silent": answers nothing, ends only when the host closes the connection


@asynccontextmanager
async def fake_plugin(tmp_path: Any) -> AsyncIterator[tuple[FakePlugin, LaneChannel]]:
    plugin = FakePlugin(str(tmp_path / lane.LANE_NAME))
    async with trio.open_nursery() as nursery:
        await nursery.start(plugin.serve)
        channel = LaneChannel(plugin.path)
        try:
            yield plugin, channel
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


def unary_req(service: str, data: bytes = b"{}") -> pb.InvokeServiceRequest:
    return pb.InvokeServiceRequest(service_name=service, request_data=data)


def client_for(channel: LaneChannel) -> PluginClient:
    # the gRPC channel is never used by the Invoke rpcs once a lane is set
    return PluginClient(None, m.load_manifest(ECHO_PLUGIN), channel)  # type: ignore[arg-type]


async def test_unary_round_trip_reuses_its_connection(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        client = client_for(channel)
        for i in range(5):
            got = await client.invoke_service("echo", "", f'{{"n":{i}}}'.encode(), timeout=3)
            assert got == f'{{"n":{i}}}'.encode()
        assert plugin.accepted == 1
        assert channel.idle_connections == 1
        method, metadata, timeout = plugin.opens[0]
        assert method == "InvokeService" and metadata == [] and timeout == 3


async def test_messages_larger_than_the_socket_buffer_cross_whole(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        big = os.urandom(3 * 1024 * 1024)
        resp = await channel.unary(UNARY, unary_req("echo", big), pb.InvokeServiceResponse,
                                   timeout=WAIT_S)
        assert resp.response_data == big
        async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                  request=unary_req("burst", big), timeout=WAIT_S,
                                  is_last=lambda r: r.is_final) as s:
            assert len([r async for r in s]) == 5
        assert plugin.accepted == 1 and channel.idle_connections == 1


async def test_concurrent_calls_use_one_connection_each_and_pool_them(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        results: list[bytes] = []

        async def one(i: int) -> None:
            resp = await channel.unary(UNARY, unary_req("hold", str(i).encode()),
                                       pb.InvokeServiceResponse)
            results.append(resp.response_data)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
            await plugin.wait_for(lambda: plugin.holding == 3, "three calls held")
            plugin.release.set()
        assert sorted(results) == [b"0", b"1", b"2"]
        assert plugin.accepted == 3
        assert channel.idle_connections == 3
        # the next calls take pooled connections, no new one
        for _ in range(3):
            await channel.unary(UNARY, unary_req("echo"), pb.InvokeServiceResponse)
        assert plugin.accepted == 3


async def test_stream_burst_is_coalesced_by_receive_nowait_and_pooled(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                  request=unary_req("burst"), timeout=5,
                                  is_last=lambda r: r.is_final) as s:
            first = await s.receive()
            rest = []
            while True:
                try:
                    rest.append(s.receive_nowait())
                except trio.WouldBlock:
                    break
            with pytest.raises(trio.EndOfChannel):
                await s.receive()
        assert first.chunk_data == b"data: 0\n\n"
        assert [r.chunk_data for r in rest] == [f"data: {i}\n\n".encode() for i in range(1, 5)]
        assert channel.idle_connections == 1  # END came with the last message: kept

        # and through the client, the whole burst is one batch of events
        client = client_for(channel)
        batches = []
        async with client.invoke_service_stream("burst", "", b"{}", timeout=5) as events:
            async for batch in events:
                batches.append(list(batch))
        assert len(batches) == 1 and len(batches[0]) == 5
        assert plugin.accepted == 1
        _, metadata, _ = plugin.opens[-1]
        assert tuple(metadata) == wire.BATCH_OFFER  # call metadata travels in OPEN


async def test_end_after_the_last_message_is_read_by_the_next_call(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                  request=unary_req("final_then_end"),
                                  is_last=lambda r: r.is_final) as s:
            assert (await s.receive()).is_final
            with pytest.raises(trio.EndOfChannel):
                await s.receive()
        # over for the caller; the connection waits for its END, uncancelled
        assert channel.lingering_connections == 1 and channel.idle_connections == 0
        plugin.release.set()
        await plugin.wait_for(lambda: plugin.ends_sent == 1, "the late END")
        resp = await channel.unary(UNARY, unary_req("echo", b"next"), pb.InvokeServiceResponse)
        assert resp.response_data == b"next"
        assert plugin.accepted == 1 and plugin.eofs == 0  # the same connection, reused
        assert channel.lingering_connections == 0


async def test_no_end_after_the_last_message_cancels_once_linger_is_over(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(bridge, "LINGER_S", 0.05)
    async with fake_plugin(tmp_path) as (plugin, channel):
        async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                  request=unary_req("final_no_end"),
                                  is_last=lambda r: r.is_final) as s:
            assert (await s.receive()).is_final
        assert channel.lingering_connections == 1
        await trio.sleep(0.06)  # past LINGER_S on trio's clock: no race involved
        await channel.unary(UNARY, unary_req("echo"), pb.InvokeServiceResponse)
        await plugin.wait_for(lambda: plugin.eofs == 1, "EOF: the call cancelled")
        assert plugin.accepted == 2 and channel.lingering_connections == 0


async def test_bidi_one_task_reads_while_another_sends(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        client = client_for(channel)
        n = 300
        got: list[bytes] = []
        async with client.invoke_service_bidi("echo", "", first_type="text") as session:

            async def reader() -> None:
                async for resp in session:
                    got.append(resp.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for i in range(n):
                    if i % 3 == 0:
                        session.send_nowait(f"f{i}".encode(), "binary")
                    else:
                        await session.send(f"f{i}".encode(), "binary")
                await plugin.wait_for(lambda: len(plugin.bidi_msgs) == n, "all frames")
                await session.done_writing()
        assert got == [f"f{i}".encode() for i in range(n)]
        assert plugin.opens[0][0] == "InvokeServiceBidi"
        assert channel.idle_connections == 1  # ended by END: kept for the next call


async def test_bidi_packs_queued_frames_once_the_plugin_says_it_unpacks(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        client = client_for(channel)
        async with client.invoke_service_bidi("packed", "", batch=True) as session:
            await session.send(b"a", "binary")  # the answer carries the HEADERS
            await session.receive()
            for i in range(10):
                session.send_nowait(f"{i}".encode(), "binary", kick=False)
            session.kick_writer()
            await plugin.wait_for(lambda: len(plugin.bidi_msgs) == 2, "the packed message")
            packed = plugin.bidi_msgs[1]
            assert wire.unpack_frames(packed.data, packed.metadata[wire.FRAME_LENGTHS_KEY]) \
                == [f"{i}".encode() for i in range(10)]
            await session.done_writing()


async def test_parked_reader_writes_what_send_nowait_left_behind(tmp_path):
    """The plugin reads nothing for a while: the kernel buffer and then the outbox fill
    (`send_nowait` says WouldBlock), the sender stops, and the reader parked on the
    call writes the rest once the plugin reads again."""
    async with fake_plugin(tmp_path) as (plugin, channel):
        chunk = b"x" * 65536
        sent = 0
        async with channel.stream(BIDI, pb.InvokeServiceBidiResponse) as s:
            await s.send(pb.InvokeServiceBidiRequest(service_name="sink", is_first=True))
            answers: list[bytes] = []

            async def reader() -> None:
                async for resp in s:
                    answers.append(resp.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.WouldBlock):  # the outbox bounds it
                    while True:
                        s.send_nowait(pb.InvokeServiceBidiRequest(data=chunk))
                        sent += len(chunk)
                s.done_writing_nowait()  # the sender is done: only the reader may write
                plugin.go.set()
        assert answers == [str(sent).encode()]
        assert sent > host_lane.OUTBOX_LIMIT


async def test_deadline_gives_deadline_exceeded_and_closes_the_connection(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        with pytest.raises(RpcFailure) as caught:
            await channel.unary(UNARY, unary_req("silent"), pb.InvokeServiceResponse,
                                timeout=0.2)
        assert caught.value.code == "DEADLINE_EXCEEDED"
        await plugin.wait_for(lambda: plugin.eofs == 1, "EOF")
        assert plugin.opens[0][2] == 0.2  # the plugin was told the deadline too

        with pytest.raises(RpcFailure) as caught:
            async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                      request=unary_req("silent"), timeout=0.2) as s:
                await s.receive()
        assert caught.value.code == "DEADLINE_EXCEEDED"
        await plugin.wait_for(lambda: plugin.eofs == 2, "EOF")
        assert channel.idle_connections == 0


async def test_cancelled_caller_mid_stream_closes_the_connection(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        client = client_for(channel)
        seen = 0
        with trio.CancelScope() as scope:
            async with client.invoke_service_stream("ticks", "", b"{}") as events:
                async for batch in events:
                    seen += len(batch)
                    if seen >= 3:
                        scope.cancel()
        assert seen >= 3
        await plugin.wait_for(lambda: plugin.eofs == 1, "EOF")
        assert channel.idle_connections == 0


async def test_plugin_hanging_up_mid_call_is_unavailable(tmp_path):
    async with fake_plugin(tmp_path) as (_plugin, channel):
        with pytest.raises(RpcFailure) as caught:
            await channel.unary(UNARY, unary_req("hangup"), pb.InvokeServiceResponse)
        assert caught.value.code == "UNAVAILABLE"

        got = []
        with pytest.raises(RpcFailure) as caught:
            async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                      request=unary_req("hangup")) as s:
                async for r in s:
                    got.append(r.chunk_data)
        assert caught.value.code == "UNAVAILABLE"
        assert got == [b"data: 1\n\n"]  # what came before the hang-up is delivered
        assert channel.idle_connections == 0


async def test_end_with_a_status_is_that_rpc_failure(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        with pytest.raises(RpcFailure) as caught:
            await channel.unary(UNARY, unary_req("refuse"), pb.InvokeServiceResponse)
        assert (caught.value.code, caught.value.details) == ("UNIMPLEMENTED",
                                                             "no such service here")
        with pytest.raises(RpcFailure) as caught:
            async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                      request=unary_req("refuse")) as s:
                await s.receive()
        assert caught.value.code == "UNIMPLEMENTED"
        # a call that ended with a status ended cleanly: its connection is kept
        assert plugin.accepted == 1 and channel.idle_connections == 1


async def test_pooled_connection_the_plugin_closed_is_not_reused(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        await channel.unary(UNARY, unary_req("echo_and_hangup"), pb.InvokeServiceResponse)
        await plugin.wait_for(lambda: plugin.eofs == 1, "the plugin's close")
        assert channel.idle_connections == 1
        resp = await channel.unary(UNARY, unary_req("echo", b"again"),
                                   pb.InvokeServiceResponse)
        assert resp.response_data == b"again"
        assert plugin.accepted == 2


async def test_close_closes_idle_connections_and_refuses_new_calls(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        async with channel.stream(STREAM, pb.InvokeServiceStreamResponse,
                                  request=unary_req("hangup")) as s:
            await channel.unary(UNARY, unary_req("echo"), pb.InvokeServiceResponse)
            assert channel.idle_connections == 1
            channel.close()
            assert channel.idle_connections == 0
            await plugin.wait_for(lambda: plugin.eofs == 2, "the idle one closed, and the hang-up")
            with pytest.raises(RpcFailure) as caught:
                await channel.unary(UNARY, unary_req("echo"), pb.InvokeServiceResponse)
            assert caught.value.code == "UNAVAILABLE"
            # the call in flight goes on until the plugin closes its connection
            assert (await s.receive()).chunk_data == b"data: 1\n\n"
            with pytest.raises(RpcFailure) as caught:
                await s.receive()
            assert caught.value.code == "UNAVAILABLE"


async def test_unreachable_lane_is_unavailable_without_its_path(tmp_path):
    channel = LaneChannel(str(tmp_path / lane.LANE_NAME))
    with pytest.raises(RpcFailure) as caught:
        await channel.unary(UNARY, unary_req("echo"), pb.InvokeServiceResponse)
    assert caught.value.code == "UNAVAILABLE"
    assert str(tmp_path) not in caught.value.details


async def test_end_reading_wakes_a_parked_reader(tmp_path):
    async with fake_plugin(tmp_path) as (plugin, channel):
        async with channel.stream(BIDI, pb.InvokeServiceBidiResponse) as s:
            await s.send(pb.InvokeServiceBidiRequest(service_name="silent", is_first=True))
            outcome: list[BaseException] = []

            async def reader() -> None:
                try:
                    await s.receive()
                except (RpcFailure, trio.EndOfChannel) as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                s.end_reading()
        assert len(outcome) == 1 and isinstance(outcome[0], RpcFailure)
        assert outcome[0].code == "CANCELLED"
        await plugin.wait_for(lambda: plugin.eofs == 1, "EOF")


def test_lane_is_offered_unless_turned_off(tmp_path, monkeypatch):
    manifest = m.load_manifest(ECHO_PLUGIN)
    monkeypatch.setenv(lane.LANE_ENV, "inherited")  # never passed on as it is
    on = PluginSupervisor(manifest, Config(data_dir=tmp_path), None)  # type: ignore[arg-type]
    assert on.environment()[lane.LANE_ENV] == lane.LANE_OFFER

    monkeypatch.setenv("AOGSTREAM_PLUGIN_LANE", "off")
    config = Config.from_env(data_dir=tmp_path)
    assert config.plugin_lane is False
    off = PluginSupervisor(manifest, config, None)  # type: ignore[arg-type]
    assert lane.LANE_ENV not in off.environment()

    monkeypatch.delenv("AOGSTREAM_PLUGIN_LANE")
    assert Config.from_env(data_dir=tmp_path).plugin_lane is True


def test_lane_is_used_only_when_its_socket_exists(tmp_path):
    address = str(tmp_path / "plugin.sock")
    assert open_lane("unix", address) is None
    assert open_lane("tcp", "127.0.0.1:1234") is None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.path.join(tmp_path, lane.LANE_NAME))
        found = open_lane("unix", address)
        assert found is not None and found.path == os.path.join(tmp_path, lane.LANE_NAME)
    finally:
        sock.close()


async def test_worker_dials_the_lane_only_when_the_primary_says_so():
    async with running_plugin() as (plugin, _client):
        assert plugin.address.startswith("unix:")
        lane_file = lane.lane_path("unix", plugin.address.removeprefix("unix:"))
        assert lane_file is not None
        bound = None
        if not os.path.exists(lane_file):  # a plugin of our SDK makes it itself
            bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bound.bind(lane_file)
        try:
            for says in (True, False):
                worker = AttachedPlugin(plugin.manifest, plugin.config, plugin._gl)
                await worker.follow({"state": "running", "address": plugin.address,
                                     "pid": plugin.pid, "lane": says})
                client = worker.provider.client
                assert client is not None
                if says:
                    assert client.lane is not None and client.lane.path == lane_file
                else:
                    assert client.lane is None
                await worker.stop()
        finally:
            if bound is not None:
                bound.close()
                os.unlink(lane_file)
