"""The management API against real gateways, real plugin processes and a real SQLite
file: services, service providers, models (with the real embed engine), plugins, and
export/import. Each route is driven over HTTP exactly as AOG's clients call it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PLUGIN_DIR, SHIPPED_PLUGIN_DIR, Gateway, require_engines

API = "/aog/v0.2"
ECHO = PLUGIN_DIR / "echo-plugin"
E5 = "multilingual-e5-small"
ENPT = "multilingual-e5-small-enpt"
EMBED_PROVIDER = "local_embed-plugin_embed"
PULL_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


# ---- helpers -----------------------------------------------------------------------------


def call(gw: Gateway, method: str, path: str, *, params: dict[str, Any] | None = None,
         body: Any = None, timeout: float | httpx.Timeout = 30.0) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{API}{path}", params=params, json=body,
                         timeout=timeout)


def ok(r: httpx.Response, code: int) -> Any:
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert body["business_code"] == code, body
    return body.get("data")


def bare(r: httpx.Response) -> Any:
    """A 200 answer that is the document itself, not AOG's envelope."""
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert "business_code" not in body, body
    return body


def refused(r: httpx.Response, status: int, code: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["business_code"] == code, body
    for w in words:
        assert w in body["message"], (w, body["message"])
    return body["message"]


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(0.1)


def plugin_named(gw: Gateway, name: str) -> dict[str, Any] | None:
    items = ok(call(gw, "GET", "/plugin/list"), 100000)
    return next((p for p in items if p["name"] == name), None)


def copy_echo(dest_parent: Path, name: str) -> Path:
    """The echo test plugin under another name (folder and provider.name)."""
    dest = dest_parent / name
    shutil.copytree(ECHO, dest, ignore=shutil.ignore_patterns("__pycache__"))
    text = (dest / "plugin.yaml").read_text()
    (dest / "plugin.yaml").write_text(text.replace("name: echo-plugin", f"name: {name}", 1))
    return dest


KEYCHECK_PY = '''
import json
from aogstream.sdk import PluginError, RemotePluginProvider, serve
from aogstream.sdk.provider import parse_auth_info


class KeyCheck(RemotePluginProvider):
    creds = {}

    async def set_auth(self, auth_type, credentials):
        self.creds = dict(credentials)

    async def validate_auth(self):
        if self.creds.get("api_key") != "good-key":
            raise PluginError(14, "the cloud says: invalid api_key")

    async def invoke_service(self, service_name, auth_info, request):
        ok = parse_auth_info(auth_info).get("api_key") == "good-key"
        return json.dumps({"served_by": "keycheck", "key_ok": ok}).encode()


if __name__ == "__main__":
    serve(KeyCheck())
'''

KEYCHECK_YAML = '''version: "1.0"
provider: {name: NAME, display_name: Key check, version: 0.1.0, type: remote}
services:
  - service_name: chat
    task_type: text-generation
    protocol: HTTP
    expose_protocol: HTTP
    config_ref: aog:chat
    auth_type: apikey
    default_model: kc-model
    support_models: [kc-model]
platforms:
  linux_amd64: {executable: bin/run}
  linux_arm64: {executable: bin/run}
  darwin_amd64: {executable: bin/run}
  darwin_arm64: {executable: bin/run}
'''


def keycheck_plugin(parent: Path, name: str) -> Path:
    """A tiny remote plugin whose ValidateAuth accepts only api_key "good-key"."""
    d = parent / name
    (d / "bin").mkdir(parents=True)
    (d / "plugin.py").write_text(KEYCHECK_PY)
    (d / "plugin.yaml").write_text(KEYCHECK_YAML.replace("NAME", name))
    shutil.copy2(ECHO / "bin" / "echo-plugin", d / "bin" / "run")
    return d


def pull_stream(gw: Gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("POST", f"{gw.url}{API}/model/stream", json=body,
                      timeout=PULL_TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def model_rows(gw: Gateway, **params: str) -> list[dict[str, Any]]:
    return ok(call(gw, "GET", "/model", params=params), 30000)


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(gateway_factory: Any) -> Gateway:
    """An echo-plugin gateway shared by the fast tests of this module."""
    return gateway_factory("mgmt")


@pytest.fixture(scope="module")
def embed_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """A gateway with only the real embed-plugin. Its engine and default model are the
    ones `make test` installed (linked, not copied); pulled models land in a private
    engine folder, so pulls and deletes never touch the shared cache."""
    real = require_engines(["embed-plugin"]) / "embed-plugin"
    root = tmp_path_factory.mktemp("embed-mgmt")
    data = root / "engines" / "embed-plugin"
    (data / "models").mkdir(parents=True)
    (data / "engine").symlink_to(real / "engine", target_is_directory=True)
    (data / "models" / E5).symlink_to(real / "models" / E5, target_is_directory=True)
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "embed-plugin").symlink_to(SHIPPED_PLUGIN_DIR / "embed-plugin",
                                          target_is_directory=True)
    gw = Gateway(root / "gw", {"AOGSTREAM_ENGINE_DIR": str(root / "engines")},
                 plugin_dir=plugins).start()
    try:
        gw.wait_plugin_running(name="embed-plugin", timeout=60)
        yield gw, data / "models"
    finally:
        gw.stop()


# ---- services ----------------------------------------------------------------------------


def test_fields_come_from_the_query_string_or_a_json_body(gw):
    by_query = ok(call(gw, "GET", "/service", params={"service_name": "chat"}), 10000)
    by_body = ok(call(gw, "GET", "/service", body={"service_name": "chat"}), 10000)
    assert [s["service_name"] for s in by_query] == ["chat"]
    assert by_query == by_body
    assert set(by_query[0]) >= {"service_name", "hybrid_policy", "status", "avatar",
                                "created_at", "updated_at"}
    everything = ok(call(gw, "GET", "/service"), 10000)
    assert {"chat", "embed", "text-to-image", "echo-ws"} <= {s["service_name"]
                                                              for s in everything}
    rows = ok(call(gw, "GET", "/service_provider",
                   params={"provider_name": "local_echo-plugin_chat"}), 20000)
    assert [p["provider_name"] for p in rows] == ["local_echo-plugin_chat"]
    assert rows[0]["flavor"] == "echo-plugin" and rows[0]["scope"] == "plugin"
    page = ok(call(gw, "GET", "/model/support", params={"page_size": "1", "page": "2"}),
              30000)
    assert page["page"] == 2 and page["page_size"] == 1 and len(page["data"]) <= 1


def test_errors_name_what_is_wrong_and_what_exists(gw):
    refused(call(gw, "GET", "/service", params={"service_name": "nope"}), 404, 10011,
            "'nope'", "chat")
    refused(call(gw, "PUT", "/service", body={"service_name": "chat",
                                              "hybrid_policy": "sometimes"}),
            400, 10016, "sometimes", "always_remote")
    refused(call(gw, "PUT", "/service", body={"hybrid_policy": "default"}), 400, 10001,
            "service_name")
    refused(call(gw, "PUT", "/service_provider", body={"provider_name": "ghost"}),
            404, 20002, "'ghost'", "local_echo-plugin_chat")
    refused(call(gw, "DELETE", "/model", body={"provider_name": "local_echo-plugin_chat",
                                               "model_name": "ghost-model"}),
            404, 30003, "ghost-model")
    refused(call(gw, "GET", "/plugin/info", params={"name": "ghost"}), 404, 100001,
            "'ghost'", "echo-plugin")
    refused(call(gw, "POST", "/model/stream/cancel", body={"model_name": "ghost"}),
            404, 30003, "ghost")
    refused(call(gw, "GET", "/model/support", params={"page": "two"}), 400, 30001, "page")
    r = httpx.request("PUT", f"{gw.url}{API}/service", content=b"{not json",
                      timeout=10)
    refused(r, 400, 10001, "JSON")
    refused(call(gw, "POST", "/service", body={}), 405, 40005, "GET", "PUT")


def test_local_install_on_a_plugin_without_model_management(gw):
    data = ok(call(gw, "POST", "/service/install", body={"service_name": "generate"}), 10000)
    assert data["service"]["status"] == 1
    assert [p["provider_name"] for p in data["providers"]] == ["local_echo-plugin_generate"]
    svc = ok(call(gw, "GET", "/service", params={"service_name": "generate"}), 10000)
    assert svc[0]["status"] == 1
    # a service no local plugin serves: says so, and who could
    refused(call(gw, "POST", "/service/install", body={"service_name": "text-to-image"}),
            404, 10011, "text-to-image", "local")
    refused(call(gw, "POST", "/service/install", body={"service_name": "warp-drive"}),
            404, 10011, "warp-drive")


def test_policy_status_and_credentials_survive_a_restart(gateway_factory):
    gw = gateway_factory("mgmt-restart")
    ok(call(gw, "PUT", "/service", body={"service_name": "chat",
                                         "hybrid_policy": "always_remote"}), 10000)
    ok(call(gw, "POST", "/service/install", body={"service_name": "chat"}), 10000)
    ok(call(gw, "POST", "/service_provider", body={
        "service_name": "chat", "service_source": "remote", "api_flavor": "openai",
        "provider_name": "remote_openai_chat", "auth_type": "apikey",
        "auth_key": '{"api_key": "sk-restart-secret"}', "models": ["gpt-4o-mini"],
        "url": "https://api.openai.com/v1/chat/completions"}), 20000)
    gw.stop()
    db = sqlite3.connect(gw.workdir / "data" / "aogstream.db")
    try:  # the real file holds the credentials (and only the store ever reads them)
        (key,) = db.execute("SELECT auth_key FROM aog_service_provider WHERE "
                            "provider_name='remote_openai_chat'").fetchone()
    finally:
        db.close()
    assert json.loads(key) == {"api_key": "sk-restart-secret"}
    gw.start()
    svc = ok(call(gw, "GET", "/service", params={"service_name": "chat"}), 10000)[0]
    assert (svc["hybrid_policy"], svc["status"]) == ("always_remote", 1)
    prov = ok(call(gw, "GET", "/service_provider/detail",
                   params={"provider_name": "remote_openai_chat"}), 20000)[0]
    assert prov["has_auth_key"] is True and "auth_key" not in prov
    assert [m["model_name"] for m in prov["model_rows"]] == ["gpt-4o-mini"]


# ---- service providers ---------------------------------------------------------------------


def test_provider_crud_keeps_credentials_write_only(gw):
    secret = "sk-write-only-4242"
    new = {"service_name": "chat", "service_source": "remote", "api_flavor": "openai",
           "provider_name": "remote_crud_chat", "desc": "first", "auth_type": "apikey",
           "auth_key": json.dumps({"api_key": secret}), "models": ["m-1", "m-2"],
           "url": "https://example.invalid/v1/chat", "properties": {"max_input_tokens": 10}}
    created = ok(call(gw, "POST", "/service_provider", body=new), 20000)
    assert created["has_auth_key"] is True and "auth_key" not in created
    refused(call(gw, "POST", "/service_provider", body=new), 409, 10009, "remote_crud_chat")
    for path, params in (("/service_provider", {}),
                         ("/service_provider", {"provider_name": "remote_crud_chat"}),
                         ("/service_provider/detail", {"provider_name": "remote_crud_chat"})):
        r = call(gw, "GET", path, params=params)
        assert secret not in r.text and '"auth_key"' not in r.text
    rows = model_rows(gw, provider_name="remote_crud_chat")
    assert {(m["model_name"], m["status"]) for m in rows} == {("m-1", "downloaded"),
                                                              ("m-2", "downloaded")}
    # an update without auth_key (or with an empty one) keeps the stored key
    upd = ok(call(gw, "PUT", "/service_provider", body={"provider_name": "remote_crud_chat",
                                                        "desc": "second", "auth_key": "",
                                                        "models": ["m-1"]}), 20000)
    assert upd["desc"] == "second" and upd["has_auth_key"] is True
    assert json.loads(upd["properties"]) == {"max_input_tokens": 10}
    assert [m["model_name"] for m in model_rows(gw, provider_name="remote_crud_chat")] == ["m-1"]
    # bad fields are named
    refused(call(gw, "POST", "/service_provider", body={**new, "provider_name": "x1",
                                                        "api_flavor": ""}),
            400, 20001, "api_flavor")
    refused(call(gw, "POST", "/service_provider", body={**new, "provider_name": "x2",
                                                        "auth_key": ""}), 400, 20006, "auth_key")
    refused(call(gw, "POST", "/service_provider", body={**new, "provider_name": "x3",
                                                        "url": "ftp://nope"}), 400, 20007, "url")
    refused(call(gw, "POST", "/service_provider", body={**new, "provider_name": "x4",
                                                        "auth_key": "{broken"}),
            400, 20001, "auth_key")
    refused(call(gw, "POST", "/service_provider", body={**new, "provider_name": "x5",
                                                        "service_name": "teleport"}),
            400, 10015, "teleport")
    refused(call(gw, "DELETE", "/service_provider",
                 body={"provider_name": "local_echo-plugin_chat"}), 400, 20008, "echo-plugin")
    refused(call(gw, "PUT", "/service_provider", body={"provider_name": "local_echo-plugin_chat",
                                                       "service_name": "embed"}),
            400, 20001, "service_name", "manifest")
    # delete: the provider and its model rows go
    ok(call(gw, "DELETE", "/service_provider", params={"provider_name": "remote_crud_chat"}),
       20000)
    assert ok(call(gw, "GET", "/service_provider",
                   params={"provider_name": "remote_crud_chat"}), 20000) == []
    refused(call(gw, "GET", "/service_provider/detail",
                 params={"provider_name": "remote_crud_chat"}), 404, 20002)
    assert model_rows(gw, provider_name="remote_crud_chat") == []


def test_remote_install_checks_credentials_live(gw, tmp_path):
    src = keycheck_plugin(tmp_path, "keycheck-plugin")
    info = ok(call(gw, "POST", "/plugin/install", body={"path": str(src)}, timeout=60), 100000)
    assert info["state"] == "running" and info["type"] == "remote"
    provider = "remote_keycheck-plugin_chat"
    install = {"service_name": "chat", "service_source": "remote", "provider_name": provider}
    refused(call(gw, "POST", "/service/install", body=install), 400, 20006, provider)
    ok(call(gw, "PUT", "/service_provider",
            body={"provider_name": provider, "auth_key": '{"api_key": "bad-key"}'}), 20000)
    refused(call(gw, "POST", "/service/install", body=install), 401, 100102, provider,
            "invalid api_key")
    # credentials in the install request itself are stored, then checked
    data = ok(call(gw, "POST", "/service/install",
                   body={**install, "auth_key": {"api_key": "good-key"}}), 10000)
    assert data["service"]["status"] == 1
    assert data["providers"][0]["provider_name"] == provider
    refused(call(gw, "POST", "/service/install",
                 body={**install, "provider_name": "remote_nobody_chat"}),
            404, 10011, "remote_nobody_chat", provider)
    ok(call(gw, "DELETE", "/plugin/delete", body={"name": "keycheck-plugin"}), 100000)


# ---- export / import -----------------------------------------------------------------------


def test_export_then_import_into_a_fresh_gateway(gateway_factory):
    src, dst = gateway_factory("mgmt-export"), gateway_factory("mgmt-import")
    secret = "sk-export-never-9000"
    ok(call(src, "PUT", "/service", body={"service_name": "chat",
                                          "hybrid_policy": "always_remote"}), 10000)
    ok(call(src, "PUT", "/service", body={"service_name": "embed",
                                          "hybrid_policy": "always_local"}), 10000)
    ok(call(src, "POST", "/service_provider", body={
        "service_name": "chat", "service_source": "remote", "api_flavor": "deepseek",
        "provider_name": "remote_deepseek_chat", "desc": "cloud chat", "auth_type": "apikey",
        "auth_key": json.dumps({"api_key": secret}), "models": ["deepseek-chat"],
        "url": "https://api.deepseek.com/chat/completions"}), 20000)
    r = call(src, "POST", "/service/export", body={})
    doc = bare(r)  # the .aog document itself, as AOG answers it (no envelope)
    assert secret not in r.text and "auth_key" not in r.text
    assert doc["version"]
    assert doc["services"]["chat"] == {"hybrid_policy": "always_remote", "service_providers": {
        "local": "local_echo-plugin_chat", "remote": "remote_deepseek_chat"}}
    entry = doc["service_providers"]["remote_deepseek_chat"]
    assert entry == {"service_name": "chat", "service_source": "remote", "desc": "cloud chat",
                     "api_flavor": "deepseek", "method": "POST",
                     "url": "https://api.deepseek.com/chat/completions",
                     "auth_type": "apikey", "models": ["deepseek-chat"]}
    only_chat = bare(call(src, "POST", "/service/export", params={"service_name": "chat"}))
    assert list(only_chat["services"]) == ["chat"]

    result = ok(call(dst, "POST", "/service/import", body=doc), 10000)
    assert "remote_deepseek_chat" in result["created"]
    policies = {s["service_name"]: s["hybrid_policy"]
                for s in ok(call(dst, "GET", "/service"), 10000)}
    assert policies["chat"] == "always_remote" and policies["embed"] == "always_local"
    prov = ok(call(dst, "GET", "/service_provider",
                   params={"provider_name": "remote_deepseek_chat"}), 20000)[0]
    assert prov["has_auth_key"] is False  # keys never travel
    assert (prov["url"], prov["models"]) == ("https://api.deepseek.com/chat/completions",
                                             ["deepseek-chat"])
    again = bare(call(dst, "POST", "/service/export", body={}))
    assert again["services"] == doc["services"]
    assert again["service_providers"] == doc["service_providers"]
    # a document that makes no sense is refused whole
    bad = {"version": doc["version"], "services": {"chat": {"hybrid_policy": "sideways"}}}
    refused(call(dst, "POST", "/service/import", body=bad), 400, 10016, "sideways")


# ---- plugins -------------------------------------------------------------------------------


def test_plugin_list_keeps_its_fields_and_has_aogs(gw):
    p = plugin_named(gw, "echo-plugin")
    assert p is not None
    assert {"name", "state", "pid", "restarts", "last_error"} <= set(p)
    assert p["provider_name"] == "Echo test plugin"
    assert p["services"] == ["chat", "generate", "embed", "rerank", "echo-ws"]
    assert (p["status"], p["version"], p["enabled"]) == (1, "1.0", True)
    assert p["description"]
    info = ok(call(gw, "GET", "/plugin/info", params={"name": "echo-plugin"}), 100000)
    assert info["manifest"]["provider"]["name"] == "echo-plugin"
    assert "local_echo-plugin_chat" in info["providers"]


def test_install_plugins_from_a_folder_and_an_archive(gw, tmp_path):
    installed = gw.workdir / "data" / "plugins"
    folder = copy_echo(tmp_path, "echo2-plugin")
    p = ok(call(gw, "POST", "/plugin/install", body={"path": str(folder)}, timeout=60), 100000)
    assert (p["name"], p["state"], p["enabled"]) == ("echo2-plugin", "running", True)
    assert (installed / "echo2-plugin" / "plugin.yaml").is_file()
    assert "local_echo2-plugin_chat" in ok(
        call(gw, "GET", "/plugin/info", params={"name": "echo2-plugin"}), 100000)["providers"]
    refused(call(gw, "POST", "/plugin/install", body={"path": str(folder)}), 409, 100004,
            "echo2-plugin")

    archive = tmp_path / "echo3.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(copy_echo(tmp_path / "src", "echo3-plugin"), arcname="echo3-plugin")
    p = ok(call(gw, "POST", "/plugin/install", params={"path": str(archive)}, timeout=60),
           100000)
    assert (p["name"], p["state"]) == ("echo3-plugin", "running")

    # stop / load
    first_pid = p["pid"]
    stopped = ok(call(gw, "POST", "/plugin/stop", body={"name": "echo3-plugin"}), 100000)
    assert (stopped["state"], stopped["status"]) == ("stopped", 2)
    loaded = ok(call(gw, "POST", "/plugin/load", body={"name": "echo3-plugin"}, timeout=60),
                100000)
    assert loaded["state"] == "running" and loaded["pid"] != first_pid

    # delete: process, provider rows and (installed here) folder go
    gone = ok(call(gw, "DELETE", "/plugin/delete", body={"name": "echo3-plugin"}), 100000)
    assert gone["removed_dir"]
    assert not (installed / "echo3-plugin").exists()
    assert plugin_named(gw, "echo3-plugin") is None
    assert ok(call(gw, "GET", "/service_provider", params={"api_flavor": "echo3-plugin"}),
              20000) == []
    assert plugin_named(gw, "echo2-plugin")["state"] == "running"
    ok(call(gw, "DELETE", "/plugin/delete", body={"name": "echo2-plugin"}), 100000)


def _no_manifest(tmp: Path) -> Path:
    d = copy_echo(tmp, "nomani-plugin")
    (d / "plugin.yaml").unlink()
    return d


def _broken_yaml(tmp: Path) -> Path:
    d = copy_echo(tmp, "broken-plugin")
    (d / "plugin.yaml").write_text("version: '1.0'\nprovider: [unclosed\n")
    return d


def _missing_exe(tmp: Path) -> Path:
    d = copy_echo(tmp, "noexe-plugin")
    (d / "bin" / "echo-plugin").unlink()
    return d


def _unsafe_name(tmp: Path) -> Path:
    d = copy_echo(tmp, "sneaky-plugin")
    text = (d / "plugin.yaml").read_text().replace("name: sneaky-plugin", "name: ../sneaky", 1)
    (d / "plugin.yaml").write_text(text)
    return d


def _escaping_archive(tmp: Path) -> Path:
    d = copy_echo(tmp, "tar-plugin")
    archive = tmp / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(d, arcname="tar-plugin")
        tf.add(d / "plugin.yaml", arcname="tar-plugin/../../escaped.yaml")
    return archive


@pytest.mark.parametrize(("make", "words"), [
    (_no_manifest, ["plugin.yaml"]),
    (_broken_yaml, ["plugin.yaml", "YAML"]),
    (_missing_exe, ["bin/echo-plugin", "missing"]),
    (_unsafe_name, ["provider.name", "../sneaky"]),
    (_escaping_archive, ["evil.tar.gz", "../../escaped.yaml", "outside"]),
], ids=["no-manifest", "broken-yaml", "missing-executable", "unsafe-name", "archive-escape"])
def test_bad_plugin_folders_are_refused(gw, tmp_path, make, words):
    installed = gw.workdir / "data" / "plugins"
    before = sorted(p.name for p in installed.iterdir()) if installed.exists() else []
    target = make(tmp_path)
    refused(call(gw, "POST", "/plugin/install", body={"path": str(target)}), 400, 100004,
            *words)
    assert sorted(p.name for p in installed.iterdir()) == before  # nothing left behind
    assert not (tmp_path.parent / "escaped.yaml").exists()
    assert not (installed.parent / "escaped.yaml").exists()


def test_load_a_folder_dropped_into_the_data_dir(gw, tmp_path):
    installed = gw.workdir / "data" / "plugins"
    installed.mkdir(parents=True, exist_ok=True)
    copy_echo(installed, "echo4-plugin")
    listed = plugin_named(gw, "echo4-plugin")
    assert listed is not None and (listed["status"], listed["state"]) == (3, "unloaded")
    p = ok(call(gw, "POST", "/plugin/load", body={"name": "echo4-plugin"}, timeout=60), 100000)
    assert p["state"] == "running"
    refused(call(gw, "POST", "/plugin/load", body={"name": "../etc"}), 400, 100004, "../etc")
    refused(call(gw, "POST", "/plugin/load", body={"name": "nowhere-plugin"}), 404, 100001,
            "nowhere-plugin", "echo-plugin")
    ok(call(gw, "DELETE", "/plugin/delete", body={"name": "echo4-plugin"}), 100000)
    assert not (installed / "echo4-plugin").exists()


def test_disable_survives_a_restart_and_enable_brings_it_back(gateway_factory, tmp_path):
    gw = gateway_factory("mgmt-disable")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.service_url("chat"), json=chat, timeout=10).status_code == 200
    ok(call(gw, "POST", "/plugin/install",
            body={"path": str(copy_echo(tmp_path, "echo5-plugin"))}, timeout=60), 100000)
    ok(call(gw, "POST", "/plugin/disable", body={"name": "echo5-plugin"}), 100000)
    off = ok(call(gw, "POST", "/plugin/disable", body={"name": "echo-plugin"}), 100000)
    assert (off["state"], off["enabled"]) == ("stopped", False)
    r = httpx.post(gw.service_url("chat"), json=chat, timeout=10)
    assert r.status_code == 404, r.text  # no route left: not "plugin not running"
    assert "chat" in r.json()["message"]

    gw.stop()
    gw.start()
    for name in ("echo-plugin", "echo5-plugin"):  # the installed one came back, still off
        p = plugin_named(gw, name)
        assert p is not None and (p["state"], p["enabled"]) == ("stopped", False), p
    assert httpx.post(gw.service_url("chat"), json=chat, timeout=10).status_code == 404

    on = ok(call(gw, "POST", "/plugin/enable", body={"name": "echo-plugin"}, timeout=60),
            100000)
    assert (on["state"], on["enabled"]) == ("running", True)
    r = httpx.post(gw.service_url("chat"), json=chat, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-aogstream-plugin"] == "echo-plugin"


# ---- models with the real embed engine -----------------------------------------------------


def test_downloaded_models_are_listed_with_their_sizes(embed_gw):
    gw, _ = embed_gw
    rows = wait_for("the default model in GET /model",
                    lambda: model_rows(gw, provider_name=EMBED_PROVIDER, model_name=E5))
    assert rows[0]["status"] == "downloaded" and rows[0]["size"] > 10_000_000
    assert rows[0]["is_default"] is True and rows[0]["service_name"] == "embed"
    rec = ok(call(gw, "GET", "/model/recommend"), 30000)
    assert [(m["name"], m["status"]) for m in rec["embed"]] == [(E5, "downloaded")]
    page1 = ok(call(gw, "GET", "/model/support",
                    params={"service_name": "embed", "page_size": 1}), 30000)
    assert (page1["total"], page1["total_page"], len(page1["data"])) == (2, 2, 1)
    page2 = ok(call(gw, "GET", "/model/support",
                    body={"service_name": "embed", "page_size": 1, "page": 2}), 30000)
    assert {page1["data"][0]["name"], page2["data"][0]["name"]} == {E5, ENPT}
    found = ok(call(gw, "GET", "/model/support", params={"search_name": "ENPT"}), 30000)
    # embed-plugin offers its models to both of its services, embed and rerank
    assert [(m["name"], m["service_name"]) for m in found["data"]] == \
        [(ENPT, "embed"), (ENPT, "rerank")]


def test_install_with_a_model_name_pulls_it_and_delete_removes_it(embed_gw):
    gw, models = embed_gw
    data = ok(call(gw, "POST", "/service/install",
                   body={"service_name": "embed", "model_name": ENPT}, timeout=PULL_TIMEOUT),
              10000)
    assert data["service"]["status"] == 1
    assert data["providers"][0]["pulled"] == ENPT
    row = model_rows(gw, provider_name=EMBED_PROVIDER, model_name=ENPT)[0]
    assert row["status"] == "downloaded" and row["size"] > 10_000_000
    assert (models / ENPT / "model.json").is_file()
    ok(call(gw, "DELETE", "/model", body={"provider_name": EMBED_PROVIDER,
                                          "model_name": ENPT}), 30000)
    assert model_rows(gw, provider_name=EMBED_PROVIDER, model_name=ENPT) == []
    assert not (models / ENPT).exists()
    assert model_rows(gw, model_name=E5)[0]["is_default"] is True


def test_stream_pull_reports_progress_then_success(embed_gw):
    gw, models = embed_gw
    events = pull_stream(gw, {"provider_name": EMBED_PROVIDER, "model_name": ENPT,
                              "service_name": "embed", "service_source": "local"})
    assert events[-1] == {"status": "success"}, events[-5:]
    progress = [e for e in events[:-1] if e.get("total")]
    assert progress and progress[-1]["completed"] == progress[-1]["total"] > 0
    assert all(e["status"] not in ("error", "canceled") for e in events)
    row = model_rows(gw, provider_name=EMBED_PROVIDER, model_name=ENPT)[0]
    assert row["status"] == "downloaded"
    # the pulled model serves requests
    r = httpx.post(gw.service_url("embed"), json={"model": ENPT, "input": "olá mundo"},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == ENPT
    ok(call(gw, "DELETE", "/model", params={"provider_name": EMBED_PROVIDER,
                                            "model_name": ENPT, "service_name": "embed"}),
       30000)
    assert not (models / ENPT).exists()


def test_canceling_a_stream_pull_leaves_nothing(embed_gw):
    gw, models = embed_gw
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{gw.url}{API}/model/stream",
                      json={"provider_name": EMBED_PROVIDER, "model_name": ENPT},
                      timeout=PULL_TIMEOUT) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                break
        assert model_rows(gw, provider_name=EMBED_PROVIDER,
                          model_name=ENPT)[0]["status"] == "downloading"
        ok(call(gw, "POST", "/model/stream/cancel", body={"model_name": ENPT}), 30000)
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "canceled", events
    assert not any(e["status"] == "success" for e in events)
    assert model_rows(gw, provider_name=EMBED_PROVIDER, model_name=ENPT) == []
    assert not (models / ENPT).exists()
    wait_for("the plugin's partial download removed",
             lambda: not any(p.name.startswith(".pull-") for p in models.iterdir()))


def test_background_pull_goes_downloading_then_downloaded(embed_gw):
    gw, models = embed_gw
    data = ok(call(gw, "POST", "/model", body={"provider_name": EMBED_PROVIDER,
                                               "model_name": ENPT, "service_name": "embed",
                                               "service_source": "local"}), 30000)
    assert data["status"] == "downloading"
    row = wait_for("the background pull to finish", lambda: [
        r for r in model_rows(gw, provider_name=EMBED_PROVIDER, model_name=ENPT)
        if r["status"] != "downloading"], timeout=240)[0]
    assert row["status"] == "downloaded" and row["size"] > 0
    ok(call(gw, "DELETE", "/model", body={"provider_name": EMBED_PROVIDER,
                                          "model_name": ENPT}), 30000)
    assert not (models / ENPT).exists()
    # a model the plugin does not know fails the pull and says so
    events = pull_stream(gw, {"provider_name": EMBED_PROVIDER, "model_name": "no-such-model"})
    assert events[-1]["status"] == "error" and "no-such-model" in events[-1]["data"]
    failed = model_rows(gw, provider_name=EMBED_PROVIDER, model_name="no-such-model")
    assert [r["status"] for r in failed] == ["failed"]
    ok(call(gw, "DELETE", "/model", body={"provider_name": EMBED_PROVIDER,
                                          "model_name": "no-such-model"}), 30000)


class _ModelFile(BaseHTTPRequestHandler):
    """Serves one small "model" file over loopback HTTP."""

    body = b"not really a model, but a file to pull\n" * 100

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_model_pulled_from_a_url_is_listed_under_its_name_and_deletes(embed_gw):
    """The plugin stores a URL's file under the file's stem; the store names it the same,
    so the listed name is the one DELETE /model (and the plugin) accepts."""
    gw, models = embed_gw
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/files/url-pulled.bin"
        events = pull_stream(gw, {"provider_name": EMBED_PROVIDER, "model_name": url})
        assert events[-1]["status"] == "success", events
    finally:
        server.shutdown()
        server.server_close()
    names = {r["model_name"]: r for r in model_rows(gw, provider_name=EMBED_PROVIDER)}
    assert "url-pulled" in names and url not in names, names
    assert names["url-pulled"]["status"] == "downloaded"
    assert names["url-pulled"]["size"] == len(_ModelFile.body)
    assert (models / "url-pulled" / "model.json").is_file()
    ok(call(gw, "DELETE", "/model", body={"provider_name": EMBED_PROVIDER,
                                          "model_name": "url-pulled"}), 30000)
    assert not (models / "url-pulled").exists()
    assert "url-pulled" not in {r["model_name"] for r in
                                model_rows(gw, provider_name=EMBED_PROVIDER)}
    # a URL without a file name to name the model after is refused up front
    refused(call(gw, "POST", "/model", body={"provider_name": EMBED_PROVIDER,
                                             "model_name": "http://127.0.0.1:9/"}),
            400, 30001, "cannot name a model", "http://127.0.0.1:9/")
