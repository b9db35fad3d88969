"""The host side of plugin LLM calls in one process: routing, fallback, depth, timeouts.

A unit test of `host.llm_service.PluginLlmHost` on a real `Gateway` (store in memory,
no gRPC) whose providers are `testing.FunctionProvider`s: each stands for a plugin,
and a provider that "calls ctx.llm while serving" calls `host.handle` with its own
name, as the socket bound to that plugin would. Proven: calls follow the gateway's
fallback and report the route that served them; a long chain of plugins calling each
other stops at the depth limit even when fresh providers remain; a call's clamped
timeout ends it with the `timeout` code; counters add up per plugin, and
`counters_snapshot()` reads calls, tokens, denials and the calls in flight on a
plugin's real socket (`env_for`), and forgets a host service that stopped.
(The same behaviours across real processes are in tests/test_plugin_llm.py.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from aogstream import errors
from aogstream import manifest as m
from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.host.llm_service import MAX_DEPTH, PluginLlmHost, counters_snapshot
from aogstream.invocation import Invocation
from aogstream.rpc import hostcall as hc
from aogstream.store import SQLiteStore
from aogstream.testing import FunctionProvider, Handler

HI = {"op": "complete", "args": {"messages": [{"role": "user", "content": "hi"}]}}


def chat_answer(text: str, model: str = "m") -> bytes:
    return json.dumps({"model": model, "message": {"role": "assistant", "content": text},
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


def says(text: str) -> Handler:
    async def handler(inv: Invocation) -> None:
        await inv.emit(chat_answer(text))

    return handler


@asynccontextmanager
async def host_on(tmp_path: Path, *providers: FunctionProvider) -> AsyncIterator[PluginLlmHost]:
    gw = Gateway(Config(data_dir=tmp_path), store=SQLiteStore(Path(":memory:")))
    for provider in providers:
        gw.add_provider(provider)
    await gw.register()
    try:
        yield PluginLlmHost(gw)
    finally:
        gw.store.close()


async def test_provider_trouble_falls_back_and_the_result_names_who_served(tmp_path):
    async def down(inv: Invocation) -> None:
        raise errors.GatewayError(errors.PLUGIN_UNAVAILABLE, "down")

    local = FunctionProvider("local", down)
    cloud = FunctionProvider("cloud", says("from the cloud"), type=m.PLUGIN_TYPE_REMOTE)
    async with host_on(tmp_path, local, cloud) as host:
        answer = await host.handle("caller", HI)
    assert answer["ok"], answer
    result = answer["result"]
    assert result["text"] == "from the cloud" and result["provider"] == "cloud"
    assert result["usage"]["total_tokens"] == 5
    assert (local.calls, cloud.calls) == (1, 1)


async def test_a_long_chain_stops_at_the_depth_limit(tmp_path):
    host: PluginLlmHost | None = None
    seen: list[str] = []

    def relay(name: str) -> Handler:
        async def handler(inv: Invocation) -> None:
            assert host is not None
            seen.append(name)
            answer = await host.handle(name, HI)  # this plugin calls ctx.llm while serving
            text = answer["result"]["text"] if answer["ok"] else answer["error"]["message"]
            await inv.emit(chat_answer(text))

        return handler

    plugins = [FunctionProvider(f"p{i}", relay(f"p{i}")) for i in range(MAX_DEPTH + 3)]
    async with host_on(tmp_path, *plugins) as h:
        host = h
        answer = await h.handle("caller", HI)
    assert answer["ok"], answer
    assert f"the limit is {MAX_DEPTH}" in answer["result"]["text"]
    assert len(seen) == MAX_DEPTH and len(set(seen)) == MAX_DEPTH  # never one twice
    counters = h.counters
    assert counters["caller"].succeeded == 1
    assert counters[seen[-1]].failed == 1  # the call that went one step too far


async def test_the_clamped_timeout_ends_a_slow_call(tmp_path):
    async def never(inv: Invocation) -> None:
        await trio.sleep_forever()

    async with host_on(tmp_path, FunctionProvider("slow", never)) as host:
        request: dict[str, Any] = {"op": "complete", "args": {**HI["args"], "timeout": 0.01}}
        started = trio.current_time()
        answer = await host.handle("caller", request)
    assert answer["error"]["code"] == "timeout", answer
    assert 1.0 <= trio.current_time() - started < 5.0  # clamped up to 1 s, not 0.01
    assert host.counters["caller"].failed == 1


async def test_a_request_of_unknown_shape_is_answered_not_raised(tmp_path):
    async with host_on(tmp_path, FunctionProvider("p", says("x"))) as host:
        assert (await host.handle("c", {"op": "teleport"}))["error"]["code"] == \
            "invalid_input"
        assert (await host.handle("c", {"op": "complete", "args": []}))["error"]["code"] == \
            "invalid_input"
        bad = await host.handle("c", {"op": "complete", "args": {"messages": "hi"}})
        assert bad["error"]["code"] == "invalid_input" and "messages" in \
            bad["error"]["message"]


def stats_of(plugin_id: str):
    return {s.plugin_id: s for s in counters_snapshot()}.get(plugin_id)


async def test_counters_snapshot_reads_calls_tokens_denials_and_calls_in_flight(tmp_path):
    release = trio.Event()
    entered = trio.Event()

    async def held(inv: Invocation) -> None:
        entered.set()
        await release.wait()
        await inv.emit(chat_answer("late"))

    async with host_on(tmp_path, FunctionProvider("p", held)) as host, \
            trio.open_nursery() as nursery:
        await nursery.start(host.run)
        assert stats_of("snap") is None  # nothing before the first call
        path = host.env_for("snap")[hc.HOST_SOCKET_ENV]
        stream = await trio.open_unix_socket(path)
        await stream.send_all(hc.encode(HI))
        await entered.wait()
        during = stats_of("snap")
        assert during is not None and during.in_flight == 1 and during.calls == 0
        release.set()
        answer = b""
        while chunk := await stream.receive_some(1 << 16):  # to the host's close
            answer += chunk
        await stream.aclose()
        assert hc.decode(answer[hc.HEADER.size:])["ok"] is True
        await trio.testing.wait_all_tasks_blocked()  # the host's task has wound up
        denied = await host.handle("snap", {"op": "complete",
                                            "args": {**HI["args"], "model": "other"}})
        assert denied["error"]["code"] == "trust_denied"
        after = stats_of("snap")
        assert after is not None
        assert (after.calls, after.succeeded, after.failed, after.denied) == (2, 1, 0, 1)
        assert (after.input_tokens, after.output_tokens) == (3, 2)
        assert after.latency_ms_total > 0 and after.in_flight == 0
        nursery.cancel_scope.cancel()
    assert stats_of("snap") is None  # a stopped host service is no longer read
