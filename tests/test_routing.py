"""Routing for real: hybrid policy, fallback, model choice and credentials.

One gateway serves the local echo-plugin (tests/plugins) and a stand-in cloud provider,
remote-echo-plugin (tests/plugins-hybrid), which answers with `served_by` and a
fingerprint of the credentials it received (sha256 of `auth_info`), never the secret.
The `x-aogstream-provider` / `x-aogstream-plugin` response headers say who served; the
plugins' event file says who was *tried* (a fallback leaves a local event and a remote
answer).

Policies and credentials are set only through the management API (`PUT
/aog/v0.2/service`, `PUT /aog/v0.2/service_provider`), as a user sets them: a broken API
fails these tests instead of being worked around. The SQLite file is only read, at the
end, to prove the key really was stored (so the leak greps could have found it).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PLUGIN_DIR, REPO, Gateway, new_id, parse_sse

from aogstream.config import Config
from aogstream.errors import GatewayError
from aogstream.gateway import Gateway as CoreGateway
from aogstream.manifest import load_manifest
from aogstream.store import SQLiteStore

HYBRID_DIR = REPO / "tests" / "plugins-hybrid"
LOCAL = "echo-plugin"
REMOTE = "remote-echo-plugin"
LOCAL_CHAT = "local_echo-plugin_chat"
REMOTE_CHAT = "remote_remote-echo-plugin_chat"
REMOTE_EMBED = "remote_remote-echo-plugin_embed"
REMOTE_IMAGE = "remote_remote-echo-plugin_text-to-image"
API = "/aog/v0.2"

# fresh secrets per run: grepping for them anywhere is meaningful
KEY = f"sk-aogstream-{uuid.uuid4().hex}"
IMAGE_KEY = f"sk-aogstream-img-{uuid.uuid4().hex}"
AUTH_KEY = json.dumps({"api_key": KEY})
IMAGE_AUTH_KEY = json.dumps({"api_key": IMAGE_KEY})

SEEN: list[str] = []  # every response (status, headers, body) this module received


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the gateway and how to change its store ------------------------------------------


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # a killed plugin stays down for 2 s: long enough to call the gateway meanwhile
    gw = Gateway(tmp_path_factory.mktemp("gw-hybrid"), {"AOGSTREAM_RESTART_BACKOFF": "2"},
                 plugin_dir=[PLUGIN_DIR, HYBRID_DIR]).start()
    try:
        yield gw
    finally:
        gw.stop()


def db_path(gw: Gateway) -> Path:
    return gw.workdir / "data" / "aogstream.db"


def record(r: httpx.Response) -> httpx.Response:
    SEEN.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    return r


def set_policy(gw: Gateway, service: str, policy: str) -> None:
    r = record(httpx.put(f"{gw.url}{API}/service", timeout=10.0,
                         json={"service_name": service, "hybrid_policy": policy}))
    assert r.status_code == 200, r.text


def set_auth_keys(gw: Gateway, keys: dict[str, str]) -> None:
    """Set providers' credentials ({provider_name: auth_key JSON})."""
    for provider, auth_key in keys.items():
        r = record(httpx.put(f"{gw.url}{API}/service_provider", timeout=10.0,
                             json={"provider_name": provider, "auth_key": auth_key}))
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def creds(hybrid: Gateway) -> Gateway:
    """Credentials on the remote chat and text-to-image providers (not on embed)."""
    set_auth_keys(hybrid, {REMOTE_CHAT: AUTH_KEY, REMOTE_IMAGE: IMAGE_AUTH_KEY})
    return hybrid


# ---- calling it -----------------------------------------------------------------------


def call(gw: Gateway, service: str, body: dict[str, Any], *, stream: bool = False
         ) -> tuple[httpx.Response, str]:
    """POST a request with a fresh id; returns the response and the id."""
    tag = new_id("rt")
    payload = {"id": tag, "messages": [{"role": "user", "content": "hi"}], **body}
    if stream:
        payload["stream"] = True
    r = record(httpx.post(gw.service_url(service), json=payload, timeout=30.0))
    return r, tag


def served(r: httpx.Response) -> tuple[str | None, str | None]:
    return r.headers.get("x-aogstream-provider"), r.headers.get("x-aogstream-plugin")


def tried(gw: Gateway, tag: str) -> dict[str, int]:
    """How many calls each plugin received for this request id."""
    out = {LOCAL: 0, REMOTE: 0}
    for ev in gw.events(id=tag):
        if ev["event"] in ("unary", "stream-start"):
            out[ev.get("plugin", LOCAL)] += 1
    return out


def remote_event(gw: Gateway, tag: str) -> dict[str, Any]:
    found = [e for e in gw.events(id=tag) if e.get("plugin") == REMOTE]
    assert found, f"remote-echo-plugin recorded no call for {tag}"
    return found[0]


def kill_plugin(gw: Gateway, name: str) -> int:
    """SIGKILL a plugin process and wait until the gateway sees it down."""
    pid = gw.wait_plugin_running(name=name)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while gw.plugin(name)["state"] == "running" and gw.plugin(name)["pid"] == pid:
        assert time.monotonic() < deadline, f"{name} still running after SIGKILL"
        time.sleep(0.02)
    return pid


# ---- tests ------------------------------------------------------------------------------


def test_default_policy_serves_local(hybrid: Gateway) -> None:
    set_policy(hybrid, "chat", "default")
    r, tag = call(hybrid, "chat", {})
    assert r.status_code == 200, r.text
    assert served(r) == (LOCAL_CHAT, LOCAL)
    assert r.json()["message"]["content"].startswith("tok0")
    assert tried(hybrid, tag) == {LOCAL: 1, REMOTE: 0}

    r, tag = call(hybrid, "chat", {}, stream=True)
    assert r.status_code == 200, r.text
    assert served(r) == (LOCAL_CHAT, LOCAL)
    events = parse_sse(r.content)
    assert events[-1]["finished"] is True and "served_by" not in events[0]
    assert tried(hybrid, tag) == {LOCAL: 1, REMOTE: 0}


def test_remote_without_credentials_is_refused_not_rerouted(hybrid: Gateway) -> None:
    # the embed provider of the remote plugin never gets credentials in this module
    r, tag = call(hybrid, "embed", {"hybrid_policy": "always_remote", "input": "x"})
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["business_code"] == 100102
    assert REMOTE in body["message"] and "api_key" in body["message"]
    # a 4xx is the caller's to fix: the local embed provider is not tried behind its back
    assert tried(hybrid, tag) == {LOCAL: 0, REMOTE: 1}
    assert remote_event(hybrid, tag)["auth"] == {"sha256": "", "fields": []}


def test_a_keyless_remote_is_no_fallback(hybrid: Gateway) -> None:
    """A remote provider without its key cannot serve: trying it after a local failure
    would only replace the local error with "set the key"."""
    r, tag = call(hybrid, "embed", {"input": "x", "fail_code": 11})
    assert r.status_code >= 500, r.text
    assert "api_key" not in r.json()["message"]
    assert tried(hybrid, tag) == {LOCAL: 1, REMOTE: 0}


def test_always_remote_sends_the_providers_credentials(creds: Gateway) -> None:
    set_policy(creds, "chat", "always_remote")
    r, tag = call(creds, "chat", {})
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    body = r.json()
    assert body["served_by"] == REMOTE
    assert body["auth"] == {"sha256": sha(AUTH_KEY), "fields": ["api_key"]}
    assert tried(creds, tag) == {LOCAL: 0, REMOTE: 1}

    r, tag = call(creds, "chat", {}, stream=True)
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    events = parse_sse(r.content)
    assert [e["served_by"] for e in events] == [REMOTE] * len(events)
    assert events[0]["auth"]["sha256"] == sha(AUTH_KEY)
    assert events[-1]["finished"] is True
    assert remote_event(creds, tag)["auth"]["sha256"] == sha(AUTH_KEY)

    # credentials belong to one provider: the same plugin's embed provider has none
    r, _ = call(creds, "embed", {"hybrid_policy": "always_remote", "input": "x"})
    assert r.status_code == 401, r.text


def test_credentials_go_only_to_their_provider(tmp_path: Path) -> None:
    """What each route hands its plugin as auth_info (the hot path passes no other):
    the remote provider's key to the remote plugin, nothing to the local one."""
    cfg = Config(data_dir=tmp_path, plugin_dirs=[PLUGIN_DIR, HYBRID_DIR])
    store = SQLiteStore(cfg.db_path)
    gw = CoreGateway(cfg, None, store)  # type: ignore[arg-type]  # no plugin is started
    try:
        gw.add_plugin(load_manifest(PLUGIN_DIR / LOCAL))
        gw.add_plugin(load_manifest(HYBRID_DIR / REMOTE))
        gw._register_all()
        row = store.get_provider(REMOTE_CHAT)
        assert row is not None
        row.auth_key = AUTH_KEY
        store.put_provider(row)
        gw._rebuild()

        for policy in ("default", "always_remote"):
            routes = gw.routes("chat", {"hybrid_policy": policy})
            auth = {rt.provider_name: rt.auth_info for rt in routes}
            assert auth == {LOCAL_CHAT: "", REMOTE_CHAT: AUTH_KEY}, policy
            assert routes[0].source == ("local" if policy == "default" else "remote")
        assert [(rt.provider_name, rt.auth_info) for rt in
                gw.routes("chat", {"hybrid_policy": "always_local"})] == [(LOCAL_CHAT, "")]
        assert {rt.provider_name: rt.auth_info for rt in
                gw.routes("embed", {"hybrid_policy": "always_remote"})} == {
                    REMOTE_EMBED: "", "local_echo-plugin_embed": ""}
    finally:
        store.close()


def test_policy_holds_without_provider_rows(tmp_path: Path) -> None:
    """With no provider rows for a service (deleted, or not written yet) the gateway
    falls back to the plugins themselves, and the policy still decides: always_local
    never lists a remote plugin."""
    cfg = Config(data_dir=tmp_path, plugin_dirs=[PLUGIN_DIR, HYBRID_DIR])
    store = SQLiteStore(cfg.db_path)
    gw = CoreGateway(cfg, None, store)  # type: ignore[arg-type]  # no plugin is started
    try:
        gw.add_plugin(load_manifest(PLUGIN_DIR / LOCAL))
        gw.add_plugin(load_manifest(HYBRID_DIR / REMOTE))
        gw._register_all()
        for row in store.providers(service_name="chat"):
            store.delete_provider(row.provider_name)
        store.delete_provider("local_echo-plugin_embed")
        gw._rebuild()
        names = {policy: [rt.provider.name for rt in gw.routes("chat", {"hybrid_policy": policy})]
                 for policy in ("default", "always_local", "always_remote")}
        assert names == {"default": [LOCAL, REMOTE], "always_local": [LOCAL],
                         "always_remote": [REMOTE, LOCAL]}
        # embed still has its remote row: always_local refuses instead of using it
        with pytest.raises(GatewayError) as info:
            gw.routes("embed", {"hybrid_policy": "always_local"})
        assert info.value.status == 404 and "always_local" in info.value.message
    finally:
        store.close()


def test_request_policy_overrides_the_service_policy(creds: Gateway) -> None:
    set_policy(creds, "chat", "always_remote")
    r, _ = call(creds, "chat", {})
    assert served(r) == (REMOTE_CHAT, REMOTE)
    for policy in ("default", "always_local"):
        r, tag = call(creds, "chat", {"hybrid_policy": policy})
        assert r.status_code == 200, r.text
        assert served(r) == (LOCAL_CHAT, LOCAL), policy
        assert tried(creds, tag) == {LOCAL: 1, REMOTE: 0}

    set_policy(creds, "chat", "always_local")
    r, _ = call(creds, "chat", {})
    assert served(r) == (LOCAL_CHAT, LOCAL)
    r, _ = call(creds, "chat", {"hybrid_policy": "always_remote"}, stream=True)
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)

    r, _ = call(creds, "chat", {"hybrid_policy": "sometimes"})
    assert r.status_code == 400, r.text
    assert "sometimes" in r.json()["message"] and "always_local" in r.json()["message"]


def test_a_request_policy_reaches_a_remote_only_service(creds: Gateway) -> None:
    """text-to-image has only a remote provider: with the service at always_local it is
    refused with the reason, and a request saying always_remote is still served."""
    set_policy(creds, "text-to-image", "always_local")
    r, tag = call(creds, "text-to-image", {"prompt": "a cat"})
    assert r.status_code == 404, r.text
    assert "always_local" in r.json()["message"]
    assert tried(creds, tag) == {LOCAL: 0, REMOTE: 0}

    r, tag = call(creds, "text-to-image", {"prompt": "a cat", "hybrid_policy": "always_remote"})
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_IMAGE, REMOTE)
    # this provider's own key, not the chat provider's
    assert r.json()["auth"]["sha256"] == sha(IMAGE_AUTH_KEY)


def test_always_local_never_reaches_remote(creds: Gateway) -> None:
    set_policy(creds, "chat", "always_local")
    r, tag = call(creds, "chat", {"fail_code": 11})
    assert r.status_code == 500, r.text
    assert LOCAL in r.json()["message"]
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 0}

    r, tag = call(creds, "chat", {"error_after": 0}, stream=True)
    assert r.status_code >= 500, r.text
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 0}

    # a model only the cloud has is refused rather than sent there
    r, tag = call(creds, "chat", {"model": "cloud-chat-1"})
    assert r.status_code == 404, r.text
    assert "always_local" in r.json()["message"]
    assert tried(creds, tag) == {LOCAL: 0, REMOTE: 0}

    # the local plugin down: an error, not the cloud
    pid = kill_plugin(creds, LOCAL)
    try:
        for stream in (False, True):
            r, tag = call(creds, "chat", {}, stream=stream)
            assert r.status_code == 503, r.text
            assert LOCAL in r.json()["message"]
            assert tried(creds, tag) == {LOCAL: 0, REMOTE: 0}
    finally:
        creds.wait_plugin_running(not_pid=pid, timeout=20.0)


def test_fallback_to_remote_before_the_first_byte(creds: Gateway) -> None:
    set_policy(creds, "chat", "default")
    # the local provider fails before answering: the remote one serves, for both modes
    r, tag = call(creds, "chat", {"fail_code": 11})
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    assert r.json()["auth"]["sha256"] == sha(AUTH_KEY)
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 1}

    r, tag = call(creds, "chat", {"error_after": 0}, stream=True)
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    events = parse_sse(r.content)
    assert events and all(e["served_by"] == REMOTE for e in events)
    assert events[-1]["finished"] is True
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 1}

    # the local plugin down (killed, restarting): the remote one serves
    pid = kill_plugin(creds, LOCAL)
    try:
        for stream in (False, True):
            r, tag = call(creds, "chat", {}, stream=stream)
            assert r.status_code == 200, r.text
            assert served(r) == (REMOTE_CHAT, REMOTE), stream
            assert tried(creds, tag) == {LOCAL: 0, REMOTE: 1}
    finally:
        creds.wait_plugin_running(not_pid=pid, timeout=20.0)
    r, _ = call(creds, "chat", {})
    assert served(r) == (LOCAL_CHAT, LOCAL)

    # and the other way round: always_remote falls back to local when the cloud fails
    r, tag = call(creds, "chat", {"hybrid_policy": "always_remote", "remote_fail_code": 11})
    assert r.status_code == 200, r.text
    assert served(r) == (LOCAL_CHAT, LOCAL)
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 1}


def test_mistakes_and_late_failures_are_not_retried(creds: Gateway) -> None:
    set_policy(creds, "chat", "default")
    for code, status in ((2, 400), (14, 401)):
        r, tag = call(creds, "chat", {"fail_code": code, "fail_message": "bad request"})
        assert r.status_code == status, r.text
        assert tried(creds, tag) == {LOCAL: 1, REMOTE: 0}, code

    # a stream that already sent bytes cannot be moved: the error ends it in-band
    r, tag = call(creds, "chat", {"error_after": 2, "tokens": 5}, stream=True)
    assert r.status_code == 200
    assert served(r) == (LOCAL_CHAT, LOCAL)
    assert b"mid-stream" in r.content
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 0}

    # the last provider's 5xx is the answer (nothing left to try)
    r, tag = call(creds, "chat", {"fail_code": 11, "remote_fail_code": 11})
    assert r.status_code == 500, r.text
    assert tried(creds, tag) == {LOCAL: 1, REMOTE: 1}


def test_a_named_model_picks_its_provider(creds: Gateway) -> None:
    set_policy(creds, "chat", "default")
    r, tag = call(creds, "chat", {"model": "cloud-chat-1"})
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    assert tried(creds, tag) == {LOCAL: 0, REMOTE: 1}

    r, _ = call(creds, "chat", {"model": "cloud-chat-1"}, stream=True)
    assert served(r) == (REMOTE_CHAT, REMOTE)

    r, _ = call(creds, "chat", {"model": "echo"})
    assert served(r) == (LOCAL_CHAT, LOCAL)

    r, tag = call(creds, "chat", {"model": "no-such-model"})
    assert r.status_code == 404, r.text
    msg = r.json()["message"]
    assert r.json()["business_code"] == 100301
    assert "no-such-model" in msg and "cloud-chat-1" in msg
    assert tried(creds, tag) == {LOCAL: 0, REMOTE: 0}


def test_credentials_survive_a_restart(creds: Gateway) -> None:
    """Restarting re-discovers the plugins and re-registers their providers; the key
    the user set stays."""
    creds.stop()
    creds.start()
    r, _ = call(creds, "chat", {"hybrid_policy": "always_remote"})
    assert r.status_code == 200, r.text
    assert served(r) == (REMOTE_CHAT, REMOTE)
    assert r.json()["auth"]["sha256"] == sha(AUTH_KEY)


def test_credentials_never_leak(creds: Gateway) -> None:
    record(httpx.get(f"{creds.url}{API}/plugin/list", timeout=5.0))
    for path in ("/service_provider", f"/service_provider/detail?provider_name={REMOTE_CHAT}",
                 "/service", "/model"):
        r = record(httpx.get(f"{creds.url}{API}{path}", timeout=5.0))
        assert r.status_code == 200, (path, r.text)
    listed = [p for p in httpx.get(f"{creds.url}{API}/service_provider",
                                   timeout=5.0).json()["data"]
              if p["provider_name"] == REMOTE_CHAT]
    assert listed and "auth_key" not in listed[0]
    assert SEEN  # the whole module's responses when run together
    for text in SEEN:
        assert KEY not in text and IMAGE_KEY not in text
    log = creds.log_file.read_text(errors="replace")
    assert KEY not in log and IMAGE_KEY not in log
    if creds.events_file.exists():
        assert KEY not in creds.events_file.read_text()
    # the key is really stored (so the greps above could have found it)
    store = SQLiteStore(db_path(creds))
    try:
        row = store.get_provider(REMOTE_CHAT)
        assert row is not None and row.auth_key == AUTH_KEY
        assert KEY not in json.dumps(row.public())
    finally:
        store.close()
