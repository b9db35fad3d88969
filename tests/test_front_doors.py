"""OpenAI and Ollama front doors, driven by the official `openai` and `ollama` clients.

A real gateway serves the real llama.cpp (SmolLM2) and embedding engines; the clients
talk to it exactly as they would to api.openai.com or a local Ollama, so these tests
prove the wire shapes (JSON, SSE with `data: [DONE]`, NDJSON with `done: true`, errors)
are the ones those libraries parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from conftest import Gateway, shipped_plugins_gateway

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "multilingual-e5-small"
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("front-doors"),
                                 ["llamacpp-plugin", "embed-plugin"]) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def ol(gw: Gateway) -> ollama.Client:
    return ollama.Client(host=gw.url, timeout=60)


# ---- OpenAI ---------------------------------------------------------------------------

def test_openai_chat(oa):
    r = oa.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, temperature=0,
                                   max_tokens=30)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.model == CHAT_MODEL and r.object == "chat.completion"


def test_openai_chat_stream(oa):
    chunks = list(oa.chat.completions.create(model=CHAT_MODEL, messages=FRANCE,
                                             temperature=0, max_tokens=30, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Paris" in text
    assert len(chunks) > 2  # token by token, not one blob
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_openai_stream_ends_with_a_proper_done_event(gw):
    body = {"model": CHAT_MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert r.text.endswith("data: [DONE]\n\n")
    assert all(e.startswith("data: {") for e in events[:-1])


def test_openai_embeddings(oa):
    r = oa.embeddings.create(model=EMBED_MODEL, input=["Paris is in France.", "Hello"])
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in r.data)


def test_openai_models(oa):
    ids = {m.id for m in oa.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    m = oa.models.retrieve(CHAT_MODEL)
    assert m.id == CHAT_MODEL and m.object == "model" and m.owned_by
    with pytest.raises(openai.NotFoundError) as exc:
        oa.models.retrieve("no-such-model")
    assert exc.value.code == "model_not_found" and CHAT_MODEL in exc.value.message


def test_openai_errors_raise_the_client_exceptions(oa):
    with pytest.raises(openai.NotFoundError) as exc:
        oa.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert "no-such-model" in exc.value.message
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-model", messages=FRANCE, stream=True)
    with pytest.raises(openai.BadRequestError) as exc:
        oa.chat.completions.create(model=CHAT_MODEL, messages=[])
    assert "messages" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        oa.embeddings.create(model=EMBED_MODEL, input=None)  # type: ignore[arg-type]


def test_openai_unknown_endpoint_and_method(gw):
    r = httpx.post(f"{gw.url}/v1/nothing-here", json={}, timeout=10)
    assert r.status_code == 404
    assert "/v1/chat/completions" in r.json()["error"]["message"]
    r = httpx.get(f"{gw.url}/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["message"]


# ---- Ollama ---------------------------------------------------------------------------

def test_ollama_chat(ol):
    r = ol.chat(model=CHAT_MODEL, messages=FRANCE, stream=False,
                options={"temperature": 0, "num_predict": 30})
    assert "Paris" in r.message.content
    assert r.done is True and r.done_reason in ("stop", "length")


def test_ollama_chat_stream(ol):
    parts = list(ol.chat(model=CHAT_MODEL, messages=FRANCE, stream=True,
                         options={"temperature": 0, "num_predict": 30}))
    assert "Paris" in "".join(p.message.content or "" for p in parts)
    assert parts[-1].done is True
    assert not any(p.done for p in parts[:-1])


def test_ollama_streams_by_default(gw):
    body = {"model": CHAT_MODEL, "prompt": "Hello", "options": {"num_predict": 3}}
    r = httpx.post(f"{gw.url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert len(lines) >= 2 and lines[-1]["done"] is True


def test_ollama_generate(ol):
    r = ol.generate(model=CHAT_MODEL, prompt="The capital of France is", stream=False,
                    options={"temperature": 0, "num_predict": 8})
    assert r.done is True and isinstance(r.response, str) and r.response


def test_ollama_embed_and_list(ol):
    r = ol.embed(model=EMBED_MODEL, input=["one", "two"])
    assert len(r.embeddings) == 2 and all(len(v) == 384 for v in r.embeddings)
    names = {m.model for m in ol.list().models}
    assert {CHAT_MODEL, EMBED_MODEL} <= names


def test_ollama_errors_raise_response_error(ol):
    with pytest.raises(ollama.ResponseError) as exc:
        ol.chat(model="no-such-model", messages=FRANCE, stream=False)
    assert exc.value.status_code == 404 and "no-such-model" in exc.value.error
    with pytest.raises(ollama.ResponseError) as exc:
        list(ol.chat(model="no-such-model", messages=FRANCE, stream=True))
    assert exc.value.status_code == 404


# ---- /aog/v0.2/api_flavors/<flavor>/... -------------------------------------------------

def test_api_flavor_routes(gw):
    base = f"{gw.url}/aog/v0.2/api_flavors"
    oa = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="x", max_retries=0, timeout=60)
    r = oa.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, max_tokens=3)
    assert r.choices[0].message.content
    r = oa.completions.create(model=CHAT_MODEL, prompt="The capital of France is",
                              max_tokens=3)
    assert r.choices[0].text and r.object == "text_completion"
    r = httpx.post(f"{base}/ollama/api/chat", timeout=60, json={
        "model": CHAT_MODEL, "messages": FRANCE, "stream": False,
        "options": {"num_predict": 3}})
    assert r.status_code == 200 and r.json()["done"] is True
    r = httpx.get(f"{base}/ollama/api/tags", timeout=10)
    assert CHAT_MODEL in {m["name"] for m in r.json()["models"]}
    r = httpx.post(f"{base}/nosuchflavor/v1/chat/completions", json={}, timeout=10)
    assert r.status_code == 404 and "openai" in r.json()["error"]["message"]
