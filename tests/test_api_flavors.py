"""`/aog/v0.2/api_flavors/<flavor>/...` for every built-in flavor, and plugins whose
`config_ref` is not AOG's.

Part one: a real gateway with the real llama.cpp engine (SmolLM2); chat goes through
every flavor's door (aog, openai, ollama, deepseek, aliyun, baidu, tencent, openvino —
the paths come from the templates' `endpoints`), unary and streamed, checked in each
flavor's own shapes, with the official `openai` client for the OpenAI-compatible ones;
errors come back in each flavor's error shape.

Part two: `tests/plugins-flavor/flavor-openai-plugin` declares `config_ref: openai:chat`,
so it receives OpenAI's request body and answers in OpenAI's shapes; it forwards to a
real OpenAI-compatible server (`llama_cpp.server` with an API key, as in
test_openai_plugin.py). An AOG client on `/aog/v0.2/services/chat` must get AOG shapes
(conversions both ways), OpenAI and Ollama clients their own; the provider's
credentials, set with the management API, must reach the plugin through
`/v1/chat/completions` and appear in no response and not in the gateway's log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
import test_openai_plugin as cloud_server
from conftest import (
    REPO,
    Gateway,
    parse_ndjson,
    parse_sse,
    require_engines,
    shipped_plugins_gateway,
)

from aogstream.convert import FlavorRegistry

CHAT_MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
API = "/aog/v0.2"
CALL_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
OPENAI_LIKE = ("openai", "deepseek", "aliyun", "baidu", "tencent", "openvino")


def chat_doors() -> dict[str, str]:
    """flavor → its chat endpoint path, read from the built-in templates."""
    out = {}
    for name, flavor in FlavorRegistry().builtin().items():
        chat = flavor.services.get("chat")
        for endpoint in (chat.info.get("endpoints") or []) if chat else []:
            method, _, path = str(endpoint).partition(" ")
            if method == "POST":
                out[name] = path
    return out


DOORS = chat_doors()


def test_every_built_in_flavor_has_a_chat_door() -> None:
    assert set(DOORS) == {"aog", *OPENAI_LIKE, "ollama"}, DOORS


# ---- part one: every flavor's door, real llama.cpp ---------------------------------------

@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("api-flavors"),
                                 ["llamacpp-plugin"]) as gateway:
        yield gateway


def door_url(gw: Gateway, flavor: str) -> str:
    return f"{gw.url}{API}/api_flavors/{flavor}{DOORS[flavor]}"


def chat_body(flavor: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": CHAT_MODEL, "messages": FRANCE, "stream": stream}
    if flavor == "ollama":
        body["options"] = {"temperature": 0, "num_predict": 16}
    else:
        body.update(temperature=0, max_tokens=16)
    return body


def answer_text(flavor: str, out: dict[str, Any]) -> str:
    """The assistant's text from a unary answer, checking the flavor's shape on the way."""
    if flavor == "aog":
        assert out["finished"] is True and out["finish_reason"] in ("stop", "length"), out
        assert out["created_at"].endswith("Z") and out["model"] == CHAT_MODEL
        return out["message"]["content"]
    if flavor == "ollama":
        assert out["done"] is True and out["model"] == CHAT_MODEL, out
        return out["message"]["content"]
    assert out["object"] == "chat.completion" and out["model"] == CHAT_MODEL, out
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    return out["choices"][0]["message"]["content"]


def stream_text(flavor: str, r: httpx.Response) -> str:
    """The assistant's text from a streamed answer in the flavor's framing."""
    ctype = r.headers["content-type"]
    if flavor == "ollama":
        assert ctype.startswith("application/x-ndjson"), ctype
        lines = parse_ndjson(r.content)
        assert lines[-1]["done"] is True and not any(x["done"] for x in lines[:-1])
        return "".join(x["message"]["content"] for x in lines)
    assert ctype.startswith("text/event-stream"), ctype
    if flavor == "aog":
        events = parse_sse(r.content)
        assert events[-1]["finished"] is True
        assert not any(e["finished"] for e in events[:-1])
        return "".join(e["message"]["content"] or "" for e in events)
    blocks = [b for b in r.text.split("\n\n") if b]
    assert blocks[-1] == "data: [DONE]", blocks[-3:]  # a proper event, whatever the template
    chunks = [json.loads(b[len("data: "):]) for b in blocks[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


@pytest.mark.parametrize("flavor", sorted(DOORS))
def test_chat_through_each_flavors_door(gw: Gateway, flavor: str) -> None:
    r = httpx.post(door_url(gw, flavor), json=chat_body(flavor, False), timeout=CALL_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["x-aogstream-plugin"] == "llamacpp-plugin"
    assert "Paris" in answer_text(flavor, r.json())

    r = httpx.post(door_url(gw, flavor), json=chat_body(flavor, True), timeout=CALL_TIMEOUT)
    assert r.status_code == 200, r.text
    assert "Paris" in stream_text(flavor, r)


@pytest.mark.parametrize("flavor", OPENAI_LIKE)
def test_the_openai_client_speaks_every_openai_like_flavor(gw: Gateway, flavor: str) -> None:
    """Each OpenAI-compatible flavor's door is what its SDK's base URL points at."""
    base = door_url(gw, flavor).removesuffix("/chat/completions")
    oa = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    r = oa.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, temperature=0,
                                   max_tokens=16)
    assert "Paris" in r.choices[0].message.content
    chunks = list(oa.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, temperature=0,
                                             max_tokens=16, stream=True))
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks)
    with pytest.raises(openai.NotFoundError) as exc:
        oa.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert exc.value.code == "model_not_found" and "no-such-model" in exc.value.message


@pytest.mark.parametrize("flavor", sorted(DOORS))
def test_errors_come_in_each_flavors_shape(gw: Gateway, flavor: str) -> None:
    url = door_url(gw, flavor)
    missing = {**chat_body(flavor, False), "model": "no-such-model"}
    bad_json = b'{"model": '
    for body, status in ((json.dumps(missing).encode(), 404), (bad_json, 400)):
        r = httpx.post(url, content=body, timeout=CALL_TIMEOUT,
                       headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        err = r.json()
        if flavor == "aog":
            assert set(err) == {"business_code", "message"} and err["message"], err
        elif flavor == "ollama":
            assert set(err) == {"error"} and isinstance(err["error"], str), err
        else:
            assert set(err["error"]) == {"message", "type", "code"}, err
    r = httpx.get(url, timeout=10)
    assert r.status_code == 405
    r = httpx.post(f"{gw.url}{API}/api_flavors/{flavor}/no/such/endpoint", json={}, timeout=10)
    assert r.status_code == 404
    text = r.text
    assert DOORS[flavor] in text  # the 404 lists the flavor's real endpoints


def test_bare_openvino_routes_and_the_aog_flavor_listing(gw: Gateway) -> None:
    """openvino's template installs raw routes (`/v3/...`) like openai's and ollama's."""
    r = httpx.post(f"{gw.url}/v3/chat/completions", json=chat_body("openvino", False),
                   timeout=CALL_TIMEOUT)
    assert r.status_code == 200 and "Paris" in answer_text("openvino", r.json()), r.text
    r = httpx.get(f"{gw.url}{API}/api_flavors/aog/models", timeout=10)
    assert CHAT_MODEL in {m["name"] for m in r.json()["models"]}
    r = httpx.get(f"{gw.url}{API}/api_flavors/aliyun/v1/models/{CHAT_MODEL}", timeout=10)
    assert r.json()["id"] == CHAT_MODEL and r.json()["object"] == "model"


# ---- part two: a plugin speaking OpenAI (config_ref openai:chat) ------------------------

PLUGIN = "flavor-openai-plugin"
PROVIDER = f"remote_{PLUGIN}_chat"
KEY = cloud_server.KEY  # the key llama_cpp.server was started with
WRONG = f"sk-wrong-{uuid.uuid4().hex}"
SEEN: list[str] = []  # every response part two received, for the leak check


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloud_server.Cloud]:
    engine_dir = require_engines(["llamacpp-plugin"])
    c = cloud_server.Cloud(engine_dir, tmp_path_factory.mktemp("cloud") / "llama_server.log")
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def fgw(tmp_path_factory: pytest.TempPathFactory, cloud: cloud_server.Cloud
        ) -> Iterator[Gateway]:
    """A gateway whose only chat provider is the OpenAI-flavored plugin."""
    g = Gateway(tmp_path_factory.mktemp("gw-flavor"),
                plugin_dir=REPO / "tests" / "plugins-flavor").start()
    try:
        g.wait_plugin_running(name=PLUGIN)
        yield g
    finally:
        g.stop()


def record(r: httpx.Response) -> httpx.Response:
    SEEN.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    return r


def set_key(g: Gateway, key: str, base_url: str) -> None:
    r = record(httpx.put(f"{g.url}{API}/service_provider", timeout=10.0, json={
        "provider_name": PROVIDER, "auth_key": json.dumps({"api_key": key,
                                                           "base_url": base_url})}))
    assert r.status_code == 200, r.text


def last_invoke(g: Gateway) -> dict[str, Any]:
    found = g.events("invoke")
    assert found, f"the plugin recorded no call; log:\n{g.log_tail()}"
    return found[-1]


def test_credentials_reach_the_plugin_through_the_openai_door(
        fgw: Gateway, cloud: cloud_server.Cloud) -> None:
    oa = openai.OpenAI(base_url=f"{fgw.url}/v1", api_key="the-apps-own-key", max_retries=0,
                       timeout=120)
    # no credentials yet: the plugin refuses, the client raises AuthenticationError
    with pytest.raises(openai.AuthenticationError) as exc:
        oa.chat.completions.create(model="gpt-4o-mini", messages=FRANCE, max_tokens=8)
    assert "PUT /aog/v0.2/service_provider" in exc.value.message
    SEEN.append(str(exc.value.body))

    set_key(fgw, WRONG, cloud.base_url)
    with pytest.raises(openai.AuthenticationError) as exc:
        oa.chat.completions.create(model="gpt-4o-mini", messages=FRANCE, max_tokens=8)
    assert "401" in exc.value.message and WRONG not in exc.value.message
    SEEN.append(str(exc.value.body))

    set_key(fgw, KEY, cloud.base_url)  # llama_cpp.server accepts only this key
    r = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=FRANCE, temperature=0, max_tokens=16)
    record(r.http_response)
    out = r.parse()
    assert "Paris" in out.choices[0].message.content
    assert r.http_response.headers["x-aogstream-provider"] == PROVIDER
    seen = last_invoke(fgw)
    assert seen["auth"] == "set" and seen["mode"] == "unary"


def test_an_aog_client_gets_aog_shapes_from_an_openai_plugin(
        fgw: Gateway, cloud: cloud_server.Cloud) -> None:
    set_key(fgw, KEY, cloud.base_url)
    body = {"messages": FRANCE, "temperature": 0, "max_tokens": 16,
            "top_k": 40, "keep_alive": "5m"}  # AOG fields the openai template drops
    r = record(httpx.post(fgw.service_url("chat"), json=body, timeout=CALL_TIMEOUT))
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) >= {"id", "model", "created_at", "message", "finished", "finish_reason"}
    assert "choices" not in out and "object" not in out
    assert out["finished"] is True and out["finish_reason"] in ("stop", "length")
    assert out["model"] == "gpt-4o-mini" and out["created_at"].endswith("Z")
    assert out["message"]["role"] == "assistant" and "Paris" in out["message"]["content"]
    seen = last_invoke(fgw)  # the plugin got OpenAI's body, not AOG's
    assert seen["mode"] == "unary" and "messages" in seen["keys"]
    assert "max_tokens" in seen["keys"]
    assert "keep_alive" not in seen["keys"] and "top_k" not in seen["keys"], seen

    r = record(httpx.post(fgw.service_url("chat"), json={**body, "stream": True},
                          timeout=CALL_TIMEOUT))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.content)  # strict: every event JSON, so no "[DONE]" left over
    assert len(events) >= 3
    assert all("choices" not in e and e["message"]["role"] == "assistant" for e in events)
    assert not any(e["finished"] for e in events[:-1]) and events[-1]["finished"] is True
    assert "Paris" in "".join(e["message"].get("content") or "" for e in events)
    seen = last_invoke(fgw)
    assert seen["mode"] == "stream" and seen["stream"] is True

    r = record(httpx.post(fgw.service_url("chat"), json={**body, "stream": True},
                          headers={"accept": "application/x-ndjson"}, timeout=CALL_TIMEOUT))
    lines = parse_ndjson(r.content)
    assert lines[-1]["finished"] is True


def test_openai_and_ollama_clients_through_an_openai_plugin(
        fgw: Gateway, cloud: cloud_server.Cloud) -> None:
    set_key(fgw, KEY, cloud.base_url)
    oa = openai.OpenAI(base_url=f"{fgw.url}/v1", api_key="unused", max_retries=0, timeout=120)
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=FRANCE, temperature=0,
                                   max_tokens=16)
    SEEN.append(r.model_dump_json())
    assert "Paris" in r.choices[0].message.content and r.object == "chat.completion"
    chunks = list(oa.chat.completions.create(model="gpt-4o-mini", messages=FRANCE,
                                             temperature=0, max_tokens=16, stream=True))
    SEEN.extend(c.model_dump_json() for c in chunks)
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    ol = ollama.Client(host=fgw.url, timeout=120)
    parts = list(ol.chat(model="gpt-4o-mini", messages=FRANCE, stream=True,
                         options={"temperature": 0, "num_predict": 16}))
    SEEN.extend(p.model_dump_json() for p in parts)
    assert "Paris" in "".join(p.message.content or "" for p in parts)
    assert parts[-1].done is True


def test_the_key_never_leaks(fgw: Gateway) -> None:
    for path in ("/service_provider", f"/service_provider/detail?provider_name={PROVIDER}"):
        record(httpx.get(f"{fgw.url}{API}{path}", timeout=10.0))
    assert len(SEEN) > 5
    for text in SEEN:
        assert KEY not in text and WRONG not in text
    log = fgw.log_file.read_text(errors="replace")
    assert PLUGIN in log  # the plugin's own output lands in this file
    assert KEY not in log and WRONG not in log
