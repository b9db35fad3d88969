"""Ollama's extra endpoints with the official `ollama` Python client, on real engines.

Real parts: a gateway subprocess serving the shipped llamacpp-plugin and embed-plugin
with their installed engines (their engine folders linked into a fresh engine
directory, so pulls and deletes here touch only this test's model store), the `ollama`
Python package over loopback, the shipped openai-plugin with no key set, and a
loopback HTTP server the llama.cpp plugin pulls a
GGUF from.

The same calls from Node: the `ollama` npm package (pinned in tests/node, installed by
`make test` into .cache/node-sdks) runs version, show, ps, pull, list, chat and delete.

Proven: `/api/version` reports a version Codex's `--oss` mode accepts (≥ 0.13.4);
`show` names a model's capabilities (completion and tools for chat, embedding for the
embedder) and is a 404 for an unknown one; `ps` lists the local models; the legacy
`embeddings` call returns the embedder's vector; `pull` streams Ollama's progress lines
up to `success` for a real download through the gateway's model pulls, after which
`/api/tags` lists the model and it chats; `delete` removes it (and is a 404 the second
time); `chat` with tools answers with object arguments; `/api/tags` and `/v1/models`
list the local models, and no model of a remote provider that has no key.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import REPO, Gateway, require_engines
from harness.cloud import loopback_server

PLUGINS = ["llamacpp-plugin", "embed-plugin"]
REMOTE_MODELS = {"gpt-4o-mini", "deepseek-chat", "qwen-plus", "text-embedding-3-small"}
CHAT_MODEL = "smollm2-135m-instruct"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def gguf_url() -> Iterator[str]:
    src = require_engines(PLUGINS) / "llamacpp-plugin" / "models" / CHAT_MODEL
    gguf = next(src.glob("*.gguf"))
    with loopback_server(functools.partial(_Quiet, directory=str(gguf.parent))) as base:
        yield f"{base}/{gguf.name}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = require_engines(PLUGINS)
    work = tmp_path_factory.mktemp("gw-ollama")
    engines, plugins = work / "engines", work / "plugins"
    plugins.mkdir()
    for name in PLUGINS:
        (engines / name / "models").mkdir(parents=True)
        os.symlink(root / name / "engine", engines / name / "engine")
        for model in (root / name / "models").iterdir():
            os.symlink(model, engines / name / "models" / model.name)
        (plugins / name).symlink_to(REPO / "plugins" / name)
    # a remote plugin whose provider has no key: its models cannot answer yet
    (plugins / "openai-plugin").symlink_to(REPO / "plugins" / "openai-plugin")
    g = Gateway(work, {"AOGSTREAM_ENGINE_DIR": str(engines)}, plugin_dir=plugins).start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def client(gw: Gateway) -> ollama.Client:
    return ollama.Client(host=gw.url, timeout=180)


def test_version_show_and_ps(gw: Gateway, client: ollama.Client) -> None:
    version = httpx.get(f"{gw.url}/api/version", timeout=10).json()["version"]
    assert tuple(int(p) for p in version.split(".")) >= (0, 13, 4)

    shown = client.show(CHAT_MODEL)
    assert {"completion", "tools"} <= set(shown.capabilities or [])
    assert shown.modified_at is not None
    embedders = [m.model for m in client.list().models
                 if "embedding" in (client.show(m.model).capabilities or [])]
    assert embedders, "the embed-plugin's model should be listed with its capability"

    with pytest.raises(ollama.ResponseError) as err:
        client.show("no-such-model")
    assert err.value.status_code == 404 and "no-such-model" in err.value.error

    running = {m.model for m in client.ps().models}
    assert CHAT_MODEL in running and set(embedders) <= running


def test_legacy_embeddings(client: ollama.Client) -> None:
    embedder = next(m.model for m in client.list().models
                    if "embedding" in (client.show(m.model).capabilities or []))
    one = client.embeddings(model=embedder, prompt="The sky is blue.")
    assert len(one.embedding) > 10
    new = client.embed(model=embedder, input="The sky is blue.")
    assert new.embeddings[0] == pytest.approx(list(one.embedding), abs=1e-5)


def test_pull_lists_chats_and_deletes(gw: Gateway, client: ollama.Client,
                                      gguf_url: str) -> None:
    name = Path(gguf_url).name.removesuffix(".gguf")  # named after the file
    lines = list(client.pull(gguf_url, stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    progress = [line for line in lines if line.total]
    assert progress and progress[-1].completed == progress[-1].total
    assert name in {m.model for m in client.list().models}

    answer = client.chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                         options={"num_predict": 8, "temperature": 0})
    assert answer.message.content

    client.delete(name)
    assert name not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.delete(name)
    assert err.value.status_code == 404
    # pulling what is already here is an immediate success (stream false, ollama's default)
    assert client.pull(CHAT_MODEL).status == "success"


def test_chat_with_tools_has_object_arguments(client: ollama.Client) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    answer = client.chat(model=CHAT_MODEL, tools=[get_weather], options={
        "temperature": 0, "num_predict": 48},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    for call in answer.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)


def test_listings_show_what_can_answer_now(gw: Gateway, client: ollama.Client) -> None:
    tags = [m.model for m in client.list().models]
    assert CHAT_MODEL in tags and not REMOTE_MODELS & set(tags)
    ids = [m["id"] for m in httpx.get(f"{gw.url}/v1/models", timeout=10).json()["data"]]
    assert CHAT_MODEL in ids and not REMOTE_MODELS & set(ids)
    # the remote models are there, just not answerable: the store knows them
    stored = httpx.get(f"{gw.url}/aog/v0.2/model", timeout=10).json()["data"]
    assert REMOTE_MODELS & {m["model_name"] for m in stored}


def test_ollama_js_client_version_show_ps_pull_and_delete(gw: Gateway, gguf_url: str) -> None:
    """The `ollama` npm package, unchanged, through the same endpoints."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node is not installed (make sysdeps installs it); the ollama JS "
                    "client test needs `node`")
    sdk_dir = REPO / ".cache" / "node-sdks"
    if not (sdk_dir / "node_modules" / "ollama").is_dir():
        pytest.fail(f"the Node packages are not installed in {sdk_dir}; run "
                    "`make node-sdks` (part of `make test`)")
    script = sdk_dir / "ollama_client.mjs"  # ES modules resolve packages beside the script
    shutil.copyfile(REPO / "tests" / "node" / script.name, script)
    proc = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GATEWAY_URL": gw.url, "CHAT_MODEL": CHAT_MODEL,
                               "GGUF_URL": gguf_url})
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tuple(int(p) for p in out["version"].split(".")) >= (0, 13, 4)
    assert {"completion", "tools"} <= set(out["capabilities"])
    assert out["unknownShow"] == 404
    assert CHAT_MODEL in out["running"]
    assert out["pullStatuses"] == ["pulling manifest", "success"], out
    assert out["pullLast"] and out["pullLast"]["completed"] == out["pullLast"]["total"]
    assert out["listedAfterPull"] and out["chatText"]
    assert not out["listedAfterDelete"]
