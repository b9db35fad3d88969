"""Native plugins' per-auth models, auth import, credential refresh, the scheduler
slot and raw HTTP with a stored credential — in a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with worker processes beside the
primary (AOGSTREAM_WORKERS=2); three builds of the C plugin tests/native/auth_ops_plugin.c
(built by tools/build-native-plugins.sh, loaded unchanged): `c-authx`
(executor_model_scope `both`, priority 1), `c-authy` (scope `oauth`, priority 2) and
`c-authz` (scope `static`, priority 0); the official `openai` client and httpx over
loopback; a loopback HTTP server the plugin calls through `host.http.do`; the auth
files in the gateway's data directory.

Proven:
- `model.for_auth`: each record's models are listed on `/v1/models`, `/api/tags` and
  AOG's model list and route to the plugin bound to that record; a removed record's
  models go; the plugin is asked once per record change, not once per process; a
  non-empty `AuthUpdate` rewrites the record (0600, the fields it left
  empty kept) and an all-zero one does not; scope `oauth` never calls `model.static`,
  scope `static` never calls `model.for_auth`;
- `auth.parse` (`POST /v0/management/auth-files`): with no provider the plugins are
  asked in priority order and the first `Handled` wins; its `Auths` are saved, not its
  `Auth`; a named provider that does not take the file is a 400; a record file with a
  `type` is saved as it is; the new records' models route before the answer; an untyped
  file dropped into the folder is parsed the same way and set aside; the records
  `aogstream plugin run` gets from `command_line.execute` are saved and serve;
- `auth.refresh`: a record past its `next_refresh_after` is renewed once, in the
  background, the fields the plugin left empty back-filled; a failing refresh is
  retried with back-off and logged without the credential; a 401 from the executor
  renews the refused record while the client is told, and it serves again;
- `scheduler.pick`: only the highest-priority scheduler is asked; its `AuthID` picks,
  an unknown one falls back to the built-in choice, `DelegateBuiltin: fill-first`
  takes the record of highest priority, and an error rejects the request with the
  scheduler's status;
- `executor.http_request` (`POST /v0/management/api-call`): the plugin makes the call
  with the record's credential; `StatusCode` 0 answers 200; bad bodies are 400s.
No credential ever appears in a management answer or the gateway's log.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import openai
import pytest
from conftest import Gateway
from harness import cloud, native
from test_native_auth import auth_dir, mgmt

SECRETS: list[str] = []  # every credential the tests hand the gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("native-auth-ops")
    config = ("    c-authx:\n      enabled: true\n      priority: 1\n"
              "    c-authy:\n      enabled: true\n      priority: 2\n"
              "    c-authz:\n      enabled: true\n")
    # worker processes whatever the core count: what one process discovers, renews or
    # refuses must hold on every process
    with native.native_gateway(work, ["c-authx", "c-authy", "c-authz"], config,
                               env={"AOGSTREAM_WORKERS": "2"}) as g:
        g.native_dir = work / "native-plugins"  # type: ignore[attr-defined]
        yield g
        log = g.log_file.read_text(errors="replace")
        leaked = [s for s in SECRETS if s in log]
        assert not leaked, f"credentials in the gateway log: {leaked}"


# ---- helpers ------------------------------------------------------------------------

def wait_for(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """`cond()` once it is truthy; fails after `timeout` s saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def events(gw: Gateway) -> list[str]:
    return native.native_events(gw)


def upload(gw: Gateway, name: str, doc: dict[str, Any], provider: str = "",
           multipart: bool = False) -> httpx.Response:
    for v in doc.values():
        if isinstance(v, str) and v.startswith("k-"):
            SECRETS.append(v)
    url = f"{gw.url}/v0/management/auth-files"
    raw = json.dumps(doc, separators=(",", ":")).encode()  # the C plugin reads it as text
    params = {"provider": provider} if provider else {}
    if multipart:
        return httpx.post(url, params=params, headers=mgmt(gw), timeout=30,
                          files={"file": (name, raw, "application/json")})
    return httpx.post(url, params={"name": name, **params}, headers=mgmt(gw), timeout=30,
                      content=raw)


def record(gw: Gateway, name: str, doc: dict[str, Any]) -> None:
    """A record saved through the management API (answered once every process
    routes its models)."""
    r = upload(gw, name, doc)
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text


def remove(gw: Gateway, name: str) -> None:
    r = httpx.delete(f"{gw.url}/v0/management/auth-files", params={"name": name},
                     headers=mgmt(gw), timeout=30)
    assert r.status_code == 200, r.text


def clear(gw: Gateway) -> None:
    folder = auth_dir(gw)
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        remove(gw, path.name)


def stored(gw: Gateway, name: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((auth_dir(gw) / name).read_text())
    except (OSError, ValueError):
        return {}
    return doc


def models(gw: Gateway) -> set[str]:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    return {m.id for m in client.models.list()}


def ask(gw: Gateway, model: str) -> str:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    out = client.chat.completions.create(model=model,
                                         messages=[{"role": "user", "content": "hi"}])
    return out.choices[0].message.content or ""


# ---- model.for_auth -----------------------------------------------------------------

def test_each_records_models_are_listed_and_served_with_that_record(gw: Gateway) -> None:
    clear(gw)
    assert "cx-static" in models(gw)
    record(gw, "one.json", {"type": "c-authx", "api_key": "k-one-secret"})
    record(gw, "two.json", {"type": "c-authx", "api_key": "k-two-secret"})
    listed = models(gw)
    assert {"cx-static", "cx-one", "cx-two", "cx-shared"} <= listed
    # asked once per record, by the primary; the workers take its answers
    assert events(gw).count("for_auth c-authx one") == 1
    tags = httpx.get(f"{gw.url}/api/tags", timeout=10).json()
    assert {"cx-one", "cx-two"} <= {m["name"] for m in tags["models"]}
    aog = httpx.get(f"{gw.url}/aog/v0.2/model", timeout=10).json()
    assert {"cx-one", "cx-two"} <= {r["model_name"] for r in aog["data"]}
    for _ in range(6):  # whichever process serves it, the model keeps its record
        assert ask(gw, "cx-one") == "cx-one as one with k-one-secret"
        assert ask(gw, "cx-two") == "cx-two as two with k-two-secret"
        assert ask(gw, "cx-shared").split(" as ")[1] in ("one with k-one-secret",
                                                          "two with k-two-secret")
    remove(gw, "two.json")
    assert "cx-two" not in models(gw) and "cx-one" in models(gw)
    with pytest.raises(openai.APIStatusError):
        ask(gw, "cx-two")


def test_an_auth_update_rewrites_the_record_and_an_empty_one_does_not(gw: Gateway) -> None:
    clear(gw)
    record(gw, "plain.json", {"type": "c-authx", "api_key": "k-plain", "label": "mine"})
    before = (auth_dir(gw) / "plain.json").read_bytes()
    record(gw, "upd.json", {"type": "c-authx", "api_key": "k-update-me", "email": "u@x"})
    doc = stored(gw, "upd.json")
    assert doc["api_key"] == "k-updated" and doc["label"] == "updated by for_auth"
    assert doc["type"] == "c-authx"
    assert stat.S_IMODE((auth_dir(gw) / "upd.json").stat().st_mode) == 0o600
    assert (auth_dir(gw) / "plain.json").read_bytes() == before  # zero AuthUpdate
    assert ask(gw, "cx-upd") == "cx-upd as upd with k-updated"


def test_scope_oauth_lists_only_per_auth_models(gw: Gateway) -> None:
    clear(gw)
    assert not any(m.startswith("cy-") for m in models(gw))
    record(gw, "y1.json", {"type": "c-authy", "api_key": "k-y1-secret"})
    assert {"cy-y1", "cy-shared"} <= models(gw) and "cy-static" not in models(gw)
    assert ask(gw, "cy-y1") == "cy-y1 as y1 with k-y1-secret"
    assert not [e for e in events(gw) if e.startswith("static c-authy")]
    assert [e for e in events(gw) if e.startswith("static c-authx")]
    remove(gw, "y1.json")
    assert "cy-y1" not in models(gw)


def test_scope_static_never_asks_for_per_auth_models(gw: Gateway) -> None:
    clear(gw)
    record(gw, "z1.json", {"type": "c-authz", "api_key": "k-z1-secret"})
    assert "cz-static" in models(gw) and "cz-z1" not in models(gw)
    assert ask(gw, "cz-static") == "cz-static as z1 with k-z1-secret"
    assert not [e for e in events(gw) if e.startswith("for_auth c-authz")]
    listed = httpx.get(f"{gw.url}/v0/management/plugins", headers=mgmt(gw), timeout=10)
    assert listed.status_code == 200 and "k-z1-secret" not in listed.text


# ---- auth.parse ------------------------------------------------------------------------

def test_an_imported_file_is_parsed_by_the_first_plugin_that_handles_it(gw: Gateway) -> None:
    clear(gw)
    seen = len(events(gw))
    SECRETS.append("tok-secret")
    r = upload(gw, "imported.json", {"cx_token": "tok-secret"}, multipart=True)
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    assert "tok-secret" not in r.text
    parses = [e for e in events(gw)[seen:] if e.startswith("parse ")]
    assert parses == ["parse c-authy provider=", "parse c-authx provider="]
    names = sorted(p.name for p in auth_dir(gw).glob("*.json"))
    assert names == ["cx-a.json", "cx-b.json"]  # Auths, not Auth; not the upload itself
    a = stored(gw, "cx-a.json")
    assert a == {"api_key": "tok-secret-a", "type": "c-authx", "label": "imported a"}
    assert stat.S_IMODE((auth_dir(gw) / "cx-a.json").stat().st_mode) == 0o600
    assert {"cx-cx-a", "cx-cx-b"} <= models(gw)  # routed before the answer
    assert ask(gw, "cx-cx-b") == "cx-cx-b as cx-b with tok-secret-b"


def test_an_import_no_plugin_takes_is_refused_or_kept_as_a_record(gw: Gateway) -> None:
    clear(gw)
    r = upload(gw, "other.json", {"cx_token": "tok-2"}, provider="c-authy")
    assert r.status_code == 400 and r.json()["error"] == "invalid auth file"
    assert "c-authy" in r.json()["message"]
    r = upload(gw, "odd.json", {"something": "else"})
    assert r.status_code == 400 and "no auth provider recognized" in r.json()["message"]
    r = httpx.post(f"{gw.url}/v0/management/auth-files", params={"name": "bad.json"},
                   headers=mgmt(gw), content=b"{not json", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = httpx.post(f"{gw.url}/v0/management/auth-files", params={"name": "../x.json"},
                   headers=mgmt(gw), content=b"{}", timeout=10)
    assert r.status_code == 400
    assert httpx.post(f"{gw.url}/v0/management/auth-files", params={"name": "x.json"},
                      content=b"{}", timeout=10).status_code == 401
    assert not list(auth_dir(gw).glob("*.json"))
    record(gw, "typed.json", {"type": "c-authx", "api_key": "k-typed"})
    assert stored(gw, "typed.json") == {"type": "c-authx", "api_key": "k-typed"}


def test_an_untyped_file_dropped_into_the_folder_is_parsed_by_the_plugins(
        gw: Gateway) -> None:
    clear(gw)
    SECRETS.append("tok-dropped")
    folder = auth_dir(gw)
    tmp = folder / "dropped.part"  # written whole, then renamed in: never read half
    tmp.write_text('{"cx_token":"tok-dropped"}')
    tmp.chmod(0o600)
    tmp.rename(folder / "dropped.json")
    wait_for(lambda: stored(gw, "cx-b.json").get("api_key") == "tok-dropped-b",
             "the dropped file to be imported")
    assert stored(gw, "cx-a.json")["api_key"] == "tok-dropped-a"
    assert not (folder / "dropped.json").exists()  # kept aside, no longer a record
    assert (folder / "dropped.json.imported").exists()
    tmp.write_text('{"nothing":"here"}')
    tmp.rename(folder / "unknown.json")
    wait_for(lambda: 'auth file unknown.json has no "type" and was not imported' in
             gw.log_tail(3000), "the unknown file to be logged")
    (folder / "unknown.json").unlink()
    (folder / "dropped.json.imported").unlink()


def test_records_the_command_line_returns_are_saved_and_serve(gw: Gateway) -> None:
    clear(gw)
    SECRETS.append("k-cli-secret")
    data = gw.workdir / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    env.update({"AOG_DATA_DIR": str(data),
                "AOG_PLUGIN_DIR": str(gw.native_dir)})  # type: ignore[attr-defined]
    out = subprocess.run([sys.executable, "-m", "aogstream", "plugin", "run", "c-authx",
                          "-login"], cwd=data, env=env, capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout) == (0, "logged in\n"), out.stderr
    assert "saved auth record cx-cli (c-authx)" in out.stderr
    assert "k-cli-secret" not in out.stderr
    doc = stored(gw, "cx-cli.json")
    assert doc == {"api_key": "k-cli-secret", "type": "c-authx",
                   "label": "from the command line"}
    assert stat.S_IMODE((auth_dir(gw) / "cx-cli.json").stat().st_mode) == 0o600
    wait_for(lambda: "cx-cx-cli" in models(gw), "the running gateway to route it")
    assert ask(gw, "cx-cx-cli") == "cx-cx-cli as cx-cli with k-cli-secret"


# ---- auth.refresh -------------------------------------------------------------------

def test_a_record_past_its_refresh_time_is_renewed_in_the_background(gw: Gateway) -> None:
    clear(gw)
    record(gw, "r1.json", {"type": "c-authx", "api_key": "k-r1-secret", "label": "keep me",
                           "next_refresh_after": "2000-01-01T00:00:00Z"})
    doc = wait_for(lambda: stored(gw, "r1.json").get("api_key") == "renewed-r1"
                   and stored(gw, "r1.json"), "r1.json to be refreshed")
    assert doc["label"] == "keep me" and doc["type"] == "c-authx"  # back-filled
    assert doc["next_refresh_after"] == "2999-01-01T00:00:00Z"
    assert doc["last_refresh"].endswith("Z")
    assert stat.S_IMODE((auth_dir(gw) / "r1.json").stat().st_mode) == 0o600
    assert [e for e in events(gw) if e.startswith("refresh ")] .count(
        "refresh c-authx r1") == 1  # once, by one process
    assert ask(gw, "cx-r1") == "cx-r1 as r1 with renewed-r1"
    assert "native auth r1 (c-authx) refreshed by native plugin c-authx" in \
        gw.log_tail(5000)


def test_a_failing_refresh_is_retried_with_back_off_and_logged_without_it(
        gw: Gateway) -> None:
    clear(gw)
    record(gw, "f1.json", {"type": "c-authx", "api_key": "k-fail-secret",
                           "next_refresh_after": "2000-01-01T00:00:00Z"})
    wait_for(lambda: events(gw).count("refresh c-authx f1") >= 3, "three refresh tries")
    log = gw.log_tail(5000)
    for delay in (1, 2):  # the back-off doubles
        assert "native auth f1 (c-authx): auth.refresh failed: refresh refused for " \
            f"[redacted]; trying again in {delay} s" in log
    assert "k-fail-secret" not in gw.log_file.read_text(errors="replace")
    remove(gw, "f1.json")


def test_a_401_renews_the_refused_record_which_then_serves_again(gw: Gateway) -> None:
    clear(gw)
    record(gw, "e1.json", {"type": "c-authx", "api_key": "k-e1-expired"})
    with pytest.raises(openai.RateLimitError) as info:
        ask(gw, "cx-e1")  # its only record answers 401: the client is told at once
    assert "every credential of provider c-authx" in str(info.value)
    wait_for(lambda: stored(gw, "e1.json").get("api_key") == "renewed-e1",
             "the refused record to be refreshed")
    assert ask(gw, "cx-e1") == "cx-e1 as e1 with renewed-e1"
    assert "refresh c-authx e1" in events(gw)


# ---- scheduler.pick ------------------------------------------------------------------

def test_only_the_highest_priority_scheduler_picks_and_its_auth_id_wins(gw: Gateway) -> None:
    clear(gw)
    record(gw, "pick-me.json", {"type": "c-authx", "api_key": "k-pick"})
    record(gw, "plain.json", {"type": "c-authx", "api_key": "k-plain"})
    seen = len(events(gw))
    for _ in range(6):
        assert ask(gw, "cx-static") == "cx-static as pick-me with k-pick"
    picks = [e for e in events(gw)[seen:] if e.startswith("pick ")]
    assert picks and set(picks) == {"pick c-authy model= cx-static"}


def test_an_unknown_auth_id_falls_back_and_fill_first_takes_the_highest_priority(
        gw: Gateway) -> None:
    clear(gw)
    record(gw, "ghost.json", {"type": "c-authx", "api_key": "k-ghost"})
    assert ask(gw, "cx-static") == "cx-static as ghost with k-ghost"
    assert "scheduler.pick named auth 'no-such-auth', which is not a candidate" in \
        gw.log_tail(5000)
    clear(gw)
    record(gw, "fill-1.json", {"type": "c-authx", "api_key": "k-f1"})
    record(gw, "fill-2.json", {"type": "c-authx", "api_key": "k-f2", "priority": 5})
    record(gw, "fill-3.json", {"type": "c-authx", "api_key": "k-f3"})
    for _ in range(6):
        assert ask(gw, "cx-static") == "cx-static as fill-2 with k-f2"


def test_a_scheduler_error_rejects_the_request(gw: Gateway) -> None:
    clear(gw)
    record(gw, "reject.json", {"type": "c-authx", "api_key": "k-reject"})
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(gw, "cx-static")
    assert "the scheduler plugin c-authy rejected choosing a credential of provider " \
        "c-authx: scheduler says no" in str(info.value)


# ---- executor.http_request --------------------------------------------------------------

class _Upstream(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # http.server calls it by this name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization", ""),
                          "body": body.decode()})
        out = b"upstream got " + body
        self.send_response(201)
        self.send_header("X-Upstream", "1")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    with cloud.loopback_server(_Upstream) as base:
        yield base


def test_api_call_goes_through_the_plugin_with_the_records_credential(
        gw: Gateway, upstream: str) -> None:
    clear(gw)
    record(gw, "h1.json", {"type": "c-authx", "api_key": "k-http-secret"})
    call = f"{gw.url}/v0/management/api-call"
    body = {"auth_index": "h1", "method": "post", "url": f"{upstream}/echo?a=1&b=<2>",
            "header": {"X-Test": "1"}, "data": "hello"}
    r = httpx.post(call, json=body, headers=mgmt(gw), timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status_code"] == 201 and out["body"] == "upstream got hello"
    assert out["header"]["X-Upstream"] == ["1"]
    assert "k-http-secret" not in r.text
    assert _Upstream.seen[-1] == {"path": "/echo?a=1&b=%3C2%3E", "body": "hello",
                                  "auth": "Bearer k-http-secret"} or \
        _Upstream.seen[-1] == {"path": "/echo?a=1&b=<2>", "body": "hello",
                               "auth": "Bearer k-http-secret"}
    assert "http c-authx h1 POST" in events(gw)
    r = httpx.post(call, json={**body, "url": f"{upstream}/local"}, headers=mgmt(gw),
                   timeout=30)
    assert r.json() == {"status_code": 200, "header": {"X-Local": ["yes"]},
                        "body": "local answer"}


def test_api_call_refuses_bad_bodies_and_unknown_credentials(gw: Gateway) -> None:
    call = f"{gw.url}/v0/management/api-call"
    ok = {"auth_index": "h1", "method": "GET", "url": "http://127.0.0.1:9/x"}
    assert httpx.post(call, json=ok, timeout=10).status_code == 401
    cases = [(b"[1]", 400, "invalid body"),
             (json.dumps({**ok, "method": ""}).encode(), 400, "missing method"),
             (json.dumps({**ok, "url": ""}).encode(), 400, "missing url"),
             (json.dumps({**ok, "url": "ftp://x/y"}).encode(), 400, "invalid url"),
             (json.dumps({**ok, "header": {"a": 1}}).encode(), 400, "invalid body"),
             (json.dumps({**ok, "auth_index": ""}).encode(), 400, "missing auth_index"),
             (json.dumps({**ok, "auth_index": "nobody"}).encode(), 404, "auth not found")]
    for raw, status, error in cases:
        r = httpx.post(call, content=raw, headers=mgmt(gw), timeout=10)
        assert (r.status_code, r.json()["error"]) == (status, error), raw
