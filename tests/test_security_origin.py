"""Where a request comes from, and who may manage (`aogstream.http.guard`).

Real: gateway subprocesses (the echo test plugin; the shipped pocketsphinx plugin for
the realtime speech socket), httpx and websockets clients over loopback sending the
headers a browser would send (`Origin`, `Sec-Fetch-Site`, a rebinding page's `Host`),
the official openai and ollama clients, the `aogstream` CLI as a subprocess, and a
gateway process started on 0.0.0.0 that must refuse to serve. The unit table at the end
drives the pure decision function alone.

Proven: each cross-site chain of the security review (a text/plain POST from a web
page to plugin install, model pull and service import; an `<img>`-style GET running a
service; DNS rebinding on management and service routes; a cross-site WebSocket,
the live speech socket included) is refused with a JSON 403 saying how to allow it,
and has no effect; clients that are not browsers (no `Origin`), the CLI, the openai and
ollama clients and an origin the operator lists (with a real preflight, on service
routes only, streams included) keep working; the management key is required when
turned on, accepted from both headers, read by the CLI from the key file; client API
keys guard the services; a gateway bound beyond loopback without keys refuses to
start; the data directory and its database and key files are private (0700/0600),
old loose modes are fixed at start; the guard runs in every serving process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import ollama
import openai
import pytest
from conftest import REPO, Gateway, free_port, new_id, shipped_plugins_gateway
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from aogstream.http.guard import Policy, Request, decide, split_host

API = "/aog/v0.2"
APP_ORIGIN = "http://app.example:3000"  # the operator lists this one for CORS
EVIL = "http://evil.example"
MGMT_KEY = "mgmt-key-for-tests-4242"
CLIENT_KEY = "client-key-for-tests-1717"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
ECHO = REPO / "tests" / "plugins" / "echo-plugin"
TEXT_PLAIN = {"content-type": "text/plain;charset=UTF-8"}
CROSS_SITE = {"origin": EVIL, "sec-fetch-site": "cross-site", **TEXT_PLAIN}


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    """Default settings, plus one origin listed for CORS."""
    return gateway_factory("sec-default", AOGSTREAM_CORS_ORIGINS=APP_ORIGIN)


@pytest.fixture(scope="module")
def keyed(gateway_factory) -> Gateway:
    """Management key required on loopback, and client API keys on the services."""
    return gateway_factory("sec-keyed", AOGSTREAM_REQUIRE_MANAGEMENT_KEY="1",
                           AOGSTREAM_MANAGEMENT_KEY=MGMT_KEY, AOGSTREAM_API_KEYS=CLIENT_KEY)


def refused_403(r: httpx.Response, *words: str) -> dict:
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    text = json.dumps(body)
    for w in words:
        assert w in text, (w, body)
    return body


def services(gw: Gateway) -> dict[str, str]:
    r = httpx.get(f"{gw.url}{API}/service", timeout=10)
    assert r.status_code == 200, r.text
    return {s["service_name"]: s["hybrid_policy"] for s in r.json()["data"]}


def plugin_names(gw: Gateway) -> set[str]:
    return {p["name"] for p in gw.plugin_list()}


def copy_echo(parent: Path, name: str) -> Path:
    dest = parent / name
    shutil.copytree(ECHO, dest, ignore=shutil.ignore_patterns("__pycache__"))
    text = (dest / "plugin.yaml").read_text()
    (dest / "plugin.yaml").write_text(text.replace("name: echo-plugin", f"name: {name}", 1))
    return dest


# ---- finding 1: a web page installing and starting a plugin, pulling from its URL ------------


def test_a_cross_site_text_plain_post_cannot_install_a_plugin(gw, tmp_path):
    folder = copy_echo(tmp_path, "evil-plugin")
    body = json.dumps({"path": str(folder)})
    url = f"{gw.url}{API}/plugin/install"
    # what a page's <form enctype=text/plain> sends: Origin and Sec-Fetch-Site
    refused_403(httpx.post(url, content=body, headers=CROSS_SITE, timeout=30),
                "evil.example", "cross-site")
    # older browsers without Sec-Fetch-Site still send Origin on every POST
    refused_403(httpx.post(url, content=body, headers={"origin": EVIL, **TEXT_PLAIN},
                           timeout=30))
    # a navigation-like POST with no Origin but Sec-Fetch-Site
    refused_403(httpx.post(url, content=body,
                           headers={"sec-fetch-site": "same-site", **TEXT_PLAIN}, timeout=30))
    refused_403(httpx.post(url, content=body, headers={"origin": "null", **TEXT_PLAIN},
                           timeout=30), "null")
    assert "evil-plugin" not in plugin_names(gw)
    assert not (gw.workdir / "data" / "plugins" / "evil-plugin").exists()


def test_plugin_install_never_expands_home_or_takes_relative_paths(gw, tmp_path):
    url = f"{gw.url}{API}/plugin/install"
    for path in ("~/Downloads/evil-plugin.tar.gz", "relative/evil-plugin"):
        r = httpx.post(url, json={"path": path}, timeout=30)
        assert r.status_code == 400, r.text
        msg = r.json()["message"]
        assert "not absolute" in msg and "~ is not expanded" in msg, msg
        assert str(Path.home()) not in msg


def test_a_cross_site_post_cannot_pull_a_model_from_its_url(gw):
    before = httpx.get(f"{gw.url}{API}/model", timeout=10).json().get("data")
    body = json.dumps({"model_name": "http://evil.example/payload.tar.gz",
                       "service_name": "chat"})
    for path in ("/model", "/model/stream"):
        refused_403(httpx.post(f"{gw.url}{API}{path}", content=body, headers=CROSS_SITE,
                               timeout=30))
    assert httpx.get(f"{gw.url}{API}/model", timeout=10).json().get("data") == before


# ---- finding 2: a web page redirecting every app's prompts ------------------------------------


def test_a_cross_site_service_import_is_refused_and_changes_nothing(gw):
    before = services(gw)
    doc = {"version": "v0.2", "services": {"chat": {"hybrid_policy": "always_remote"}}}
    body = json.dumps(doc)
    refused_403(httpx.post(f"{gw.url}{API}/service/import", content=body,
                           headers=CROSS_SITE, timeout=30))
    refused_403(httpx.put(f"{gw.url}{API}/service", headers=CROSS_SITE, timeout=30,
                          content=json.dumps({"service_name": "chat",
                                              "hybrid_policy": "always_remote"})))
    assert services(gw) == before
    # the same request from a client that is not a browser does what it says
    r = httpx.post(f"{gw.url}{API}/service/import", content=body, timeout=30)
    assert r.status_code == 200, r.text
    assert services(gw)["chat"] == "always_remote"
    httpx.put(f"{gw.url}{API}/service", timeout=30,
              json={"service_name": "chat", "hybrid_policy": before["chat"]})


def test_an_img_style_cross_site_get_cannot_run_a_service(gw):
    tag = new_id("img")
    url = f"{gw.service_url('chat')}?id={tag}&messages=hi"
    # an <img src> sends no Origin, only Sec-Fetch-Site (and Sec-Fetch-Dest: image)
    refused_403(httpx.get(url, headers={"sec-fetch-site": "cross-site",
                                        "sec-fetch-dest": "image"}, timeout=10))
    refused_403(httpx.get(f"{gw.url}/v1/models", headers={"sec-fetch-site": "cross-site"},
                          timeout=10))
    # an Ollama-path refusal is shaped for the ollama client: {"error": "..."}
    r = httpx.post(f"{gw.url}/api/chat", headers=CROSS_SITE, timeout=10,
                   content=json.dumps({"model": "x", "messages": []}))
    assert r.status_code == 403 and isinstance(r.json()["error"], str), r.text
    # a GET's query fields arrive as lists, as in AOG: {"id": ["<tag>"]}
    assert gw.wait_event("unary", timeout=0.5, id=str([tag])) is None
    # the same GET typed by the user (Sec-Fetch-Site: none) or sent by curl runs
    for headers in ({"sec-fetch-site": "none"}, {}):
        tag = new_id("img")
        r = httpx.get(f"{gw.service_url('chat')}?id={tag}&messages=hi", headers=headers,
                      timeout=10)
        assert r.status_code == 200, r.text
        assert gw.wait_event("unary", timeout=5, id=str([tag])) is not None


# ---- finding 3: DNS rebinding and cross-site WebSockets ----------------------------------------


def test_a_foreign_host_is_refused_on_management_and_service_routes(gw):
    rebound = {"host": f"evil.example:{gw.port}"}
    for method, path in (("GET", f"{API}/service_provider"), ("GET", f"{API}/plugin/list"),
                         ("GET", "/health"), ("POST", f"{API}/services/chat"),
                         ("POST", "/v1/chat/completions")):
        r = httpx.request(method, f"{gw.url}{path}", headers=rebound, json=CHAT, timeout=10)
        refused_403(r, "evil.example", "AOGSTREAM_ALLOWED_HOSTS")
    # the gateway's own names, with any port
    for host in ("localhost", f"localhost:{gw.port}", "127.0.0.1:1", "127.8.9.10",
                 f"[::1]:{gw.port}", "app.localhost"):
        r = httpx.get(f"{gw.url}{API}/plugin/list", headers={"host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)


def test_operator_listed_host_names_are_accepted(gateway_factory):
    gw = gateway_factory("sec-hosts", AOGSTREAM_ALLOWED_HOSTS="gw.internal, Other.Example")
    for host in ("gw.internal", f"gw.internal:{gw.port}", "other.example:8080"):
        r = httpx.get(f"{gw.url}{API}/plugin/list", headers={"host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)
    refused_403(httpx.get(f"{gw.url}{API}/plugin/list", headers={"host": "gw.internal.evil"},
                          timeout=10))


def ws_refusal(url: str, host: str = "", **headers: str) -> int:
    """The HTTP status a WebSocket upgrade is refused with (its body must say why);
    `host` names the server as a rebinding page would (the socket still goes to
    the gateway)."""
    sock = None
    if host:
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        url = url.replace(parts.netloc, host, 1)
    with pytest.raises(InvalidStatus) as exc:
        with connect(url, open_timeout=5, additional_headers=headers, sock=sock):
            pass
    resp = exc.value.response
    assert json.loads(resp.body or b"{}").get("message"), resp.body
    return resp.status_code


def test_a_cross_site_websocket_upgrade_is_refused(gw):
    url = gw.service_ws_url("echo-ws")
    assert ws_refusal(url, origin=EVIL) == 403
    assert ws_refusal(url, origin="null") == 403
    assert ws_refusal(url, host=f"evil.example:{gw.port}") == 403
    assert gw.events("bidi-start") == []
    # no Origin (a program), the gateway's own origin, and a listed origin are fine
    for headers in ({}, {"origin": f"http://127.0.0.1:{gw.port}"}, {"origin": APP_ORIGIN}):
        with connect(url, open_timeout=5, additional_headers=headers) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("sec-speech"),
                                 ["pocketsphinx-plugin"]) as gateway:
        yield gateway


def test_a_web_page_cannot_read_the_live_transcript_socket(speech):
    url = speech.service_ws_url("speech-to-text-ws")
    assert ws_refusal(url, origin=EVIL) == 403
    assert ws_refusal(url, origin=f"http://localhost:{speech.port + 1}") == 403
    run = {"task": "speech-to-text-ws", "action": "run-task",
           "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en"}}
    with connect(url, open_timeout=10) as ws:  # a program: no Origin
        ws.send(json.dumps(run))
        first = json.loads(ws.recv(timeout=30))
        assert first["header"]["event"] == "task-started", first


# ---- what must keep working -------------------------------------------------------------------


def test_programs_without_origin_keep_working(gw):
    # curl's default body type, and text/plain, from a program (no Origin): unchanged
    r = httpx.post(gw.service_url("chat"), content=json.dumps(CHAT),
                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{gw.url}{API}/service_provider", timeout=10)
    assert r.status_code == 200, r.text
    # the gateway's own pages (same origin) are not cross-site
    r = httpx.post(gw.service_url("chat"), json=CHAT, timeout=10,
                   headers={"origin": gw.url, "sec-fetch-site": "same-origin"})
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers


def test_the_cli_keeps_working(gw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    env["AOG_HOST"] = gw.url
    proc = subprocess.run([sys.executable, "-m", "aogstream", "get", "services"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "chat" in proc.stdout


def test_the_openai_and_ollama_clients_keep_working(gw):
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert oa.models.list() is not None
    ol = ollama.Client(host=gw.url, timeout=30)
    assert ol.list() is not None


def test_a_listed_origin_gets_cors_on_services_only(gw):
    pre = httpx.options(gw.service_url("chat"), timeout=10, headers={
        "origin": APP_ORIGIN, "sec-fetch-site": "cross-site",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,authorization,x-stainless-os"})
    assert pre.status_code == 204, pre.text
    assert pre.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == \
        "content-type,authorization,x-stainless-os"
    assert int(pre.headers["access-control-max-age"]) > 0
    assert "Origin" in pre.headers["vary"]
    browser = {"origin": APP_ORIGIN, "sec-fetch-site": "cross-site"}
    r = httpx.post(gw.service_url("chat"), json=CHAT, headers=browser, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    # a stream carries it on its first bytes
    with httpx.stream("POST", gw.service_url("chat"), json={**CHAT, "stream": True},
                      headers=browser, timeout=10) as s:
        assert s.status_code == 200
        assert s.headers["access-control-allow-origin"] == APP_ORIGIN
        assert s.headers["content-type"].startswith("text/event-stream")
        s.read()
    r = httpx.get(f"{gw.url}/v1/models", headers=browser, timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    # management: never, preflight or not
    pre = httpx.options(f"{gw.url}{API}/service/import", timeout=10, headers={
        "origin": APP_ORIGIN, "access-control-request-method": "POST"})
    refused_403(pre, "never")
    assert "access-control-allow-origin" not in pre.headers
    r = httpx.get(f"{gw.url}{API}/service_provider", headers=browser, timeout=10)
    refused_403(r, "management")
    assert "access-control-allow-origin" not in r.headers
    # an origin that is not listed gets no preflight
    pre = httpx.options(gw.service_url("chat"), timeout=10, headers={
        "origin": EVIL, "access-control-request-method": "POST"})
    refused_403(pre, "AOGSTREAM_CORS_ORIGINS")


# ---- who may manage ---------------------------------------------------------------------------


def test_the_management_key_is_required_when_turned_on(keyed):
    url = f"{keyed.url}{API}/service_provider"
    r = httpx.get(url, timeout=10)
    assert r.status_code == 401, r.text
    assert "management key" in r.json()["message"]
    assert MGMT_KEY not in r.text
    r = httpx.get(url, headers={"authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401 and "wrong" in r.json()["message"]
    assert httpx.get(url, headers={"authorization": "Bearer " + CLIENT_KEY},
                     timeout=10).status_code == 401  # a client key does not manage
    for headers in ({"authorization": f"Bearer {MGMT_KEY}"}, {"x-management-key": MGMT_KEY}):
        assert httpx.get(url, headers=headers, timeout=10).status_code == 200
    # a cross-site page gets no further with the key than without it
    r = httpx.get(url, headers={"x-management-key": MGMT_KEY, **CROSS_SITE}, timeout=10)
    assert r.status_code == 403
    assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200


def test_client_api_keys_guard_the_services(keyed):
    url = keyed.service_url("chat")
    r = httpx.post(url, json=CHAT, timeout=10)
    assert r.status_code == 401 and "AOGSTREAM_API_KEYS" in r.json()["message"], r.text
    assert CLIENT_KEY not in r.text
    for headers in ({"authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY},
                    {"x-management-key": MGMT_KEY}):
        assert httpx.post(url, json=CHAT, headers=headers, timeout=10).status_code == 200
    oa = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=CLIENT_KEY, max_retries=0,
                       timeout=30)
    assert oa.models.list() is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0,
                      timeout=30).models.list()
    ol = ollama.Client(host=keyed.url, timeout=30,
                       headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert ol.list() is not None


def test_a_browser_socket_carries_its_key_as_a_subprotocol(keyed):
    """What the web console's microphone does where client API keys are required: a
    browser cannot set headers on a WebSocket, so it offers `aogstream` and
    `openai-insecure-api-key.<key>`; the gateway selects `aogstream` (a browser fails the
    handshake when none is selected) and never echoes the key."""
    url = keyed.service_ws_url("echo-ws")
    page = {"origin": f"http://127.0.0.1:{keyed.port}"}  # the console's own origin
    assert ws_refusal(url, **page) == 401
    for key in (CLIENT_KEY, MGMT_KEY):
        with connect(url, open_timeout=5, additional_headers=page,
                     subprotocols=["aogstream", f"openai-insecure-api-key.{key}"]) as ws:
            assert ws.subprotocol == "aogstream"
            assert key not in str(ws.response.headers)
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
    with pytest.raises(InvalidStatus) as exc:
        with connect(url, open_timeout=5, additional_headers=page,
                     subprotocols=["aogstream", "openai-insecure-api-key.nope"]):
            pass
    assert exc.value.response.status_code == 401


def test_keys_reach_no_plugin_and_no_log(keyed):
    r = httpx.get(f"{keyed.url}{API}/plugin/list", headers={"x-management-key": MGMT_KEY},
                  timeout=10)
    pid = next(p["pid"] for p in r.json()["data"] if p["name"] == "echo-plugin")
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"AOGSTREAM_MANAGEMENT_KEY" not in environ and MGMT_KEY.encode() not in environ
    assert b"AOGSTREAM_API_KEYS" not in environ and CLIENT_KEY.encode() not in environ
    log = keyed.log_tail(2000)
    assert MGMT_KEY not in log and CLIENT_KEY not in log


def cli(gw: Gateway, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    full.update(AOG_HOST=gw.url, **env)
    return subprocess.run([sys.executable, "-m", "aogstream", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_the_cli_reads_the_generated_key_file(gateway_factory, tmp_path):
    gw = gateway_factory("sec-keyfile", AOGSTREAM_REQUIRE_MANAGEMENT_KEY="1")
    data = gw.workdir / "data"
    key_file = data / "management.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert key not in gw.log_tail(400)
    # another data dir: no key to send, a clear refusal
    proc = cli(gw, "get", "services", AOG_DATA_DIR=str(tmp_path / "elsewhere"))
    assert proc.returncode != 0 and "management key" in proc.stderr, proc.stderr
    # the gateway's data dir: the CLI finds the key by itself
    proc = cli(gw, "get", "services", AOG_DATA_DIR=str(data))
    assert proc.returncode == 0, proc.stderr
    assert "chat" in proc.stdout
    proc = cli(gw, "get", "services", AOG_DATA_DIR=str(tmp_path / "elsewhere"),
               AOGSTREAM_MANAGEMENT_KEY=key)
    assert proc.returncode == 0, proc.stderr
    # the key stays the same across restarts
    gw.stop()
    gw.start()
    assert key_file.read_text().strip() == key


def start_exposed(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`server start --host 0.0.0.0`, which must refuse before serving anything. If it
    does not exit within 20 s it is serving: stopped at once (SIGINT, so its plugins go
    too) and the test fails."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    full.update(AOG_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **env)
    cmd = [sys.executable, "-m", "aogstream", "server", "start", "--host", "0.0.0.0",
           "--port", str(free_port()), "--plugin-dir", str(ECHO.parent)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise AssertionError("the gateway started serving on 0.0.0.0 without keys") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_beyond_loopback_it_refuses_to_start_without_keys(tmp_path):
    proc = start_exposed(tmp_path)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0" in proc.stderr, proc.stderr
    assert "AOGSTREAM_MANAGEMENT_KEY" in proc.stderr
    assert not (tmp_path / "data" / "management.key").exists()  # not generated for it
    proc = start_exposed(tmp_path, AOGSTREAM_MANAGEMENT_KEY=MGMT_KEY)
    assert proc.returncode != 0
    assert "AOGSTREAM_API_KEYS" in proc.stderr, proc.stderr
    assert MGMT_KEY not in proc.stderr + proc.stdout
    proc = start_exposed(tmp_path, AOGSTREAM_CORS_ORIGINS="not an origin",
                         AOGSTREAM_MANAGEMENT_KEY=MGMT_KEY, AOGSTREAM_API_KEYS=CLIENT_KEY)
    assert proc.returncode != 0 and "not an origin" in proc.stderr, proc.stderr


# ---- at rest ----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_database_and_key_files_are_private(gateway_factory):
    gw = gateway_factory("sec-modes")
    data = gw.workdir / "data"
    # a write, so the WAL exists
    httpx.put(f"{gw.url}{API}/service", json={"service_name": "chat",
                                              "hybrid_policy": "default"}, timeout=10)
    files = [data / "aogstream.db", data / "aogstream.db-wal", data / "aogstream.db-shm",
             data / "management.key"]
    assert mode(data) == 0o700
    for f in files:
        assert f.exists(), f
        assert mode(f) == 0o600, (f.name, oct(mode(f)))
    # modes loosened by an older version are fixed at the next start
    gw.stop()
    data.chmod(0o755)
    for f in files:
        if f.exists():
            f.chmod(0o644)
    gw.start()
    assert mode(data) == 0o700
    for f in files:
        if f.exists():
            assert mode(f) == 0o600, (f.name, oct(mode(f)))


# ---- every serving process --------------------------------------------------------------------


def test_the_guard_runs_in_every_serving_process(gateway_factory):
    gw = gateway_factory("sec-workers", AOGSTREAM_WORKERS="2",
                         AOGSTREAM_REQUIRE_MANAGEMENT_KEY="1",
                         AOGSTREAM_MANAGEMENT_KEY=MGMT_KEY)
    deadline = time.monotonic() + 30
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != {"primary", "worker"}:
        r = httpx.post(gw.service_url("chat"), json=CHAT, timeout=10,
                       headers={"host": "evil.example"})  # a fresh connection each time
        assert r.status_code == 403, r.text
        for line in gw.log_tail(400).splitlines():
            if "aogstream.http.guard" in line and "refused" in line:
                seen.add("worker" if "[w1]" in line else "primary")
    assert seen == {"primary", "worker"}, f"refusals seen from {seen}:\n{gw.log_tail()}"
    for _ in range(10):  # management through either process (the worker proxies it)
        url = f"{gw.url}{API}/plugin/list"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers={"x-management-key": MGMT_KEY},
                         timeout=10).status_code == 200


# ---- the decision, as a table -----------------------------------------------------------------

P = Policy(allowed_hosts=frozenset({"gw.internal"}),
           cors_origins=frozenset({"http://app.example:3000"}))
KEYED = Policy(management_key="m-key", require_management_key=True, api_keys=("c-key",))
WILD = Policy(any_ip_host=True)
S = f"{API}/services/chat"
M = f"{API}/plugin/install"
H = "127.0.0.1:16688"

TABLE = [
    # (policy, request, expected status: 0 = served, -1 = preflight answered)
    (P, Request(S, host=H), 0),
    (P, Request(S), 0),  # no Host (HTTP/1.0): not a browser
    (P, Request(S, host="localhost"), 0),
    (P, Request(S, host="127.1.2.3:9"), 0),
    (P, Request(S, host="[::1]:16688"), 0),
    (P, Request(S, host="[::ffff:127.0.0.1]"), 0),
    (P, Request(S, host="gw.internal:80"), 0),
    (P, Request(S, host="GW.Internal"), 0),
    (P, Request(S, host="evil.example:16688"), 403),
    (P, Request(S, host="10.0.0.5"), 403),
    (WILD, Request(S, host="10.0.0.5:16688"), 0),  # bound to 0.0.0.0: IP literals
    (WILD, Request(S, host="evil.example"), 403),
    (P, Request(S, host="127.0.0.1@evil.example"), 403),
    (P, Request(S, host="127.0.0.1:99999"), 403),
    (P, Request(S, host="localhost:x"), 403),
    (P, Request(S, host=H, origin="http://127.0.0.1:16688"), 0),
    (P, Request(S, host="localhost:16688", origin="http://localhost:16688",
                fetch_site="same-origin"), 0),
    # behind a TLS proxy that passes Host on: the page's https origin is the gateway's own
    (P, Request(S, host="gw.internal", origin="https://gw.internal", fetch_site="same-origin"),
     0),
    (P, Request(S, host="gw.internal:80", origin="https://gw.internal"), 403),
    (P, Request(S, host=H, origin="http://127.0.0.1:3000"), 403),  # another local app
    (P, Request(S, host=H, origin="http://localhost:16688"), 403),  # not how it was reached
    (P, Request(S, host=H, origin="null"), 403),
    (P, Request(S, host=H, origin="http://evil.example"), 403),
    (P, Request(S, host=H, fetch_site="cross-site"), 403),
    (P, Request(S, host=H, fetch_site="same-site"), 403),
    (P, Request(S, host=H, fetch_site="none"), 0),
    (P, Request(S, host=H, fetch_site="same-origin"), 0),
    (P, Request(S, host=H, origin="http://app.example:3000", fetch_site="cross-site"), 0),
    (P, Request(S, host=H, origin="http://APP.example:3000"), 0),
    (P, Request(S, host=H, origin="http://app.example:3001"), 403),
    (P, Request(S, host=H, origin="https://app.example:3000"), 403),
    (P, Request(M, method="POST", host=H, origin="http://app.example:3000"), 403),
    (P, Request(M, method="POST", host=H, origin="http://evil.example"), 403),
    (P, Request(M, method="POST", host=H, fetch_site="cross-site"), 403),
    (P, Request(M, method="POST", host=H), 0),
    (P, Request("/v1/chat/completions", method="OPTIONS", host=H,
                origin="http://app.example:3000", preflight=True), -1),
    (P, Request(M, method="OPTIONS", host=H, origin="http://app.example:3000",
                preflight=True), 403),
    (P, Request(S, method="OPTIONS", host=H, origin="http://evil.example", preflight=True),
     403),
    (P, Request(S, websocket=True, host=H, origin="http://evil.example"), 403),
    (P, Request(S, websocket=True, host=H, origin="http://app.example:3000"), 0),
    (P, Request(S, websocket=True, host=H), 0),
    (P, Request("/health", host=H, fetch_site="cross-site"), 403),
    (KEYED, Request(M, host=H), 401),
    (KEYED, Request(M, host=H, credentials=("m-key",)), 0),
    (KEYED, Request(M, host=H, credentials=("c-key",)), 401),
    (KEYED, Request(M, host=H, credentials=("m-key2",)), 401),
    (KEYED, Request("/no/such/route", host=H), 401),  # unknown paths fail closed
    (KEYED, Request("/health", host=H), 0),
    (KEYED, Request(S, host=H), 401),
    (KEYED, Request(S, host=H, credentials=("c-key",)), 0),
    (KEYED, Request(S, host=H, credentials=("wrong", "m-key")), 0),
    (KEYED, Request("/api/chat", host=H, credentials=("c-key",)), 0),
    (KEYED, Request(M, host="evil.example", credentials=("m-key",)), 403),
    (Policy(), Request(M, host=H), 0),  # loopback default: no key needed
]


@pytest.mark.parametrize(("policy", "req", "expected"), TABLE)
def test_decision_table(policy: Policy, req: Request, expected: int):
    d = decide(policy, req)
    got = -1 if d.preflight else d.status
    assert got == expected, (req, d)
    if d.status:
        assert d.message, d
        for secret in ("m-key", "c-key"):  # keys are never echoed
            assert secret not in d.message, d.message


def test_split_host():
    assert split_host("LocalHost:8080") == ("localhost", 8080)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("[zz]") is None
    assert split_host("a b") is None
    assert split_host("host:0") is None
