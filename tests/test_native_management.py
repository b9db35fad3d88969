"""CLIProxyAPI's management API for native plugins, and config hot-reload, on a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with two serving processes
(`AOGSTREAM_WORKERS=2`, whatever the machine's default);
the C test plugin (tests/native/test_plugin.c, built by tools/build-native-plugins.sh)
in its plugin folder under `linux/<arch>/`, enabled by `<data dir>/config.yaml`, plus
a second copy that is discovered but not configured; httpx and the official `openai`
client over loopback; the management key the gateway generated in its data directory.

Proven: `/v0/management/...` needs the management key even on loopback (CPA's 401
bodies for a missing and a wrong key; `Authorization: Bearer` and `X-Management-Key`
both accepted) and refuses cross-site requests with the key; the plugin list answers
CPA's fields for a loaded, a discovered-only and a configured-only plugin; invalid IDs
get 400 `invalid_plugin_id`; the routes and the resource a plugin registers are served
by its `management.handle` (routes behind the key, the resource without it, the host's
own routes never taken); GET/PUT/PATCH of a plugin's config write config.yaml and reach
the plugin through `plugin.reconfigure` without a restart, bad bodies get
`invalid_body`/`invalid_config`; disabling drains and calls the plugin's `shutdown()`
and its models leave every listing (on every worker), enabling brings them back;
editing config.yaml by hand reconfigures the plugin in place; a new version file is
loaded and serves before the old one retires, on a config write and by itself when
dropped into the folder; DELETE removes a file and a config
entry with CPA's answer, and 404 `plugin_not_found` for an unknown plugin.

`aogstream plugin run <id> ...` (the real CLI in a subprocess, the same C plugin) parses
the plugin's declared flags by Go's rules, runs `command_line.execute`, prints its
stdout and stderr and exits with its exit code; unknown flags, a missing flag value,
an unknown or disabled plugin are clear errors with exit status 2.

A unit test of the guard's pure `decide` covers the key rules on `/v0/management`
(CPA's error words, no key configured) and resources (no key, cross-site refused).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from conftest import Gateway
from harness import native

MGMT = "/v0/management"
BUILT = native.BUILT
_arch = native.arch


@pytest.fixture(scope="module")
def mgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = ("    c-test:\n"
              "      enabled: true\n"
              "      greeting: a&b<c>\n"
              "    ghost:\n"
              "      enabled: false\n"
              "other-section:\n"
              "  kept: yes please\n")
    native.build()  # the spare copy is read before the gateway starts
    spare = {"spare.so": (BUILT / "c-test.so").read_bytes()}  # discovered, not configured
    with native.native_gateway(tmp_path_factory.mktemp("native-mgmt"), ["c-test"], config,
                               env={"AOGSTREAM_WORKERS": "2"},  # "on every worker" below
                               loose=spare) as gw:
        gw.arch_dir = gw.native_plugins / "linux" / _arch()  # type: ignore[attr-defined]
        yield gw


def key(gw: Gateway) -> str:
    return (gw.workdir / "data" / "management.key").read_text().strip()


def mgmt(gw: Gateway, method: str, path: str, **kw: object) -> httpx.Response:
    headers = {"X-Management-Key": key(gw), **kw.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.request(method, f"{gw.url}{path}", headers=headers, timeout=30,
                         **kw)  # type: ignore[arg-type]


events = native.native_events


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def reconfigured_with(gw: Gateway, text: str) -> bool:
    for e in events(gw):
        if e.startswith("reconfigure "):
            if text in base64.b64decode(e.split(" ", 1)[1]).decode():
                return True
    return False


def model_ids(gw: Gateway) -> set[str]:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    return {m.id for m in client.models.list()}


def chat(gw: Gateway, model: str = "c-echo") -> str:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    out = client.chat.completions.create(model=model,
                                         messages=[{"role": "user", "content": "hi"}])
    return out.choices[0].message.content or ""


def entry(gw: Gateway, pid: str) -> dict:
    r = mgmt(gw, "GET", f"{MGMT}/plugins")
    assert r.status_code == 200, r.text
    return {p["id"]: p for p in r.json()["plugins"]}[pid]


# ---- who may call ------------------------------------------------------------------------

def test_management_api_needs_the_key_even_on_loopback(mgw: Gateway) -> None:
    r = httpx.get(f"{mgw.url}{MGMT}/plugins", timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "missing management key"
    r = httpx.get(f"{mgw.url}{MGMT}/plugins", timeout=10,
                  headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"] == "invalid management key"
    assert key(mgw) not in r.text
    for headers in ({"Authorization": f"Bearer {key(mgw)}"},
                    {"X-Management-Key": key(mgw)}):
        r = httpx.get(f"{mgw.url}{MGMT}/plugins", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-cpa-support-plugin"] == "1"
    # a plugin's own route needs the key as much
    r = httpx.get(f"{mgw.url}{MGMT}/c-test/status", timeout=10)
    assert r.status_code == 401


def test_cross_site_requests_are_refused_even_with_the_key(mgw: Gateway) -> None:
    r = mgmt(mgw, "GET", f"{MGMT}/plugins", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403, r.text
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/enabled", json={"enabled": False},
             headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = httpx.get(f"{mgw.url}/v0/resource/plugins/c-test/page", timeout=10,
                  headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert entry(mgw, "c-test")["enabled"] is True  # the refused PATCH changed nothing


# ---- the plugin list -----------------------------------------------------------------------

def test_plugin_list_answers_cpa_fields_for_each_kind_of_plugin(mgw: Gateway) -> None:
    r = mgmt(mgw, "GET", f"{MGMT}/plugins")
    body = r.json()
    assert body["plugins_enabled"] is True
    by_id = {p["id"]: p for p in body["plugins"]}
    assert list(by_id) == sorted(by_id)
    c = by_id["c-test"]
    assert c["path"] == f"linux/{_arch()}/c-test.so"
    assert (c["configured"], c["registered"], c["enabled"], c["effective_enabled"]) == \
        (True, True, True, True)
    assert c["metadata"]["name"] == "c-test" and c["metadata"]["version"] == "1.0.0"
    assert c["menus"] == [{"path": "/v0/resource/plugins/c-test/page", "menu": "C test",
                           "description": "a page"}]
    assert c["supports_oauth"] is False and c["oauth_provider"] == ""
    spare = by_id["spare"]
    assert (spare["configured"], spare["registered"], spare["effective_enabled"],
            spare["metadata"]) == (False, False, False, None)
    ghost = by_id["ghost"]
    assert (ghost["configured"], ghost["registered"], ghost["path"]) == (True, False, "")
    r = mgmt(mgw, "GET", f"{MGMT}/plugins/-bad/config")
    assert r.status_code == 400 and r.json()["error"] == "invalid_plugin_id"


# ---- routes and resources a plugin registers -----------------------------------------------

def test_plugin_routes_and_resources_are_served_by_the_plugin(mgw: Gateway) -> None:
    r = mgmt(mgw, "GET", f"{MGMT}/c-test/status", params={"x": "1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"plugin": "c-test", "method": "GET",
                        "path": f"{MGMT}/c-test/status", "body": ""}
    assert r.headers["x-c-test"] == "yes"
    r = mgmt(mgw, "POST", f"{MGMT}/c-test/status", content=b"ping")
    assert r.status_code == 201 and r.json()["body"] == "ping"
    # not a route it registered, and not one it may take from the host
    assert mgmt(mgw, "DELETE", f"{MGMT}/c-test/status").status_code == 404
    assert "plugins" in mgmt(mgw, "GET", f"{MGMT}/plugins").json()
    # the resource: a page, no key needed (as in CPA)
    r = httpx.get(f"{mgw.url}/v0/resource/plugins/c-test/page", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "c-test page" in r.text
    assert httpx.get(f"{mgw.url}/v0/resource/plugins/c-test/nope",
                     timeout=10).status_code == 404


# ---- config ------------------------------------------------------------------------------------

def test_config_get_put_patch_reconfigure_the_plugin_in_place(mgw: Gateway) -> None:
    pid_before = mgw.proc.pid if mgw.proc else 0
    r = mgmt(mgw, "GET", f"{MGMT}/plugins/c-test/config")
    assert r.json() == {"enabled": True, "greeting": "a&b<c>"}
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/config",
             json={"greeting": "patched", "limit": 3})
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert reconfigured_with(mgw, "greeting: patched")  # applied before the answer
    assert mgmt(mgw, "GET", f"{MGMT}/plugins/c-test/config").json() == \
        {"enabled": True, "greeting": "patched", "limit": 3}
    doc = yaml.safe_load((mgw.workdir / "data" / "config.yaml").read_text())
    assert doc["plugins"]["configs"]["c-test"]["limit"] == 3
    assert doc["other-section"] == {"kept": "yes please"}  # the rest of the file kept
    r = mgmt(mgw, "PUT", f"{MGMT}/plugins/c-test/config",
             json={"enabled": True, "ratio": 2.5, "limit": 4})
    assert r.status_code == 200
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/config", json={"limit": None})
    assert mgmt(mgw, "GET", f"{MGMT}/plugins/c-test/config").json() == \
        {"enabled": True, "ratio": 2.5}
    assert reconfigured_with(mgw, "ratio: 2.5")
    assert chat(mgw) == "hello from C"  # still serving, same process
    assert mgw.proc is not None and mgw.proc.pid == pid_before and mgw.proc.poll() is None
    for body, code in ((b"[1]", "invalid_body"), (b"not json", "invalid_body"),
                       (b'{"enabled": "yes"}', "invalid_config"),
                       (b'{"priority": "high"}', "invalid_config")):
        r = mgmt(mgw, "PUT", f"{MGMT}/plugins/c-test/config", content=body)
        assert r.status_code == 400 and r.json()["error"] == code, body
    assert mgmt(mgw, "GET", f"{MGMT}/plugins/nobody/config").status_code == 404
    assert mgmt(mgw, "GET", f"{MGMT}/plugins/spare/config").json() == {}


def test_editing_config_yaml_reconfigures_the_plugin_without_restart(mgw: Gateway) -> None:
    path = mgw.workdir / "data" / "config.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["plugins"]["configs"]["c-test"]["greeting"] = "edited by hand"
    path.write_text(yaml.safe_dump(doc))
    wait_for(lambda: reconfigured_with(mgw, "greeting: edited by hand"))
    assert mgmt(mgw, "GET", f"{MGMT}/plugins/c-test/config").json()["greeting"] == \
        "edited by hand"
    assert chat(mgw) == "hello from C"


def test_disabling_drains_and_shuts_down_and_enabling_loads_again(mgw: Gateway) -> None:
    shutdowns = events(mgw).count("shutdown")
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/enabled", json={"enabled": False})
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert events(mgw).count("shutdown") > shutdowns  # the primary's, before the answer
    assert not {"c-echo", "c-async"} & model_ids(mgw)  # on whichever worker answers
    with pytest.raises(openai.APIStatusError):
        chat(mgw)
    c = entry(mgw, "c-test")
    assert (c["enabled"], c["registered"], c["effective_enabled"]) == (False, False, False)
    assert httpx.get(f"{mgw.url}/v0/resource/plugins/c-test/page",
                     timeout=10).status_code == 404
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/enabled", json={})
    assert r.status_code == 400 and r.json()["error"] == "invalid_body"
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/enabled", json={"enabled": True})
    assert r.status_code == 200
    assert {"c-echo", "c-async"} <= model_ids(mgw)
    assert chat(mgw) == "hello from C"
    assert entry(mgw, "c-test")["effective_enabled"] is True


def test_a_new_version_file_serves_before_the_old_one_retires(mgw: Gateway) -> None:
    arch_dir: Path = mgw.arch_dir  # type: ignore[attr-defined]
    shutil.copy(BUILT / "c-test.so", arch_dir / "c-test-v2.0.0.so")
    registers = sum(e.startswith("register ") for e in events(mgw))
    r = mgmt(mgw, "PATCH", f"{MGMT}/plugins/c-test/config", json={"touch": 1})
    assert r.status_code == 200
    assert sum(e.startswith("register ") for e in events(mgw)) > registers
    assert entry(mgw, "c-test")["path"] == f"linux/{_arch()}/c-test-v2.0.0.so"
    assert chat(mgw) == "hello from C"
    assert {"c-echo", "c-async"} <= model_ids(mgw)
    # a newer file dropped in is picked up by itself, no config edit needed
    shutdowns = events(mgw).count("shutdown")
    shutil.copy(BUILT / "c-test.so", arch_dir / "c-test-v3.0.0.so")
    wait_for(lambda: entry(mgw, "c-test")["path"] == f"linux/{_arch()}/c-test-v3.0.0.so")
    wait_for(lambda: events(mgw).count("shutdown") > shutdowns)  # the v2 library retired
    assert chat(mgw) == "hello from C"


# ---- delete ----------------------------------------------------------------------------------

def test_delete_removes_the_file_and_the_config_entry(mgw: Gateway) -> None:
    spare = mgw.arch_dir.parent.parent / "spare.so"  # type: ignore[attr-defined]
    r = mgmt(mgw, "DELETE", f"{MGMT}/plugins/spare")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "deleted", "id": "spare", "path": "spare.so",
                        "file_deleted": True, "configured_removed": False,
                        "restart_required": False}
    assert not spare.exists()
    r = mgmt(mgw, "DELETE", f"{MGMT}/plugins/ghost")
    assert r.status_code == 200
    assert (r.json()["file_deleted"], r.json()["configured_removed"]) == (False, True)
    doc = yaml.safe_load((mgw.workdir / "data" / "config.yaml").read_text())
    assert "ghost" not in doc["plugins"]["configs"]
    ids = {p["id"] for p in mgmt(mgw, "GET", f"{MGMT}/plugins").json()["plugins"]}
    assert "spare" not in ids and "ghost" not in ids and "c-test" in ids
    r = mgmt(mgw, "DELETE", f"{MGMT}/plugins/ghost")
    assert r.status_code == 404 and r.json()["error"] == "plugin_not_found"
    assert chat(mgw) == "hello from C"


# ---- the command line ------------------------------------------------------------------------

def _run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AOGSTREAM_", "AOG_"))}
    env["AOG_DATA_DIR"] = str(data)
    return subprocess.run([sys.executable, "-m", "aogstream", "plugin", "run",
                           *args], cwd=data, env=env, capture_output=True, text=True,
                          timeout=60)


def test_plugin_run_dispatches_the_plugins_command_line(tmp_path: Path) -> None:
    native.build()
    data = tmp_path / "data"
    (data / "plugins").mkdir(parents=True)
    shutil.copy(BUILT / "c-test.so", data / "plugins" / "c-test.so")
    (data / "config.yaml").write_text(
        "plugins:\n  enabled: true\n  configs:\n    c-test:\n      enabled: true\n")
    out = _run_cli(data, "c-test", "-greet", "bob", "--loud", "a", "b")
    assert (out.returncode, out.stdout) == (0, 'HELLO BOB\nARGS ["A","B"]\n'), out.stderr
    assert "c-test ran" in out.stderr  # the plugin's Stderr
    out = _run_cli(data, "c-test", "-greet=ann", "--", "-x", "fail")
    assert out.returncode == 3  # the plugin's ExitCode
    assert out.stdout == 'hello ann\nargs ["-x","fail"]\n'
    out = _run_cli(data, "c-test", "-nope")
    assert out.returncode == 2 and "flag provided but not defined: -nope" in out.stderr
    assert "-greet, -loud" in out.stderr
    out = _run_cli(data, "c-test", "-greet")
    assert out.returncode == 2 and "flag needs an argument: -greet" in out.stderr
    out = _run_cli(data, "nobody")
    assert out.returncode == 2 and "no native plugin 'nobody'" in out.stderr
    (data / "config.yaml").write_text("plugins:\n  enabled: true\n")
    out = _run_cli(data, "c-test")
    assert out.returncode == 2 and "plugins.configs.c-test.enabled" in out.stderr


# ---- the guard's decision (unit: the pure policy function) ------------------------------------

def test_guard_requires_the_key_on_cpa_management_routes_even_on_loopback() -> None:
    from aogstream.http.guard import Policy, Request, decide

    loopback = Policy(management_key="k", require_management_key=False)
    path = "/v0/management/plugins"
    assert decide(loopback, Request(path, host="127.0.0.1:1")).cpa_error == \
        "missing management key"
    wrong = decide(loopback, Request(path, host="127.0.0.1:1", credentials=("x",)))
    assert (wrong.status, wrong.cpa_error) == (401, "invalid management key")
    assert decide(loopback, Request(path, host="127.0.0.1:1", credentials=("k",))).allowed
    no_key = decide(Policy(), Request(path, host="127.0.0.1:1", credentials=("k",)))
    assert (no_key.status, no_key.cpa_error) == (403, "remote management key not set")
    # AOG's own management routes keep their loopback rule
    assert decide(loopback, Request("/aog/v0.2/plugin/list", host="127.0.0.1:1")).allowed
    # resources: no key, as in CPA; cross-site still refused
    page = "/v0/resource/plugins/c-test/page"
    strict = Policy(management_key="k", require_management_key=True)
    assert decide(strict, Request(page, host="127.0.0.1:1")).allowed
    assert decide(strict, Request(page, host="127.0.0.1:1", fetch_site="cross-site")
                  ).status == 403
    assert decide(strict, Request("/v0/resource/plugins/x/../../v0/management/plugins",
                                  host="127.0.0.1:1")).status == 401
