"""Provider keys are encrypted at rest when the operator sets AOGSTREAM_SECRET_KEY.

Real: gateway processes started with and without the secret on one data directory, the
real SQLite file and its WAL read byte for byte while the gateway runs, and a real remote
plugin process (the key-check plugin of test_management_api, here accepting only a long
unique key) whose ValidateAuth proves which key reached it. Proven: a key set through the
management API never appears in plain text in the database or its WAL; the plugin still
gets the right key, also after a restart; a key stored before the secret was set is
sealed at the next start; a gateway started without the secret, or with another one,
refuses to start with an error naming AOGSTREAM_SECRET_KEY; the secret is not passed to
plugin processes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Gateway, GatewayStartError
from test_management_api import KEYCHECK_PY, keycheck_plugin

API = "/aog/v0.2"
SECRET = "operator-secret-" + uuid.uuid4().hex
KEY = "sk-at-rest-" + uuid.uuid4().hex
PROVIDER = "remote_atrest-plugin_chat"


def call(gw: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{API}{path}", json=body, timeout=60)


def db_bytes(gw: Gateway) -> bytes:
    """The database file, its WAL and shared-memory index, as they are on disk now."""
    data = gw.workdir / "data"
    return b"".join(p.read_bytes() for p in sorted(data.glob("aogstream.db*")) if p.is_file())


def install_plugin(gw: Gateway, tmp: Path) -> None:
    src = keycheck_plugin(tmp, "atrest-plugin")
    (src / "plugin.py").write_text(KEYCHECK_PY.replace("good-key", KEY))
    r = call(gw, "POST", "/plugin/install", {"path": str(src)})
    assert r.status_code == 200, r.text


def key_reaches_the_plugin(gw: Gateway) -> None:
    """/service/install sends the stored key to the plugin's ValidateAuth, which accepts
    only KEY."""
    r = call(gw, "POST", "/service/install", {"service_name": "chat",
                                               "service_source": "remote",
                                               "provider_name": PROVIDER})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["service"]["status"] == 1


def refuses_to_start(gw: Gateway, env: dict[str, str]) -> str:
    gw.extra_env = env
    with pytest.raises(GatewayStartError) as info:
        gw.start()
    message = str(info.value)
    assert "AOGSTREAM_SECRET_KEY" in message, message
    assert KEY not in message and SECRET not in message
    return message


def test_keys_are_sealed_reach_the_plugin_and_need_the_secret(gateway_factory, tmp_path):
    gw = gateway_factory("at-rest", AOGSTREAM_SECRET_KEY=SECRET)
    install_plugin(gw, tmp_path)
    r = call(gw, "PUT", "/service_provider",
             {"provider_name": PROVIDER, "auth_key": json.dumps({"api_key": KEY})})
    assert r.status_code == 200, r.text
    assert KEY not in r.text
    key_reaches_the_plugin(gw)
    stored = db_bytes(gw)
    assert b"aogenc1:" in stored
    assert KEY.encode() not in stored

    plugin_pid = next(p["pid"] for p in call(gw, "GET", "/plugin/list").json()["data"]
                      if p["name"] == "atrest-plugin")
    environ = Path(f"/proc/{plugin_pid}/environ")
    if environ.exists():
        assert SECRET.encode() not in environ.read_bytes()

    gw.stop()
    assert KEY.encode() not in db_bytes(gw)
    gw.start()  # same secret: the key opens and reaches the plugin again
    gw.wait_plugin_running(name="atrest-plugin", timeout=30)
    key_reaches_the_plugin(gw)
    gw.stop()

    refuses_to_start(gw, {})
    assert "not the secret" in refuses_to_start(gw, {"AOGSTREAM_SECRET_KEY": "another"})
    gw.extra_env = {"AOGSTREAM_SECRET_KEY": SECRET}
    gw.start()
    gw.wait_plugin_running(name="atrest-plugin", timeout=30)
    key_reaches_the_plugin(gw)


def test_a_plain_key_from_before_is_sealed_at_the_next_start(gateway_factory, tmp_path):
    gw = gateway_factory("at-rest-migrate")
    install_plugin(gw, tmp_path)
    r = call(gw, "PUT", "/service_provider",
             {"provider_name": PROVIDER, "auth_key": json.dumps({"api_key": KEY})})
    assert r.status_code == 200, r.text
    gw.stop()
    assert KEY.encode() in db_bytes(gw)  # no secret: stored as before

    gw.extra_env = {"AOGSTREAM_SECRET_KEY": SECRET}
    gw.start()
    gw.wait_plugin_running(name="atrest-plugin", timeout=30)
    assert KEY.encode() not in db_bytes(gw)
    key_reaches_the_plugin(gw)
    gw.stop()
    refuses_to_start(gw, {})
