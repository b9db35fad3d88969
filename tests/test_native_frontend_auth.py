"""Frontend auth by a native plugin, and CPA's failed-key ban, in a real gateway.

Real parts: a gateway subprocess (tests/conftest.py), serving from its primary process
alone (AOGSTREAM_WORKERS=1, so the per-process failure count of the ban is the whole
count); two C plugins built by tools/build-native-plugins.sh and loaded unchanged:
`c-test` (models and an executor) and `c-gate` (tests/native/hooks_plugin.c built with
FRONTEND: a frontend-auth provider accepting `Authorization: Bearer open-sesame`);
the official `openai` client and httpx over loopback.

Proven: with a frontend-auth plugin enabled, service requests on every door
(`/v1/chat/completions`, `/api/chat`, `/aog/v0.2/services/chat`, the model listing)
are refused with a 401 naming the plugin unless it accepts them, and served when it
does; the plugin gets the request's method, path, headers and body; public routes stay
open; the load is logged as a warning. CPA's management API refuses a client that sent
a wrong management key five times with 403 (even with the right key afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import Gateway
from harness import native

BUILT = native.BUILT  # the names other modules import
_arch = native.arch
CHAT = {"model": "c-echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gate_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with native.native_gateway(tmp_path_factory.mktemp("native-gate"), ["c-test", "c-gate"],
                               native.enabled("c-test", "c-gate"),
                               {"AOGSTREAM_WORKERS": "1"}) as gw:
        yield gw


events = native.native_events


OPEN = {"Authorization": "Bearer open-sesame"}


def test_service_doors_need_the_plugins_yes(gate_gw: Gateway) -> None:
    doors = [f"{gate_gw.url}/v1/chat/completions", f"{gate_gw.url}/api/chat",
             gate_gw.service_url("chat")]
    for url in doors:
        r = httpx.post(url, json={**CHAT, "stream": False}, timeout=30)
        assert r.status_code == 401, (url, r.text)
        assert "c-gate" in r.text, r.text
        r = httpx.post(url, json={**CHAT, "stream": False}, headers=OPEN, timeout=30)
        assert r.status_code == 200, (url, r.text)
        assert "hello from C" in r.text
    assert httpx.get(f"{gate_gw.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{gate_gw.url}/v1/models", headers=OPEN, timeout=10).status_code == 200


def test_openai_client_passes_with_the_credentials_the_plugin_accepts(
        gate_gw: Gateway) -> None:
    good = openai.OpenAI(base_url=f"{gate_gw.url}/v1", api_key="open-sesame",
                         max_retries=0, timeout=30)
    out = good.chat.completions.create(model="c-echo",
                                       messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "hello from C"
    bad = openai.OpenAI(base_url=f"{gate_gw.url}/v1", api_key="wrong", max_retries=0,
                        timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="c-echo",
                                    messages=[{"role": "user", "content": "hi"}])


def test_the_plugin_gets_method_path_and_body(gate_gw: Gateway) -> None:
    since = len(events(gate_gw))
    httpx.post(f"{gate_gw.url}/v1/chat/completions", json=CHAT, headers=OPEN, timeout=30)
    assert "auth POST /v1/chat/completions yes body=1" in events(gate_gw)[since:]


def test_public_routes_stay_open_and_the_load_is_logged(gate_gw: Gateway) -> None:
    assert httpx.get(f"{gate_gw.url}/health", timeout=10).status_code == 200
    log = gate_gw.log_tail(2000)
    assert "native plugin c-gate authenticates clients" in log


def test_wrong_management_keys_ban_the_client(gate_gw: Gateway) -> None:
    key = (gate_gw.workdir / "data" / "management.key").read_text().strip()
    url = f"{gate_gw.url}/v0/management/plugins"
    assert httpx.get(url, headers={"X-Management-Key": key}, timeout=10).status_code == 200
    for _ in range(5):
        r = httpx.get(url, headers={"X-Management-Key": "wrong"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"] == "invalid management key"
    start = time.monotonic()
    r = httpx.get(url, headers={"X-Management-Key": key}, timeout=10)
    assert r.status_code == 403, r.text
    assert r.json()["error"].startswith("IP banned due to too many failed attempts")
    assert time.monotonic() - start < 5
