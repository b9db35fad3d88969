"""Tools and streamed usage relayed by the remote openai-plugin, end to end.

Real parts: a gateway subprocess whose only plugin is the shipped openai-plugin (a real
plugin process), its provider key pointing at a small OpenAI-compatible server on
loopback (stdlib `http.server` in this test) that answers every chat with two parallel
tool calls, streamed as fragments or whole; clients are the official `openai` SDK and
raw HTTP on the Ollama and AOG doors.

Proven: `tools`, `tool_choice` ("required" and a named function) and
`parallel_tool_calls` reach the upstream unchanged; the calls come back whole in unary
answers and as `delta.tool_calls` fragments the SDK joins by index in streams, with
finish reason `tool_calls`; `stream_options.include_usage` gives one closing chunk with
the upstream's counts; an Ollama app gets the calls whole with object arguments, and
its tool history (no ids, `tool_name`) reaches the upstream as OpenAI's
(`tool_call_id`, string arguments).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import openai
import pytest
from conftest import Gateway, parse_ndjson, parse_sse
from harness.cloud import loopback_cloud, openai_plugin_gateway

PLUGIN = "openai-plugin"
CHAT = "remote_openai-plugin_chat"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris and Rome?"}]
USAGE = {"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48}
CALLS = [("call_p", '{"city": "Paris"}'), ("call_r", '{"city": "Rome"}')]


def chunk(delta: dict[str, Any] | None, reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [] if delta is None else
            [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}


def streamed_calls() -> list[dict[str, Any]]:
    """Two parallel calls, each name once, the arguments in fragments."""
    out = [chunk({"role": "assistant", "content": None})]
    for i, (cid, args) in enumerate(CALLS):
        out.append(chunk({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                          "function": {"name": "get_weather",
                                                       "arguments": ""}}]}))
        for frag in (args[:5], args[5:11], args[11:]):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}))
    out.append(chunk({}, "tool_calls"))
    return out


class Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that always calls get_weather twice."""

    requests: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}',
                   "application/json")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Upstream.requests.append(body)
        if body.get("stream"):
            events = streamed_calls()
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(chunk(None, usage=USAGE))
            data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            self._send(200, data + b"data: [DONE]\n\n", "text/event-stream")
            return
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": "get_weather",
                                                         "arguments": args}}
            for cid, args in CALLS]}
        self._send(200, json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-4o-mini", "usage": USAGE,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with loopback_cloud(Upstream) as url:
        yield url


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    with openai_plugin_gateway(tmp_path_factory.mktemp("plugins-openai-tools"),
                               tmp_path_factory.mktemp("gw-openai-tools"), upstream,
                               "sk-loopback") as g:
        yield g


@pytest.fixture
def sdk(gw: Gateway) -> Iterator[openai.OpenAI]:
    Upstream.requests.clear()
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", timeout=60,
                       max_retries=0) as c:
        yield c


def test_unary_tool_calls_pass_through(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=[WEATHER],
                                      tool_choice="required", parallel_tool_calls=True)
    sent = Upstream.requests[-1]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is True
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert got == [(cid, "get_weather", args) for cid, args in CALLS]
    assert out.usage.total_tokens == USAGE["total_tokens"]


def test_streamed_tool_calls_and_usage(sdk: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(sdk.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=[WEATHER], tool_choice=named, stream=True,
        stream_options={"include_usage": True}))
    assert Upstream.requests[-1]["tool_choice"] == named
    calls: dict[int, dict[str, str]] = {}
    for c in chunks[:-1]:
        assert c.usage is None
        for d in c.choices[0].delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += d.id or ""
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
    assert [(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(cid, "get_weather", args) for cid, args in CALLS]
    reasons = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert reasons == ["tool_calls"]
    assert not chunks[-1].choices
    assert chunks[-1].usage.model_dump() == {**USAGE, "completion_tokens_details": None,
                                             "prompt_tokens_details": None}


def test_ollama_app_gets_whole_calls_and_sends_history(gw: Gateway) -> None:
    Upstream.requests.clear()
    with httpx.Client(timeout=60) as c:
        r = c.post(f"{gw.url}/api/chat", json={
            "model": "gpt-4o-mini", "messages": ASK, "tools": [WEATHER]})
        assert r.status_code == 200, r.text
        lines = parse_ndjson(r.content)
        calls = [tc for line in lines for tc in line["message"].get("tool_calls") or []]
        assert calls == [{"function": {"name": "get_weather", "arguments": json.loads(a)}}
                         for _, a in CALLS]
        assert lines[-1]["done"] is True and lines[-1]["message"].get("tool_calls")

        r = c.post(f"{gw.url}/api/chat", json={
            "model": "gpt-4o-mini", "stream": False, "tools": [WEATHER], "messages": [
                *ASK,
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_name": "get_weather", "content": "Sunny"}]})
        assert r.status_code == 200, r.text
        assert r.json()["message"]["tool_calls"][1]["function"]["arguments"] == {"city": "Rome"}
        sent = Upstream.requests[-1]["messages"]
        assert sent[1]["tool_calls"] == [{"id": "call_0", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
        assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == "call_0"


def test_aog_door_streams_tool_call_deltas(gw: Gateway) -> None:
    r = httpx.post(gw.service_url("chat"), timeout=60, json={
        "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "stream": True})
    assert r.status_code == 200, r.text
    events = parse_sse(r.content)
    assert events[-1]["finished"] is True and events[-1]["finish_reason"] == "tool_calls"
    assert events[-1]["usage"] == USAGE
    frags = [tc for e in events for tc in e["message"].get("tool_calls") or []]
    assert {f["index"] for f in frags} == {0, 1}
