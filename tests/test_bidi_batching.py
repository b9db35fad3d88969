"""Several frames of a bidi session in one gRPC message, only when more are already waiting.

A realtime session sends a frame every 20 ms each way, and a gRPC message costs far
more CPU than a 640-byte frame. Our host offers (call metadata) to unpack packed
frames, our SDK answers (initial metadata) that it unpacks them too, and then each side
packs the frames that are already queued when its writer gets to them (`rpc.wire`).
AOG's hosts and plugins never say so and keep one frame per message.

Real parts: the packing codec and the SDK's outbox are unit-tested on their own (the
outbox with a recording `write`, the socket's look into the server's queue with a
trio channel as hypercorn's, through the observing wrapper with a recording observer);
the rest runs the real echo plugin (aogstream.sdk) over real gRPC, directly and behind
a real gateway with a real WebSocket client. The plugin reports its process's packing
counters (`pack-counts`), which is how the tests see that bursts were packed while
every frame still arrived, in order.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import trio
from conftest import Gateway
from hostutil import running_plugin
from websockets.sync.client import connect

from aogstream.bidi.socket import AsgiWebSocket, Disconnected
from aogstream.host.client import _pack_requests, unpack_response
from aogstream.rpc import wire
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.sdk.bidi_session import _Outbox
from aogstream.sdk.provider import BidiMessage

BIDI = "/protocol.ProviderService/InvokeServiceBidi"

# ---- the codec ----------------------------------------------------------------------


def test_packed_frames_unpack_to_the_same_frames_in_order():
    frames = [b"one", b"", b"\x00" * 640, "ü".encode()]
    data, md = wire.pack_frames(frames)
    assert list(md) == [wire.FRAME_LENGTHS_KEY]
    assert wire.unpack_frames(data, md[wire.FRAME_LENGTHS_KEY]) == frames


@pytest.mark.parametrize("lengths", ["3,x", "", "2,3", "5,-1", "1,,2", "4,"])
def test_lengths_that_do_not_describe_the_data_mean_not_packed(lengths):
    assert wire.unpack_frames(b"abcd", lengths) is None


def test_batch_limit_is_what_the_peer_said_capped_by_our_own():
    assert wire.frame_batch_limit(()) == 1
    assert wire.frame_batch_limit([("other", "9")]) == 1
    assert wire.frame_batch_limit([(wire.BATCH_FRAMES_KEY, "8")]) == 8
    assert wire.frame_batch_limit([(wire.BATCH_FRAMES_KEY, "100000")]) == wire.BATCH_FRAMES
    assert wire.frame_batch_limit([(wire.BATCH_FRAMES_KEY, "lots")]) == 1
    assert wire.frame_batch_limit([(wire.BATCH_FRAMES_KEY, "0")]) == 1


def _frames_of(msgs) -> list[tuple[bytes, str, dict[str, str]]]:
    """What a receiver that unpacks sees, frame by frame."""
    out = []
    for msg in msgs:
        packed = unpack_response(msg)
        if packed is None:
            out.append((bytes(msg.data), msg.message_type, dict(msg.metadata)))
        else:
            out.extend((f, msg.message_type, {}) for f in packed)
    return out


def test_host_packs_runs_of_one_kind_and_keeps_everything_else_in_place():
    req = pb.InvokeServiceBidiRequest
    run = ([req(data=b"a%d" % i, message_type="binary") for i in range(5)]
           + [req(data=b"finish", message_type="text")]
           + [req(data=b"m", message_type="binary", metadata={"k": "v"})]
           + [req(data=b"b%d" % i, message_type="binary") for i in range(7)])
    msgs = _pack_requests(run, limit=4)
    # 5 binary → 4 + 1 (limit), the text alone, the frame with metadata alone, 7 → 4 + 3
    assert [len(unpack_response(m) or [m]) for m in msgs] == [4, 1, 1, 1, 4, 3]
    assert msgs[1] is run[4] and msgs[2] is run[5] and msgs[3] is run[6]
    assert _frames_of(msgs) == [(bytes(r.data), r.message_type, dict(r.metadata))
                                for r in run]


def test_host_stops_a_packed_message_at_the_byte_cap():
    req = pb.InvokeServiceBidiRequest
    big = wire.MAX_BATCH_BYTES // 2
    run = [req(data=bytes([i]) * big, message_type="binary") for i in range(5)]
    msgs = _pack_requests(run, limit=64)
    assert all(len(m.data) <= wire.MAX_BATCH_BYTES for m in msgs)
    assert [f for f, _k, _m in _frames_of(msgs)] == [r.data for r in run]


def test_a_lone_message_is_never_repacked():
    msg = pb.InvokeServiceBidiRequest(data=b"x", message_type="binary")
    assert _pack_requests([msg], limit=64) == [msg]


# ---- the SDK's outbox ---------------------------------------------------------------


def _run_outbox(script) -> list[pb.InvokeServiceBidiResponse]:
    written: list[pb.InvokeServiceBidiResponse] = []

    async def write(msg: pb.InvokeServiceBidiResponse) -> None:
        await asyncio.sleep(0)  # a write suspends, as gRPC's does
        written.append(msg)

    async def main() -> None:
        out = _Outbox(write, 16)
        await script(out, written)
        await out.drain()

    asyncio.run(main())
    return written


def test_sdk_writes_a_lone_frame_at_once():
    async def script(out, written):
        await out.send(BidiMessage(b"a", "text"))
        assert len(written) == 1  # written before send returned: nothing waits

    msgs = _run_outbox(script)
    assert [(m.data, dict(m.metadata)) for m in msgs] == [(b"a", {})]


def test_sdk_holds_answers_while_packed_frames_are_waiting_then_packs_them():
    async def script(out, written):
        out.hold = True  # plugin code is inside a packed message of the host's
        for i in range(3):
            await out.send(BidiMessage(b"r%d" % i, "text"))
        assert written == []
        out.hold = False  # the last frame of it
        await out.send(BidiMessage(b"r3", "text"))

    msgs = _run_outbox(script)
    assert len(msgs) == 1
    assert unpack_response(msgs[0]) == [b"r0", b"r1", b"r2", b"r3"]


def test_sdk_sends_what_it_held_as_soon_as_plugin_code_waits():
    async def script(out, written):
        out.hold = True
        await out.send(BidiMessage(b"partial", "text"))
        assert written == []
        await asyncio.sleep(0.01)  # plugin code awaits its engine: the flusher runs
        assert [m.data for m in written] == [b"partial"]

    _run_outbox(script)


def test_sdk_never_packs_frames_with_metadata_or_of_another_kind():
    async def script(out, written):
        out.hold = True
        await out.send(BidiMessage(b"t1", "text"))
        await out.send(BidiMessage(b"t2", "text"))
        await out.send(BidiMessage(b"\x01", "binary"))
        await out.send(BidiMessage(b"t3", "text", {"k": "v"}))
        out.hold = False
        await out.send(BidiMessage(b"t4", "text"))

    msgs = _run_outbox(script)
    assert _frames_of(msgs) == [(b"t1", "text", {}), (b"t2", "text", {}),
                                (b"\x01", "binary", {}), (b"t3", "text", {"k": "v"}),
                                (b"t4", "text", {})]
    assert len(msgs) == 4


# ---- the real plugin over gRPC --------------------------------------------------------


async def _raw_session(client, offer, frames):
    """Open a raw bidi call (with or without our host's offer), queue `frames` at once,
    and return (the plugin's initial metadata, every response message)."""
    first = pb.InvokeServiceBidiRequest(service_name="echo-ws", is_first=True,
                                        metadata={"ws_conn_id": "raw"})
    out = []
    initial: list[tuple[str, str | bytes]] = []

    def packer_for(md):  # the bridge hands over the initial metadata; nothing is packed
        initial.extend(md)

    with trio.fail_after(20):
        async with client.channel.stream(BIDI, pb.InvokeServiceBidiResponse,
                                         metadata=offer or None, packer_for=packer_for) as s:
            s.send_nowait(first)
            for f in frames:
                await s.send(pb.InvokeServiceBidiRequest(data=f, message_type="binary"))
            got = 0
            while got < len(frames):
                msg = await s.receive()
                out.append(msg)
                got += len(unpack_response(msg) or [msg])
    return tuple(initial), out


async def test_an_aog_host_that_does_not_offer_gets_one_frame_per_message():
    frames = [b"%04d" % i for i in range(200)]
    async with running_plugin() as (_plugin, client):
        initial, msgs = await _raw_session(client, (), frames)
    assert not any(k == wire.BATCH_FRAMES_KEY for k, _v in initial)
    assert len(msgs) == len(frames)
    assert [(bytes(m.data), m.message_type, dict(m.metadata)) for m in msgs] == [
        (f, "binary", {}) for f in frames]


async def test_the_sdk_answers_our_hosts_offer_in_its_initial_metadata():
    async with running_plugin() as (_plugin, client):
        initial, msgs = await _raw_session(client, wire.BIDI_BATCH_OFFER, [b"x"])
    assert (wire.BATCH_FRAMES_KEY, str(wire.BATCH_FRAMES)) in initial
    assert [bytes(m.data) for m in msgs] == [b"x"]


# ---- through a real gateway ---------------------------------------------------------


def _counts(ws) -> dict[str, int]:
    ws.send("pack-counts")
    reply = ws.recv(timeout=10)
    assert isinstance(reply, str), reply
    return json.loads(reply)


def _burst(gateway: Gateway, frames: list[bytes | str]) -> dict[str, int]:
    """Send `frames` back to back over the echo socket, check the echoes come back
    whole and in order, and return the plugin's packing counters over the burst."""
    with connect(gateway.service_ws_url("echo-ws"), open_timeout=5, close_timeout=2,
                 max_size=None) as ws:
        before = _counts(ws)  # also: the session is open and its headers are in
        for f in frames:
            ws.send(f)
        got = [ws.recv(timeout=10) for _ in frames]
        after = _counts(ws)
    assert got == frames
    return {k: after[k] - before[k] for k in after}


def test_a_burst_of_frames_is_packed_both_ways_and_arrives_in_order(gateway: Gateway):
    frames: list[bytes | str] = [i.to_bytes(4, "big") * 160 for i in range(600)]
    delta = _burst(gateway, frames)
    # the host packed frames that were waiting, the plugin unpacked them (read) and
    # packed its answers (written); every frame still came back, in order (above)
    assert delta["read"] >= 1 and delta["frames_read"] >= 2 * delta["read"], delta
    assert delta["written"] >= 1 and delta["frames_written"] >= 2 * delta["written"], delta
    messages_in = len(frames) - delta["frames_read"] + delta["read"]
    assert messages_in < len(frames), delta


def test_text_and_binary_frames_interleaved_keep_their_kinds_and_order(gateway: Gateway):
    frames: list[bytes | str] = []
    for i in range(400):
        frames.append(f"t{i}" if i % 7 == 3 else i.to_bytes(2, "big") * 320)
    _burst(gateway, frames)


def test_with_packing_turned_off_every_frame_is_its_own_message(gateway_factory):
    gw = gateway_factory("nobatch", AOGSTREAM_BIDI_BATCH_FRAMES="1")
    frames: list[bytes | str] = [i.to_bytes(4, "big") * 160 for i in range(300)]
    delta = _burst(gw, frames)
    assert delta == {"frames_read": 0, "frames_written": 0, "read": 0, "written": 0}


# ---- the socket hands on what is already waiting ------------------------------------


async def test_socket_takes_waiting_frames_without_waiting_and_says_when_none_are():
    send, receive = trio.open_memory_channel(10)  # hypercorn's app queue is one of these
    ws = AsgiWebSocket(receive.receive, None)  # type: ignore[arg-type]
    with pytest.raises(trio.WouldBlock):
        ws.receive_nowait()
    send.send_nowait({"type": "websocket.receive", "bytes": b"\x01"})
    send.send_nowait({"type": "websocket.receive", "text": "finish"})
    send.send_nowait({"type": "websocket.disconnect", "code": 1000})
    assert ws.receive_nowait() == b"\x01"
    assert ws.receive_nowait() == "finish"
    with pytest.raises(Disconnected):
        ws.receive_nowait()
    assert ws.closed


async def test_socket_over_an_unknown_receive_never_guesses():
    async def receive():
        return {"type": "websocket.receive", "text": "x"}

    ws = AsgiWebSocket(receive, None)  # type: ignore[arg-type]
    with pytest.raises(trio.WouldBlock):
        ws.receive_nowait()
    assert await ws.receive() == "x"


async def test_socket_takes_waiting_frames_through_the_observing_wrapper():
    """Every serving process wraps its app in `observe.middleware.Observed`: the
    server's queue must stay reachable through its `receive` (else no burst is ever
    taken), and frames taken that way are counted like any other."""
    from aogstream.observe.middleware import Observed

    records = []

    class Observer:  # records what the wrapper reports; no files, no metrics
        metrics = None

        def next_id(self) -> str:
            return "r1"

        def finish(self, rec, gaps) -> None:
            records.append(rec)

    got: list[str | bytes] = []

    async def app(scope, receive, send) -> None:
        ws = AsgiWebSocket(receive, send)
        got.append(await ws.receive())
        got.append(ws.receive_nowait())
        with pytest.raises(trio.WouldBlock):
            ws.receive_nowait()

    send, receive = trio.open_memory_channel(10)
    send.send_nowait({"type": "websocket.receive", "bytes": b"\x01"})
    send.send_nowait({"type": "websocket.receive", "text": "finish"})

    async def server_send(msg) -> None:
        pass

    await Observed(app, Observer())({"type": "websocket", "path": "/x"}, receive.receive,
                                    server_send)
    assert got == [b"\x01", "finish"]
    assert records[0].frames_in == 2 and records[0].bytes_in == 7
