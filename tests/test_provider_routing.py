"""Routing, fallback, error precedence and deadlines, with providers that are functions.

Real: the `Gateway` (its routing table built from a real SQLite store, in memory; the
hybrid policy; the timeout policy), `open_invocation`, and the hot routes (`HotRoutes`,
raw ASGI) driven by httpx over its ASGI transport. Stand-ins: the providers are
`aogstream.testing.FunctionProvider`s (a function answers each call), so nothing here
starts a process and each test runs in milliseconds; deadlines use trio's autojump
clock. The same paths with real plugin processes are proven by test_routing.py,
test_crash_restart.py and test_timeouts.py.

What is proven: a request reaches the provider that has its model; provider trouble
(5xx) moves on to the next provider and a running provider is tried before one that is
restarting; a request error (4xx) is answered at once without trying another, and
when every provider fails the last one's error is answered; the deadline cancels the
provider's work and answers a timeout, with the deadline handed to the provider.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from aogstream import errors
from aogstream import manifest as m
from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.http.hot import HotRoutes
from aogstream.invocation import Invocation, Mode
from aogstream.store import SQLiteStore
from aogstream.testing import FunctionProvider, Handler

CHAT = "/aog/v0.2/services/chat"


def answer(who: str) -> Handler:
    """A provider that answers with its name (one event when streamed)."""

    async def handler(inv: Invocation) -> None:
        await inv.emit(json.dumps({"served_by": who, "mode": inv.mode.value}).encode())

    return handler


def failing(bcode: errors.Bcode, message: str) -> Handler:
    async def handler(inv: Invocation) -> None:
        raise errors.GatewayError(bcode, message)

    return handler


@asynccontextmanager
async def gateway(tmp_path: Path, *providers: FunctionProvider,
                  **config: Any) -> AsyncIterator[Gateway]:
    """A gateway routing to `providers` only: no gRPC loop, a store in memory."""
    gw = Gateway(Config(data_dir=tmp_path, **config), store=SQLiteStore(Path(":memory:")))
    for provider in providers:
        gw.add_provider(provider)
    await gw.register()
    try:
        yield gw
    finally:
        gw.store.close()


async def post(gw: Gateway, body: dict[str, Any]) -> httpx.Response:
    async def not_here(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError(f"{scope['path']} fell through to the management app")

    transport = httpx.ASGITransport(app=HotRoutes(gw, not_here))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post(CHAT, json=body)


async def test_a_named_model_is_served_by_the_provider_that_has_it(tmp_path: Path) -> None:
    alpha = FunctionProvider("alpha", answer("alpha"), models=["alpha-1"])
    beta = FunctionProvider("beta", answer("beta"), models=["beta-1"])
    async with gateway(tmp_path, alpha, beta) as gw:
        for model, who in (("beta-1", "beta"), ("alpha-1", "alpha")):
            r = await post(gw, {"model": model})
            assert r.status_code == 200, r.text
            assert r.json() == {"served_by": who, "mode": "unary"}
            assert r.headers["x-aogstream-plugin"] == who
            assert r.headers["x-aogstream-provider"] == f"local_{who}_chat"
        assert (alpha.calls, beta.calls) == (1, 1)
        r = await post(gw, {"model": "gamma-1"})
        assert r.status_code == 404 and "gamma-1" in r.json()["message"], r.text
        assert (alpha.calls, beta.calls) == (1, 1)


async def test_provider_trouble_falls_back_to_the_next_provider(tmp_path: Path) -> None:
    local = FunctionProvider("local", failing(errors.PLUGIN_UNAVAILABLE, "local is down"))
    cloud = FunctionProvider("cloud", answer("cloud"), type=m.PLUGIN_TYPE_REMOTE)
    async with gateway(tmp_path, local, cloud) as gw:
        assert [rt.provider for rt in gw.routes("chat")] == [local, cloud]  # local first
        r = await post(gw, {})
        assert r.status_code == 200, r.text
        assert r.json()["served_by"] == "cloud"
        r = await post(gw, {"stream": True})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.text == 'data: {"served_by": "cloud", "mode": "stream"}\n\n'
        assert (local.calls, cloud.calls) == (2, 2)


async def test_a_running_provider_is_tried_before_a_restarting_one(tmp_path: Path) -> None:
    local = FunctionProvider("local", answer("local"))
    cloud = FunctionProvider("cloud", answer("cloud"), type=m.PLUGIN_TYPE_REMOTE)
    local.state = "restarting"
    async with gateway(tmp_path, local, cloud) as gw:
        assert [rt.provider for rt in gw.routes("chat")] == [cloud, local]
        r = await post(gw, {})
        assert r.json()["served_by"] == "cloud", r.text
        assert local.calls == 0
        cloud.state = "stopped"  # both down: the answer says the (last) one is not running
        r = await post(gw, {})
        assert r.status_code == 503, r.text
        assert r.json()["business_code"] == errors.PLUGIN_NOT_RUNNING.code


async def test_a_request_error_is_answered_without_trying_another(tmp_path: Path) -> None:
    local = FunctionProvider("local", failing(errors.PLUGIN_BAD_REQUEST, "no such option"))
    cloud = FunctionProvider("cloud", answer("cloud"), type=m.PLUGIN_TYPE_REMOTE)
    async with gateway(tmp_path, local, cloud) as gw:
        for body in ({}, {"stream": True}):
            r = await post(gw, body)
            assert r.status_code == 400, r.text
            assert r.json() == {"business_code": errors.PLUGIN_BAD_REQUEST.code,
                                "message": "no such option"}
        assert (local.calls, cloud.calls) == (2, 0)


async def test_when_every_provider_fails_the_last_error_is_answered(tmp_path: Path) -> None:
    local = FunctionProvider("local", failing(errors.PLUGIN_UNAVAILABLE, "local is down"))
    cloud = FunctionProvider("cloud", failing(errors.PLUGIN_INTERNAL, "cloud broke"),
                             type=m.PLUGIN_TYPE_REMOTE)
    async with gateway(tmp_path, local, cloud) as gw:
        for body in ({}, {"stream": True}):
            r = await post(gw, body)
            assert r.status_code == 500, r.text
            assert r.json()["message"] == "cloud broke"
        assert (local.calls, cloud.calls) == (2, 2)


@pytest.mark.parametrize(("manifest_timeout", "deadline"), [(0, 2.0), (7, 7.0)])
async def test_the_deadline_cancels_the_provider_and_answers_a_timeout(
        tmp_path: Path, autojump_clock: trio.abc.Clock, manifest_timeout: int,
        deadline: float) -> None:
    """The policy's unary default (2 s here), or the service's own `timeout`."""
    seen: dict[str, Any] = {}

    async def forever(inv: Invocation) -> None:
        seen["remaining"] = inv.remaining()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen["cancelled_at"] = trio.current_time()
            raise

    slow = FunctionProvider("slow", forever, timeout=manifest_timeout)
    async with gateway(tmp_path, slow, unary_timeout=2.0) as gw:
        t0 = trio.current_time()
        async with gw.invoke(gw.route("chat"), Mode.UNARY, b"{}") as inv:
            with pytest.raises(errors.GatewayError) as info:
                await inv.result()
        assert info.value.bcode == errors.PLUGIN_TIMEOUT
        assert f"within {deadline:g} s" in info.value.message
        assert seen["remaining"] == pytest.approx(deadline)
        assert seen["cancelled_at"] - t0 == pytest.approx(deadline)
