"""Tool calling through `/v1/responses` and `/v1/messages`, with the official SDKs.

Real parts: a gateway whose only chat provider is the shipped openai-plugin (a real
plugin process), relaying to an OpenAI-compatible server on loopback that emits tool
calls the way OpenAI's API does (`tool_calls` in the message, or streamed as
`delta.tool_calls` fragments joined by `index`, then `finish_reason: "tool_calls"` and
a usage chunk); the `openai` and `anthropic` SDKs over loopback HTTP. The loopback
server is scripted (its answer depends on the request), because a 135M local model
cannot be relied on to call a tool; it records every request it receives.

Proven: tools declared in each API's shape reach the provider in chat's shape
(Responses' flat tools, Anthropic's `input_schema`), with the tool choice mapped
(a named function; Anthropic's `any` as `required`, `disable_parallel_tool_use` as
`parallel_tool_calls: false`); the model's calls come back as
`function_call` items (Responses) and `tool_use` blocks with a parsed `input`
(Anthropic), unary and streamed (argument fragments as
`response.function_call_arguments.delta` / `input_json_delta`, text before a call
closed first, parallel calls each in their own item or block); stop reasons and the
engine's own usage counts are reported; and a replayed tool loop (the call, then its
result) reaches the provider as an assistant `tool_calls` turn and a `tool` message
with the same call id. With client keys set (`AOGSTREAM_API_KEYS`), both doors take
the key as `Authorization: Bearer` (the SDKs) or `x-api-key` (Claude Code), and refuse
a request without one in their own error shape. Streams are flushed as they come (the
first text event arrives while the provider is still generating) and a client that
hangs up closes the provider's stream within seconds, on both doors; a provider that
fails after the 200 ends the stream with the API's own error event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway
from harness.cloud import loopback_cloud, openai_plugin_gateway

PLUGIN = "openai-plugin"
CHAT = "remote_openai-plugin_chat"
MODEL = "gpt-4o-mini"
KEY = f"sk-test-{uuid.uuid4().hex}"  # the loopback server's, held by the provider row
CLIENT_KEY = f"sk-client-{uuid.uuid4().hex}"  # the gateway's own (AOGSTREAM_API_KEYS)
PROMPT_TOKENS, COMPLETION_TOKENS = 42, 7
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"]}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}}


def scripted_answer(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(text, tool calls) the scripted model answers with: the tool result's summary
    after a tool message; else, with tools, a call to the first tool (both tools when
    the user says "both"; text first when it says "first say")."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return f"The tool said: {last.get('content')}", []
    tools = body.get("tools") or []
    if not tools:
        return "Hello there.", []
    user = json.dumps(last.get("content"))
    names = [t["function"]["name"] for t in tools]
    calls = [{"id": "call_weather1", "name": names[0], "arguments": '{"city": "Paris"}'}]
    if "both" in user and len(names) > 1:
        calls.append({"id": "call_time2", "name": names[1], "arguments": '{"zone": "CET"}'})
    return ("Let me check." if "first say" in user else ""), calls


class ToolCloud(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering with `scripted_answer`."""

    received: list[dict[str, Any]] = []
    hangups: list[float] = []  # when a streamed answer's reader went away

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._json(401, {"error": {"message": "bad key", "type": "auth"}})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ToolCloud.received.append(body)
        text, calls = scripted_answer(body)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                 "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
        reason = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                    "name": c["name"], "arguments": c["arguments"]}} for c in calls]
            self._json(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                             "model": MODEL, "choices": [{"index": 0, "message": message,
                                                          "finish_reason": reason}],
                             "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": MODEL, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}], **extra}
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        said = json.dumps(body["messages"][-1].get("content"))
        if "slowly" in said:
            self._slow_stream(chunk)
            return
        if "break off" in said:  # a cloud that drops the stream half-way
            chunk({"content": "Half "})
            return
        for word in text.split(" ") if text else []:
            chunk({"content": word + " "})
        for i, call in enumerate(calls):
            chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                   "function": {"name": call["name"], "arguments": ""}}]})
            args = call["arguments"]
            for part in (args[:5], args[5:]):  # fragments of one JSON text
                chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
        chunk({}, reason)
        last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": MODEL, "choices": [], "usage": usage}
        self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
        self.wfile.flush()


    def _slow_stream(self, chunk: Any) -> None:
        """A token every 50 ms for up to a minute, until the reader hangs up (noted in
        `hangups`): what a long generation looks like to the gateway."""
        try:
            for _ in range(1200):
                chunk({"content": "word "})
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            ToolCloud.hangups.append(time.monotonic())


@pytest.fixture(scope="module")
def cloud() -> Iterator[str]:
    with loopback_cloud(ToolCloud) as url:
        yield url


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, cloud: str) -> Iterator[Gateway]:
    with openai_plugin_gateway(tmp_path_factory.mktemp("plugins-tools"),
                               tmp_path_factory.mktemp("gw-tools"), cloud, KEY,
                               {"AOGSTREAM_API_KEYS": CLIENT_KEY}) as g:
        yield g


@pytest.fixture(scope="module")
def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def an(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=60)


def last_request() -> dict[str, Any]:
    assert ToolCloud.received, "the loopback server received no request"
    return ToolCloud.received[-1]


RESPONSES_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather of a city",
     "parameters": WEATHER},
    {"type": "function", "name": "get_time", "parameters": TIME, "strict": False},
    {"type": "web_search", "external_web_access": False},  # as Codex sends: skipped
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER,
     "cache_control": {"type": "ephemeral"}},
    {"name": "get_time", "input_schema": TIME, "eager_input_streaming": True},
]


# ---- Responses ------------------------------------------------------------------------

def test_responses_tools_reach_the_provider_in_chat_shape(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model=MODEL, input="Weather in Paris?", tools=RESPONSES_TOOLS,
                            tool_choice={"type": "function", "name": "get_weather"},
                            parallel_tool_calls=False)
    sent = last_request()
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather",
                                          "description": "Weather of a city",
                                          "parameters": WEATHER}},
        {"type": "function", "function": {"name": "get_time", "parameters": TIME,
                                          "strict": False}}]
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and r.status == "completed"
    assert calls[0].name == "get_weather" and calls[0].call_id == "call_weather1"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("fc_")
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_responses_streams_text_then_calls(oa: openai.OpenAI) -> None:
    events = list(oa.responses.create(model=MODEL, input="first say hi, then get both",
                                      tools=RESPONSES_TOOLS, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e for e in events if e.type == "response.output_item.added"]
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [e.item.type for e in added] == ["message", "function_call", "function_call"]
    assert [e.output_index for e in added] == [0, 1, 2] == [e.output_index for e in done]
    # each item is closed before the next opens
    items = [(e.type.rsplit(".", 1)[1], e.output_index) for e in events
             if e.type in ("response.output_item.added", "response.output_item.done")]
    assert items == [("added", 0), ("done", 0), ("added", 1), ("done", 1), ("added", 2),
                     ("done", 2)]
    frags = [e.delta for e in events if e.type == "response.function_call_arguments.delta"
             and e.output_index == 1]
    assert len(frags) == 2 and json.loads("".join(frags)) == {"city": "Paris"}
    final = events[-1]
    assert final.type == "response.completed"
    out = final.response.output
    assert out[0].type == "message" and out[0].content[0].text.strip() == "Let me check."
    assert [(o.name, json.loads(o.arguments)) for o in out[1:]] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    assert final.response.usage.output_tokens == COMPLETION_TOKENS


def test_responses_tool_loop_replays_the_history(oa: openai.OpenAI) -> None:
    """The client runs the tool and sends everything again (store false, no id)."""
    r = oa.responses.create(model=MODEL, store=False, tools=RESPONSES_TOOLS, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_weather1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_weather1", "output": "sunny, 21 C"}])
    sent = last_request()["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == "call_weather1"
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                     "arguments": '{"city": "Paris"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_weather1",
                       "content": "sunny, 21 C"}
    assert r.output_text == "The tool said: sunny, 21 C"


# ---- Anthropic ------------------------------------------------------------------------

def test_messages_tools_give_tool_use_blocks(an: anthropic.Anthropic) -> None:
    m = an.messages.create(model=MODEL, max_tokens=100, tools=ANTHROPIC_TOOLS,
                           tool_choice={"type": "any", "disable_parallel_tool_use": True},
                           messages=[{"role": "user", "content": "Weather in Paris?"}])
    sent = last_request()
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER}}
    assert m.stop_reason == "tool_use"
    assert [b.type for b in m.content] == ["tool_use"]
    block = m.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.id == "call_weather1" and block.input == {"city": "Paris"}
    assert (m.usage.input_tokens, m.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_messages_stream_text_then_parallel_tool_use(an: anthropic.Anthropic) -> None:
    with an.messages.stream(model=MODEL, max_tokens=100, tools=ANTHROPIC_TOOLS,
                            messages=[{"role": "user",
                                       "content": "first say hi, then get both"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [(e.index, e.content_block.type) for e in events
              if e.type == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert stops == [0, 1, 2]
    json_parts = [e.delta.partial_json for e in events if e.type == "content_block_delta"
                  and e.delta.type == "input_json_delta" and e.index == 1]
    assert len(json_parts) == 2
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "text" and final.content[0].text.strip() == "Let me check."
    assert [(b.name, b.input) for b in final.content[1:]] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    assert final.usage.output_tokens == COMPLETION_TOKENS


def test_messages_tool_loop_sends_results_before_text(an: anthropic.Anthropic) -> None:
    m = an.messages.create(model=MODEL, max_tokens=100, tools=ANTHROPIC_TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny",
             "cache_control": {"type": "ephemeral"}}]}])
    sent = last_request()["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == "Checking."
    assert sent[1]["tool_calls"][0]["id"] == "toolu_01"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny"}
    assert m.content[0].type == "text" and m.content[0].text == "The tool said: sunny"
    assert m.stop_reason == "end_turn"


# ---- client keys ----------------------------------------------------------------------

def test_client_keys_in_either_header_and_refusals_in_each_shape(gw: Gateway) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(f"{gw.url}/v1/messages?beta=true", json=body, timeout=30,
                   headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "Hello there.", r.text
    r = httpx.post(f"{gw.url}/v1/messages", json=body, timeout=30,
                   headers={"x-api-key": "sk-wrong"})
    assert r.status_code == 401
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.url}/v1/responses", json={"model": MODEL, "input": "Hi"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            **body)


# ---- streaming properties -------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": MODEL, "input": "count slowly", "stream": True}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 5000, "stream": True,
                      "messages": [{"role": "user", "content": "count slowly"}]})])
def test_first_event_at_once_and_hanging_up_stops_the_provider(
        gw: Gateway, path: str, body: dict[str, Any]) -> None:
    """The provider streams for a minute; the client reads the first text event, which
    must come while the provider is still generating (flushed, not buffered), then hangs
    up: the provider's connection is closed within seconds (the gateway cancelled the
    plugin's call, which closed its upstream stream)."""
    before = len(ToolCloud.hangups)
    t0 = time.monotonic()
    with httpx.stream("POST", f"{gw.url}{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
        assert r.status_code == 200
        for raw in r.iter_raw():
            if b"output_text.delta" in raw or b"text_delta" in raw:
                break
    left = time.monotonic()
    assert left - t0 < 30  # the whole answer would take 60 s
    deadline = left + 15
    while len(ToolCloud.hangups) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ToolCloud.hangups) > before, "the provider kept streaming after the hang-up"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": MODEL, "input": "break off", "stream": True}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 50, "stream": True,
                      "messages": [{"role": "user", "content": "break off"}]})])
def test_a_stream_that_fails_half_way_ends_with_the_apis_error_event(
        gw: Gateway, path: str, body: dict[str, Any]) -> None:
    """After the 200 has gone out, a provider failure ends the stream with the API's own
    terminal error event (`response.failed`; Anthropic's `error`), saying what failed."""
    r = httpx.post(f"{gw.url}{path}", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200
    blocks = [b.split("\n") for b in r.text.split("\n\n") if b.strip()]
    events = [json.loads(lines[1][len("data: "):]) for lines in blocks]
    assert any("Half" in json.dumps(e) for e in events)  # the text before the failure
    last = events[-1]
    if path == "/v1/responses":
        assert last["type"] == "response.failed"
        assert last["response"]["status"] == "failed"
        assert "finish reason" in last["response"]["error"]["message"]
        assert not any(e["type"] == "response.completed" for e in events)
    else:
        assert last["type"] == "error" and last["error"]["type"] == "api_error"
        assert "finish reason" in last["error"]["message"]
        assert not any(e["type"] == "message_stop" for e in events)
