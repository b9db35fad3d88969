"""openai-plugin for real: a gateway whose only plugin is openai-plugin, talking to a
real OpenAI-compatible server on loopback (llama-cpp-python's `llama_cpp.server` with
SmolLM2 and `--api_key`, from the llamacpp-plugin engine), credentials set through the
management API.

Proves: the right key streams tokens (AOG's chat shape, one event per delta, the
last `finished: true`) and answers unary chat and embeddings; a wrong key is a 401
that says what to do; an unreachable base URL is a quick 5xx naming the host;
`/service/install` checks the key live; a custom provider with `api_flavor:
openai-plugin` uses its own key; a client that hangs up closes the upstream stream;
and the key shows up in no response and not in the gateway's log.

The server is started with `--embedding true`, which does not change its chat
answers, so one engine serves both services (it answers per-token vectors, which the
plugin mean-pools).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, EventReader, Gateway, free_port, parse_sse, require_engines

from aogstream import manifest as m

PLUGIN = "openai-plugin"
CHAT = "remote_openai-plugin_chat"
EMBED = "remote_openai-plugin_embed"
SECOND = "remote_second_chat"
API = "/aog/v0.2"
# fresh secrets per run: grepping for them anywhere is meaningful
KEY = f"sk-test-{uuid.uuid4().hex}"
WRONG = f"sk-wrong-{uuid.uuid4().hex}"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "seed": 42}
CALL_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
SEEN: list[str] = []  # every response this module received, for the leak check


class Cloud:
    """llama_cpp.server on a free loopback port, with an API key."""

    def __init__(self, engine_dir: Path, log: Path) -> None:
        venv = engine_dir / "llamacpp-plugin" / "engine" / "venv"
        gguf = next((engine_dir / "llamacpp-plugin" / "models" /
                     "smollm2-135m-instruct").glob("*.gguf"))
        self.port = free_port()
        self.log = log
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "python"),
                 str(REPO / "plugins" / "llamacpp-plugin" / "llama_launch.py"),
                 "llama_cpp.server", "--model", str(gguf), "--model_alias", "gpt-4o-mini",
                 "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "2",
                 "--n_ctx", "2048", "--api_key", KEY, "--interrupt_requests", "false",
                 "--embedding", "true"],
                # AMX crash on some VMs; unbuffered, or the server's prints wait in a buffer
                env={**os.environ, "LLAMACPP_EXTRA_BUFTS": "0", "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {self.proc.returncode}:\n"
                            f"{self.log_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2.0,
                              headers={"Authorization": f"Bearer {KEY}"})
                if r.status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"llama_cpp.server did not answer /v1/models within {timeout} s:\n"
                    f"{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def auth_key(key: str, base_url: str) -> str:
    return json.dumps({"api_key": key, "base_url": base_url})


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    engine_dir = require_engines(["llamacpp-plugin"])
    c = Cloud(engine_dir, tmp_path_factory.mktemp("cloud") / "llama_server.log")
    try:
        ready = c.wait_ready()
        print(f"llama_cpp.server ready in {ready:.1f} s")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, cloud: Cloud) -> Iterator[Gateway]:
    """A gateway with openai-plugin only (no local chat to compete), keys set."""
    plugins = tmp_path_factory.mktemp("plugins-openai")
    (plugins / PLUGIN).symlink_to(REPO / "plugins" / PLUGIN)
    g = Gateway(tmp_path_factory.mktemp("gw-openai"), plugin_dir=plugins).start()
    try:
        g.wait_plugin_running(name=PLUGIN)
        set_key(g, CHAT, auth_key(KEY, cloud.base_url))
        yield g
    finally:
        g.stop()


def record(r: httpx.Response) -> httpx.Response:
    SEEN.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    return r


def set_key(g: Gateway, provider: str, key: str) -> None:
    r = record(httpx.put(f"{g.url}{API}/service_provider", timeout=10.0,
                         json={"provider_name": provider, "auth_key": key}))
    assert r.status_code == 200, r.text


def chat(g: Gateway, **body: Any) -> httpx.Response:
    payload = {"messages": FRANCE, **GREEDY, "max_tokens": 16, **body}
    return record(httpx.post(g.service_url("chat"), json=payload, timeout=CALL_TIMEOUT))


def check_chat(ev: dict[str, Any], finished: bool) -> None:
    assert isinstance(ev["id"], str) and ev["id"]
    assert isinstance(ev["model"], str) and ev["model"]
    assert ev["created_at"].endswith("Z") and "T" in ev["created_at"]
    assert ev["message"]["role"] == "assistant"
    assert isinstance(ev["message"]["content"], str)
    assert ev["finished"] is finished
    if finished:
        assert ev["finish_reason"] in ("stop", "length")


def refused(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    msg = r.json()["message"]
    for w in words:
        assert w in msg, (w, msg)
    assert KEY not in msg and WRONG not in msg
    return msg


# ---- tests -----------------------------------------------------------------------------


def test_right_key_streams_tokens(gw: Gateway) -> None:
    events: list[dict[str, Any]] = []
    reads = 0
    with httpx.stream("POST", gw.service_url("chat"), timeout=CALL_TIMEOUT,
                      json={"messages": FRANCE, **GREEDY, "max_tokens": 24,
                            "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-aogstream-provider"] == CHAT
        reader = EventReader()
        for chunk in r.iter_raw():
            reads += 1
            events += reader.feed(chunk)
    SEEN.append(json.dumps(events))
    assert len(events) >= 3, events
    for ev in events[:-1]:
        check_chat(ev, finished=False)
    check_chat(events[-1], finished=True)
    assert events[-1]["model"] == "gpt-4o-mini"
    text = "".join(ev["message"]["content"] for ev in events)
    assert "Paris" in text, text
    assert reads >= 2  # tokens arrived in more than one read: really streamed


def test_unary_chat(gw: Gateway) -> None:
    r = chat(gw, max_tokens=24)
    assert r.status_code == 200, r.text
    answer = r.json()
    check_chat(answer, finished=True)
    assert "Paris" in answer["message"]["content"], answer
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_embeddings_need_their_own_key(gw: Gateway, cloud: Cloud) -> None:
    body = {"input": ["hello world", "the capital of France"]}
    # the embed provider has no credentials yet: a 401 saying how to set them
    r = record(httpx.post(gw.service_url("embed"), json=body, timeout=CALL_TIMEOUT))
    refused(r, 401, "api_key", "PUT /aog/v0.2/service_provider")

    set_key(gw, EMBED, auth_key(KEY, cloud.base_url))
    r = record(httpx.post(gw.service_url("embed"), json=body, timeout=CALL_TIMEOUT))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "text-embedding-3-small" and out["id"]
    assert [d["index"] for d in out["data"]] == [0, 1]
    a, b = (d["embedding"] for d in out["data"])
    assert len(a) == len(b) == 576  # SmolLM2-135M's hidden size
    assert all(isinstance(x, float) for x in a) and a != b
    assert out["usage"]["prompt_tokens"] > 0


def test_wrong_key_is_a_clear_401(gw: Gateway, cloud: Cloud) -> None:
    set_key(gw, CHAT, auth_key(WRONG, cloud.base_url))
    try:
        host = f"127.0.0.1:{cloud.port}"
        msg = refused(chat(gw, model="gpt-4o-mini"), 401, "refused the API key", host,
                      "PUT /aog/v0.2/service_provider")
        assert chat(gw, model="gpt-4o-mini").json()["business_code"] == 100102, msg
        # streamed: refused before the first byte, so a plain 401 too
        refused(chat(gw, model="gpt-4o-mini", stream=True), 401, "refused the API key", host)
    finally:
        set_key(gw, CHAT, auth_key(KEY, cloud.base_url))
    assert chat(gw).status_code == 200


def test_unreachable_base_url_is_a_quick_5xx(gw: Gateway, cloud: Cloud) -> None:
    """A refused connection is reported at once, as "cannot reach", not after the
    plugin's connect timeout ("could not connect ... within"), which a plugin that
    retried or waited on a dead port would hit instead."""
    # Quick is behaviour, not speed: nothing listens on the port, so the connect fails
    # with ECONNREFUSED on the spot; waiting for a timeout would take CONNECT_TIMEOUT
    # (5 s) or longer. Half of it leaves a busy machine a wide margin either way.
    quick = load_plugin_module().CONNECT_TIMEOUT / 2
    closed = free_port()  # bound then released: nothing listens there
    set_key(gw, CHAT, auth_key(KEY, f"http://127.0.0.1:{closed}/v1"))
    try:
        for stream in (False, True):
            t0 = time.monotonic()
            r = chat(gw, model="gpt-4o-mini", stream=stream)
            took = time.monotonic() - t0
            msg = refused(r, 503, f"127.0.0.1:{closed}", "base_url", "cannot reach")
            print(f"unreachable (stream={stream}): {r.status_code} in {took:.2f} s: {msg}")
            assert took < quick, (
                f"a refused connection took {took:.2f} s to surface (stream={stream}); "
                f"connection refused must fail fast, not wait for a timeout")
    finally:
        set_key(gw, CHAT, auth_key(KEY, cloud.base_url))


def test_cloud_errors_keep_the_clouds_message(gw: Gateway, cloud: Cloud) -> None:
    # a base_url without /v1: the cloud's 404 becomes a 400 that says what to check
    set_key(gw, CHAT, auth_key(KEY, cloud.base_url.removesuffix("/v1")))
    try:
        refused(chat(gw, model="gpt-4o-mini"), 400, "404", "/chat/completions",
                "base_url (it usually ends in /v1)")
    finally:
        set_key(gw, CHAT, auth_key(KEY, cloud.base_url))
    # a field the gateway passes on unchecked but the cloud refuses: llama_cpp.server
    # answers HTTP 500 with its validation message, which reaches the client (a field
    # the gateway checks itself, such as temperature, is a 400 before any cloud call)
    refused(chat(gw, model="gpt-4o-mini", stop={"at": "Paris"}), 503, "HTTP 500", "stop")
    refused(chat(gw, model="gpt-4o-mini", temperature="hot"), 400, "'temperature'")


def test_service_install_checks_the_key_live(gw: Gateway, cloud: Cloud) -> None:
    install = {"service_name": "chat", "service_source": "remote", "provider_name": CHAT}
    r = record(httpx.post(f"{gw.url}{API}/service/install", json=install, timeout=60.0))
    assert r.status_code == 200, r.text
    assert r.json()["business_code"] == 10000

    set_key(gw, CHAT, auth_key(WRONG, cloud.base_url))
    try:
        r = record(httpx.post(f"{gw.url}{API}/service/install", json=install, timeout=60.0))
        refused(r, 401, CHAT, "refused the API key")
    finally:
        set_key(gw, CHAT, auth_key(KEY, cloud.base_url))


def test_a_custom_provider_uses_its_own_key(gw: Gateway, cloud: Cloud) -> None:
    """`remote_second_chat` (api_flavor openai-plugin) declares `second-model`; asking
    for that model routes to it, with its key (llama_cpp.server answers any model
    name with its one model and echoes the name)."""
    r = record(httpx.post(f"{gw.url}{API}/service_provider", timeout=10.0, json={
        "service_name": "chat", "service_source": "remote", "api_flavor": PLUGIN,
        "provider_name": SECOND, "auth_type": "apikey", "models": ["second-model"],
        "auth_key": auth_key(WRONG, cloud.base_url)}))
    assert r.status_code == 200, r.text
    r = chat(gw, model="second-model")
    refused(r, 401, "refused the API key")  # its key, not the plugin provider's good one
    r = chat(gw, model="gpt-4o-mini")  # the plugin's own provider still has the right key
    assert r.status_code == 200 and r.headers["x-aogstream-provider"] == CHAT, r.text

    set_key(gw, SECOND, auth_key(KEY, cloud.base_url))
    r = chat(gw, model="second-model", stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-aogstream-provider"] == SECOND
    events = parse_sse(r.content)
    assert events[-1]["finished"] is True and events[-1]["model"] == "second-model"


def test_a_client_hang_up_closes_the_upstream_stream(gw: Gateway, cloud: Cloud) -> None:
    """llama_cpp.server logs "Disconnected from client" when its stream's reader leaves."""
    before = cloud.log_text().count("Disconnected from client")
    with httpx.stream("POST", gw.service_url("chat"), timeout=CALL_TIMEOUT,
                      json={"messages": [{"role": "user", "content": "Tell a long story."}],
                            "model": "gpt-4o-mini", "max_tokens": 1500, "stream": True}) as r:
        assert r.status_code == 200
        reader = EventReader()
        for chunk in r.iter_raw():
            if len(reader.feed(chunk)) and len(reader.events) >= 2:
                break  # hang up after two tokens
    deadline = time.monotonic() + 30.0
    while cloud.log_text().count("Disconnected from client") == before:
        assert time.monotonic() < deadline, "the upstream stream stayed open"
        time.sleep(0.1)
    assert chat(gw).status_code == 200  # and the cloud serves the next call


def test_the_key_never_leaks(gw: Gateway) -> None:
    for path in ("/service_provider", f"/service_provider/detail?provider_name={CHAT}",
                 "/plugin/list", "/model"):
        r = record(httpx.get(f"{gw.url}{API}{path}", timeout=10.0))
        assert r.status_code == 200, (path, r.text)
    r = record(httpx.post(f"{gw.url}{API}/service/export", json={}, timeout=10.0))
    assert r.status_code == 200, r.text
    assert len(SEEN) > 10  # the whole module's responses when run together
    for text in SEEN:
        assert KEY not in text and WRONG not in text
    log = gw.log_file.read_text(errors="replace")
    assert PLUGIN in log  # the plugin's own output is in this file
    assert KEY not in log and WRONG not in log


def load_plugin_module() -> Any:
    """plugin.py as a module (its name is not importable: plugins are folders)."""
    spec = importlib.util.spec_from_file_location(
        "openai_plugin_under_test", REPO / "plugins" / PLUGIN / "plugin.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_a_silent_cloud_times_out() -> None:
    """Nothing hangs: a cloud that accepts the connection and never answers is a
    SERVICE_TIMEOUT (the gateway's 504) after the read timeout, unary and streamed.
    Real sockets and httpx; only the timeouts are shortened."""
    mod = load_plugin_module()
    mod.UNARY_TIMEOUT = mod.STREAM_GAP_TIMEOUT = 1.0
    plugin = mod.OpenAIPlugin()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nobody ever reads
        auth = auth_key(KEY, f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        request = json.dumps({"messages": FRANCE}).encode()

        async def drain() -> None:
            async for _ in plugin.invoke_service_stream("chat", auth, request):
                pass

        for call in (lambda: plugin.invoke_service("chat", auth, request), drain):
            with pytest.raises(m.PluginError) as info:
                asyncio.run(asyncio.wait_for(call(), 30))
            assert info.value.code == m.ERR_CODE_SERVICE_TIMEOUT, info.value
            assert f"127.0.0.1:{silent.getsockname()[1]}" in info.value.message
            assert KEY not in info.value.message
            plugin._http = None  # its pool belonged to the finished event loop


def test_error_messages_never_quote_the_key() -> None:
    """The plugin's pure helpers: a cloud message quoting the key is scrubbed, broken
    credentials are refused without echoing them."""
    mod = load_plugin_module()
    c = mod.cloud_from({"api_key": KEY, "base_url": "https://api.example.com/v1/"})
    assert (c.base_url, c.host) == ("https://api.example.com/v1", "api.example.com")
    assert KEY not in repr(c)
    quoting = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()
    err = mod.http_error(c, 400, quoting, "/chat/completions")
    assert err.code == m.ERR_CODE_INVALID_ARGUMENT and KEY not in err.message
    assert "Incorrect API key provided: ***" in err.message
    assert mod.http_error(c, 403, quoting, "/models").code == m.ERR_CODE_UNAUTHENTICATED
    assert mod.http_error(c, 429, b"slow down", "/x").code == m.ERR_CODE_RESOURCE_EXHAUSTED
    for bad in (f"not json {KEY}", json.dumps([KEY]), json.dumps({"key": KEY})):
        with pytest.raises(m.PluginError) as info:
            mod.cloud_from(mod.parse_credentials(bad))
        assert info.value.code == m.ERR_CODE_UNAUTHENTICATED
        assert KEY not in info.value.message and "PUT /aog/v0.2/service_provider" in \
            info.value.message
    with pytest.raises(m.PluginError) as info:
        mod.cloud_from({"api_key": KEY, "base_url": "ftp://files.example.com"})
    assert info.value.code == m.ERR_CODE_INVALID_ARGUMENT and "http(s)" in info.value.message
    assert mod.mean_vector([[1.0, 2.0], [3.0, 6.0]]) == [2.0, 4.0]
    # the model: the request's, else the provider's configured one, else the manifest's
    own = mod.cloud_from({"api_key": KEY, "model": "deepseek-chat"})
    assert own.base_url == "https://api.openai.com/v1"
    assert mod.model_for("chat", {"model": "x"}, own) == "x"
    assert mod.model_for("chat", {}, own) == "deepseek-chat"
    assert mod.model_for("embed", {}, c) == "text-embedding-3-small"
