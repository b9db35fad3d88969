"""Auth providers of native plugins: login, auth records, credentials on calls, and
refused credentials taken out of rotation — in a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with its default worker
processes; the C plugin `c-auth` (tests/native/auth_plugin.c, built by
tools/build-native-plugins.sh, loaded unchanged): an auth provider, a model provider and
an executor that answers with the credential it was given; httpx and the official
`openai` client over loopback; the auth files in the gateway's data directory.

Proven: without a record the executor is called without a credential; a login through
CPA's management routes (`/v0/management/c-auth-auth-url`, then
`get-auth-status?state=` answering `wait`, then `ok`) calls the plugin's
`auth.login.start`/`poll` with the management callback URL and saves the record it
returns as a 0600 file, which every serving process then hands to the executor
(`AuthID`, `StorageJSON`); the management API never shows the credential; a plugin
lists, reads and saves records through `host.auth.list`/`get`/`save`; a record the
plugin refuses with 429 leaves the rotation and the call is served by the next
record, and when every record is refused the client gets a 429 that says so.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import Gateway
from harness import native

BUILT = native.BUILT  # the names other modules import
_arch = native.arch


@pytest.fixture(scope="module")
def auth_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with native.native_gateway(tmp_path_factory.mktemp("native-auth"), ["c-auth"],
                               native.enabled("c-auth")) as gw:
        yield gw


def auth_dir(gw: Gateway) -> Path:
    return gw.workdir / "data" / "native-auths"


def mgmt(gw: Gateway) -> dict[str, str]:
    key = (gw.workdir / "data" / "management.key").read_text().strip()
    return {"Authorization": f"Bearer {key}"}


def ask(gw: Gateway, text: str) -> str:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    out = client.chat.completions.create(model="c-keyed",
                                         messages=[{"role": "user", "content": text}])
    return out.choices[0].message.content or ""


def test_without_a_record_the_executor_gets_no_credential(auth_gw: Gateway) -> None:
    assert ask(auth_gw, "hi") == "served without a credential"


def test_login_saves_a_record_every_process_hands_to_the_executor(auth_gw: Gateway) -> None:
    base = f"{auth_gw.url}/v0/management"
    assert httpx.get(f"{base}/c-auth-auth-url", timeout=10).status_code == 401
    r = httpx.get(f"{base}/c-auth-auth-url", headers=mgmt(auth_gw), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "url": "https://example.invalid/login",
                        "state": "st-c-auth"}
    lines = auth_gw.native_events.read_text().splitlines()  # type: ignore[attr-defined]
    assert f"login-start base={base}/oauth-callback" in lines
    status = f"{base}/get-auth-status"
    r = httpx.get(status, params={"state": "st-c-auth"}, headers=mgmt(auth_gw), timeout=10)
    assert r.json() == {"status": "wait"}
    r = httpx.get(status, params={"state": "st-c-auth"}, headers=mgmt(auth_gw), timeout=10)
    assert r.json() == {"status": "ok"}
    r = httpx.get(status, params={"state": "st-c-auth"}, headers=mgmt(auth_gw), timeout=10)
    assert r.status_code == 404 and r.json()["status"] == "error"  # the login is over
    saved = auth_dir(auth_gw) / "c-auth-1.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    doc = json.loads(saved.read_text())
    assert doc["type"] == "c-auth" and doc["api_key"] == "key-1"
    for _ in range(6):  # on whichever process serves it
        assert ask(auth_gw, "hi") == "served with key-1 as c-auth-1"
    listed = httpx.get(f"{base}/plugins", headers=mgmt(auth_gw), timeout=10)
    assert listed.status_code == 200 and "key-1" not in listed.text


def test_plugins_list_read_and_save_records_through_host_auth(auth_gw: Gateway) -> None:
    assert ask(auth_gw, "list-auths") == "auths: c-auth-1.json"
    assert '"api_key":"key-1"' in ask(auth_gw, "get-auth c-auth-1")
    assert "saved-by-plugin.json" in ask(auth_gw, "save-auth")
    saved = auth_dir(auth_gw) / "saved-by-plugin.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["api_key"] == "key-saved"
    saved.unlink()


def test_a_refused_record_leaves_the_rotation_and_the_next_serves(auth_gw: Gateway) -> None:
    limited = auth_dir(auth_gw) / "a-limited.json"
    limited.write_text('{"type": "c-auth", "api_key": "key-limited"}')
    limited.chmod(0o600)
    for _ in range(8):
        assert ask(auth_gw, "hi") == "served with key-1 as c-auth-1"
    assert "native auth a-limited (c-auth) answered 429: out of rotation" in \
        auth_gw.log_tail(3000)


def test_every_record_refused_is_a_429_that_says_so(auth_gw: Gateway) -> None:
    (auth_dir(auth_gw) / "c-auth-1.json").unlink()
    with pytest.raises(openai.RateLimitError) as info:
        ask(auth_gw, "hi")
    assert "every credential of provider c-auth" in str(info.value)
