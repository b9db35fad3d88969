"""What the Python SDK puts on the wire, read with raw gRPC calls through the bridge."""

import json

import pytest
import trio
from hostutil import running_plugin

from aogstream import manifest as m
from aogstream.rpc.gen import provider_pb2 as pb

STREAM = "/protocol.ProviderService/InvokeServiceStream"
BIDI = "/protocol.ProviderService/InvokeServiceBidi"


@pytest.fixture
async def echo(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))
    async with running_plugin() as (plugin, client):
        yield plugin, client


async def raw_stream(client, **request) -> list[pb.InvokeServiceStreamResponse]:
    msg = pb.InvokeServiceRequest(
        service_name="chat", request_data=json.dumps(request).encode(), auth_info=""
    )
    out = []
    with trio.fail_after(10):
        async with client.channel.stream(
            STREAM, pb.InvokeServiceStreamResponse, request=msg
        ) as s:
            async for resp in s:
                out.append(resp)
    return out


async def test_stream_chunks_are_sse_events_then_an_empty_final(echo):
    _plugin, client = echo
    msgs = await raw_stream(client, id="f", tokens=3)
    assert len(msgs) == 5  # 3 tokens, the finished chunk, the SDK's final message
    *chunks, final = msgs
    for i, msg in enumerate(chunks):
        data = bytes(msg.chunk_data)
        assert data.startswith(b"data: ") and data.endswith(b"\n\n"), data
        assert data.count(b"\n") == 2  # exactly one event per message, one line
        event = json.loads(data[len(b"data: ") : -2])
        assert event["id"] == "f"
        if i < 3:
            assert event["message"]["content"] == f"tok{i} "
        else:
            assert event["finished"] is True
        assert msg.code == 0 and msg.is_final is False
        assert dict(msg.metadata) == {"content-type": "text/event-stream"}
    assert final.is_final is True
    assert final.code == 0
    assert bytes(final.chunk_data) == b""
    assert dict(final.metadata) == {"content-type": "text/event-stream"}


async def test_mid_stream_plugin_error_is_one_final_message(echo):
    _plugin, client = echo
    msgs = await raw_stream(client, id="e", tokens=10, error_after=2)
    assert len(msgs) == 3
    assert all(msg.code == 0 and not msg.is_final for msg in msgs[:2])
    last = msgs[-1]
    assert last.is_final is True
    assert last.code == 11
    assert last.message == "asked to fail mid-stream"
    assert bytes(last.chunk_data) == b""

    # and the client turns it into a PluginError after the events before it
    seen = []
    with pytest.raises(m.PluginError) as info:
        async with client.invoke_service_stream(
            "chat", "", json.dumps({"tokens": 10, "error_after": 2}).encode()
        ) as batches:
            async for batch in batches:
                seen.extend(batch)
    assert info.value.code == 11
    assert len(seen) == 2


async def test_bidi_first_message_without_is_first_is_refused(echo):
    _plugin, client = echo
    with trio.fail_after(10):
        async with client.channel.stream(BIDI, pb.InvokeServiceBidiResponse) as s:
            await s.send(
                pb.InvokeServiceBidiRequest(
                    service_name="echo-ws", data=b"hi", message_type="text", is_first=False
                )
            )
            resp = await s.receive()
            assert resp.code == m.ERR_CODE_INVALID_ARGUMENT == 2
            assert "is_first" in resp.message
            with pytest.raises(trio.EndOfChannel):
                await s.receive()


async def test_bidi_first_message_carries_the_session(echo):
    """The well-formed counterpart: the first message's data is the first frame."""
    _plugin, client = echo
    with trio.fail_after(10):
        async with client.channel.stream(BIDI, pb.InvokeServiceBidiResponse) as s:
            await s.send(
                pb.InvokeServiceBidiRequest(
                    service_name="echo-ws", is_first=True, data=b"first",
                    message_type="text", metadata={"ws_conn_id": "c1"},
                )
            )
            await s.send(pb.InvokeServiceBidiRequest(data=b"second", message_type="text"))
            await s.done_writing()
            got = [(bytes(r.data), r.message_type, r.code) async for r in s]
    assert got == [(b"first", "text", 0), (b"second", "text", 0)]
