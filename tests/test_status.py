"""Honest status, against a real gateway (subprocess, echo plugin process, SQLite store)
over real HTTP, and the `aogstream get` tables as a real CLI subprocess.

Proven here: right after start a service that a running plugin serves says so
(status 1, state "serving", not "not installed") although nobody ran
`/service/install`; a provider whose credentials are not set is not "healthy"
(status 0, state "needs a key", and the reason says how to set them), and neither are
its cloud models usable ("needs a key", not just "downloaded"); setting the key makes
both serve; a provider whose plugin is not loaded or is stopped is "down" with the
reason; the CLI tables print these states.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PLUGIN_DIR, REPO, Gateway

API = "/aog/v0.2"
CLOUD = "remote_remote-echo-plugin_chat"  # a cloud plugin's row, no key set yet


def get(gw: Gateway, path: str, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}{API}{path}", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def cli(gw: Gateway, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    env["AOG_HOST"] = gw.url
    proc = subprocess.run([sys.executable, "-m", "aogstream", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The local echo plugin and a stand-in cloud plugin whose services need a key."""
    g = Gateway(tmp_path_factory.mktemp("status"),
                plugin_dir=[PLUGIN_DIR, REPO / "tests" / "plugins-hybrid"]).start()
    try:
        yield g
    finally:
        g.stop()


def test_a_service_a_running_plugin_serves_is_not_reported_not_installed(gw: Gateway):
    chat = get(gw, "/service", service_name="chat")[0]
    assert (chat["status"], chat["state"]) == (1, "serving"), chat
    assert "local_echo-plugin_chat" in chat["reason"]
    # a service nobody offers stays "not installed", and says so
    i2v = get(gw, "/service", service_name="image-to-video")[0]
    assert (i2v["status"], i2v["state"]) == (-1, "not installed"), i2v
    # a service only a keyless cloud provider offers needs a key, and says whose
    tti = get(gw, "/service", service_name="text-to-image")[0]
    assert tti["state"] == "needs a key" and "remote-echo-plugin" in tti["reason"], tti
    table = cli(gw, "get", "services")
    chat_line = next(ln for ln in table.splitlines() if ln.startswith("chat "))
    assert "serving" in chat_line and "not installed" not in chat_line, table


def test_a_provider_without_its_key_is_not_healthy_nor_its_models_usable(gw: Gateway):
    row = get(gw, "/service_provider", provider_name=CLOUD)[0]
    assert (row["status"], row["state"]) == (0, "needs a key"), row
    assert "auth_key" in row["reason"] and CLOUD in row["reason"]
    model = get(gw, "/model", provider_name=CLOUD)[0]
    assert model["state"] == "needs a key", model
    assert "needs a key" in cli(gw, "get", "models", "-p", CLOUD)
    assert "needs a key" in cli(gw, "get", "service_providers", "-p", CLOUD)
    local = get(gw, "/service_provider", provider_name="local_echo-plugin_chat")[0]
    assert (local["status"], local["state"]) == (1, "serving"), local

    r = httpx.put(f"{gw.url}{API}/service_provider", json={
        "provider_name": CLOUD, "auth_key": json.dumps({"api_key": "sk-status"})}, timeout=30)
    assert r.status_code == 200, r.text
    row = get(gw, "/service_provider", provider_name=CLOUD)[0]
    assert (row["status"], row["state"]) == (1, "serving"), row
    assert get(gw, "/model", provider_name=CLOUD)[0]["state"] == "serving"
    assert "sk-status" not in json.dumps(row)


def test_a_provider_whose_plugin_is_missing_or_stopped_is_down_with_the_reason(gw: Gateway):
    r = httpx.post(f"{gw.url}{API}/service_provider", json={
        "service_name": "embed", "service_source": "local", "api_flavor": "ghost-plugin",
        "provider_name": "local_ghost_embed"}, timeout=30)
    assert r.status_code == 200, r.text
    ghost = get(gw, "/service_provider", provider_name="local_ghost_embed")[0]
    assert (ghost["status"], ghost["state"]) == (0, "down") and "ghost-plugin" in ghost["reason"]

    stop = httpx.post(f"{gw.url}{API}/plugin/stop", json={"name": "echo-plugin"}, timeout=30)
    assert stop.status_code == 200, stop.text
    try:
        local = get(gw, "/service_provider", provider_name="local_echo-plugin_chat")[0]
        assert (local["status"], local["state"]) == (0, "down"), local
        assert "echo-plugin is stopped" in local["reason"]
        gen = get(gw, "/service", service_name="generate")[0]
        assert gen["state"] == "down" and "stopped" in gen["reason"], gen
    finally:
        httpx.post(f"{gw.url}{API}/plugin/load", json={"name": "echo-plugin"}, timeout=30)
    gw.wait_plugin_running()
