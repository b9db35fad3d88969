"""Several SSE events in one InvokeServiceStream message: only when our host offers it.

A gRPC message costs far more CPU than its bytes on both sides, so our host offers (in
the call's metadata) to read several events per message and our SDK then packs the
events that are already waiting. AOG hosts never offer it and must keep getting exactly
one event per message. These tests run the real echo plugin (aogstream.sdk) over real
gRPC and read what it puts on the wire.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest
import trio
from hostutil import read_events, running_plugin, wait_event

from aogstream import manifest as m
from aogstream.rpc.gen import provider_pb2 as pb
from aogstream.rpc.wire import BATCH_EVENTS_KEY, BATCH_OFFER
from aogstream.sse.framing import SseDecoder

STREAM = "/protocol.ProviderService/InvokeServiceStream"


@pytest.fixture
async def echo(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(events))
    async with running_plugin() as (_plugin, client):
        yield client, events


async def raw_stream(
    client, metadata=None, **request
) -> list[tuple[float, pb.InvokeServiceStreamResponse]]:
    """Every message of one call, with the time it arrived (trio clock)."""
    msg = pb.InvokeServiceRequest(service_name="chat", request_data=json.dumps(request).encode())
    out = []
    with trio.fail_after(20):
        async with client.channel.stream(
            STREAM, pb.InvokeServiceStreamResponse, request=msg, metadata=metadata
        ) as s:
            async for resp in s:
                out.append((trio.current_time(), resp))
    return out


def events_of(msgs) -> list[bytes]:
    decoder = SseDecoder()
    out: list[bytes] = []
    for _t, msg in msgs:
        out.extend(decoder.feed(bytes(msg.chunk_data)))
    return out + decoder.flush()


def contents(events: list[bytes]) -> list[str]:
    return [json.loads(e)["message"]["content"] for e in events]


async def test_a_host_that_does_not_offer_gets_one_event_per_message(echo):
    client, _ = echo
    msgs = await raw_stream(client, id="aog", tokens=200)
    assert len(msgs) == 202  # 200 tokens, the finished chunk, the SDK's final message
    for _t, msg in msgs[:-1]:
        data = bytes(msg.chunk_data)
        assert data.startswith(b"data: ") and data.count(b"\n\n") == 1, data
        assert dict(msg.metadata) == {"content-type": "text/event-stream"}
    assert msgs[-1][1].is_final and bytes(msgs[-1][1].chunk_data) == b""


async def test_waiting_events_share_a_message_when_our_host_offers(echo):
    client, _ = echo
    one_each = events_of(await raw_stream(client, id="b", tokens=200))
    msgs = await raw_stream(client, BATCH_OFFER, id="b", tokens=200)
    # an instant generator: the events are all waiting, so few messages carry them
    assert len(msgs) <= 10, len(msgs)
    packed = events_of(msgs)
    assert contents(packed) == contents(one_each)
    assert contents(packed)[:2] == ["tok0 ", "tok1 "]
    final = msgs[-1][1]
    assert final.is_final and final.code == 0 and bytes(final.chunk_data) == b""
    assert all(not msg.is_final for _t, msg in msgs[:-1])


async def test_a_batch_never_holds_more_events_than_the_host_offered(echo):
    client, _ = echo
    msgs = await raw_stream(client, ((BATCH_EVENTS_KEY, "4"),), id="c", tokens=50)
    per_message = [bytes(msg.chunk_data).count(b"\n\n") for _t, msg in msgs[:-1]]
    assert max(per_message) == 4
    assert sum(per_message) == 51


async def test_an_event_is_never_held_back_to_fill_a_batch(echo):
    """Tokens 150 ms apart arrive 150 ms apart, each in its own message: the SDK packs
    only what is already waiting."""
    client, _ = echo
    t0 = trio.current_time()
    msgs = await raw_stream(client, BATCH_OFFER, id="d", tokens=3, interval=0.15)
    first_at = msgs[0][0] - t0
    assert first_at < 0.12, f"first event after {first_at:.3f} s"
    assert bytes(msgs[0][1].chunk_data).count(b"\n\n") == 1
    assert contents(events_of(msgs)) == ["tok0 ", "tok1 ", "tok2 ", ""]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(msgs[:4])]
    assert all(g > 0.1 for g in gaps), gaps


async def test_events_before_a_mid_stream_error_still_come_first_when_packed(echo):
    client, _ = echo
    msgs = await raw_stream(client, BATCH_OFFER, id="e", tokens=10, error_after=5)
    last = msgs[-1][1]
    assert last.is_final and last.code == 11 and last.message == "asked to fail mid-stream"
    assert contents(events_of(msgs[:-1])) == [f"tok{i} " for i in range(5)]

    # and our host's client turns it into a PluginError after those five events
    seen: list[bytes] = []
    with pytest.raises(m.PluginError) as info:
        async with client.invoke_service_stream(
            "chat", "", json.dumps({"tokens": 10, "error_after": 5}).encode()
        ) as batches:
            async for batch in batches:
                seen.extend(batch)
    assert info.value.code == 11
    assert len(seen) == 5


async def test_plugin_code_sees_the_cancel_while_the_sdk_packs(echo):
    """Leaving the call while the plugin's generator is suspended between packed
    messages delivers CancelledError to plugin code, within milliseconds."""
    client, events = echo
    req = json.dumps({"id": "f", "tokens": 100_000, "interval": 0.002}).encode()
    async with client.invoke_service_stream("chat", "", req) as batches:
        got = 0
        async for batch in batches:
            got += len(batch)
            if got >= 20:
                break
        left = time.monotonic()
    ev = await wait_event(events, timeout=2.0, event="cancelled", id="f")
    assert ev is not None, "the plugin never saw the cancellation"
    assert ev["t"] - left < 0.25, f"plugin saw the cancel {ev['t'] - left:.3f} s later"


async def test_a_stream_read_to_its_final_message_ends_without_a_cancel(echo):
    """After `is_final` the host stops reading (AOG's rule) and does not cancel: the
    loop thread reads the call's end itself, so the plugin finishes normally."""
    client, events = echo
    req = json.dumps({"id": "g", "tokens": 5}).encode()
    async with client.invoke_service_stream("chat", "", req) as batches:
        got = [event async for batch in batches for event in batch]
    assert len(got) == 6
    assert await wait_event(events, timeout=2.0, event="stream-end", id="g") is not None
    await trio.sleep(0.2)
    assert not [e for e in read_events(events) if e.get("event") == "cancelled"]

    # a reader that goes on after the final message gets the end, not a hang
    msg = pb.InvokeServiceRequest(service_name="chat", request_data=req)
    with trio.fail_after(5):
        async with client.channel.stream(
            STREAM, pb.InvokeServiceStreamResponse, request=msg,
            is_last=lambda r: r.is_final,
        ) as s:
            finals = [r.is_final async for r in s]
    assert finals[-1] is True and finals.count(True) == 1
