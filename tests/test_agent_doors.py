"""`/v1/responses` and `/v1/messages` driven by the official `openai` and `anthropic`
SDKs, against a real gateway serving the real llama.cpp engine (SmolLM2).

Real parts: the gateway subprocess with the shipped llamacpp-plugin and its engine, the
SDKs over loopback HTTP, raw httpx for the wire checks. Proven: both doors answer plain
and streamed calls the SDKs parse (Responses' typed events with rising sequence numbers
ending in `response.completed` with usage; Anthropic's message_start ... message_stop
with input and output tokens); SSE frames carry `event:` lines equal to the JSON type
and no `[DONE]`; `stream` is read from the body even with `Accept: application/json`;
`x-api-key` and both `anthropic-version`s are accepted, and `?beta=true` ignored;
count_tokens answers `input_tokens`; bad requests get each API's error shape (the SDKs
raise their own exception types), `previous_response_id` is refused with the way out;
a named tool choice makes llama.cpp call the tool through both doors (a `tool_use`
block with its parsed input; streamed `function_call` arguments). (That a hang-up
cancels the provider call is proven in test_agent_doors_tools, where the provider's
stream can be watched.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway, shipped_plugins_gateway

CHAT_MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."
TIMEOUT = httpx.Timeout(120.0, connect=5.0)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("agent-doors"),
                                 ["llamacpp-plugin"]) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def an(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="not-needed", max_retries=0,
                               timeout=120)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; asserts every event has both lines."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


# ---- Responses ------------------------------------------------------------------------

def test_responses_create_answers_with_text_and_usage(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model=CHAT_MODEL, instructions=SYSTEM, input=QUESTION,
                            max_output_tokens=30, temperature=0)
    assert "Paris" in r.output_text
    assert r.status in ("completed", "incomplete") and r.object == "response"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.model == CHAT_MODEL


def test_responses_input_items_are_a_conversation(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model=CHAT_MODEL, max_output_tokens=30, temperature=0, input=[
        {"role": "developer", "content": SYSTEM},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": QUESTION}]}])
    assert "Paris" in r.output_text


def test_responses_stream_typed_events_in_order(oa: openai.OpenAI) -> None:
    events = list(oa.responses.create(model=CHAT_MODEL, instructions=SYSTEM, input=QUESTION,
                                      temperature=0, max_output_tokens=30, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done",
                          "response.completed" if kinds[-1] == "response.completed"
                          else "response.incomplete"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 2 and "Paris" in "".join(deltas)  # token by token
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "".join(deltas)
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


def test_responses_stream_wire_shape(gw: Gateway) -> None:
    """`event:` lines equal the type, no `[DONE]`, `stream` read from the body although
    the client accepts JSON (as the SDKs send it)."""
    r = httpx.post(f"{gw.url}/v1/responses", timeout=TIMEOUT,
                   headers={"Accept": "application/json"},
                   json={"model": CHAT_MODEL, "input": "Hi", "max_output_tokens": 4,
                         "stream": True, "store": False, "client_metadata": {"x": "y"}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in r.text
    events = sse_events(r.text)
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["response"]["id"].startswith("resp_")
    assert isinstance(events[0][1]["response"]["created_at"], int)


def test_responses_refuses_previous_response_id(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oa.responses.create(model=CHAT_MODEL, input="Hi", previous_response_id="resp_x")
    assert exc.value.param == "previous_response_id"
    assert "store" in exc.value.message and "input" in exc.value.message


def test_responses_errors_in_openai_shape(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        oa.responses.create(model="no-such-model", input="Hi")
    assert "no-such-model" in nf.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        oa.responses.create(model=CHAT_MODEL, input=[{"type": "item_reference", "id": "x"}])
    assert "item_reference" in bad.value.message


# ---- Anthropic Messages ---------------------------------------------------------------

def test_messages_create_answers_with_text_and_usage(an: anthropic.Anthropic) -> None:
    m = an.messages.create(model=CHAT_MODEL, max_tokens=30, system=SYSTEM,
                           extra_body={"temperature": 0},
                           messages=[{"role": "user", "content": QUESTION}])
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and "Paris" in m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_messages_stream_events_in_order(an: anthropic.Anthropic) -> None:
    with an.messages.stream(model=CHAT_MODEL, max_tokens=30, extra_body={"temperature": 0}, system=[
            {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
            ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events if e.type in (
        "message_start", "content_block_start", "content_block_stop", "message_delta",
        "message_stop")]
    assert kinds == ["message_start", "content_block_start", "content_block_stop",
                     "message_delta", "message_stop"]
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) > 2 and "Paris" in "".join(deltas)
    assert final.content[0].text == "".join(deltas)
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_messages_wire_shape_as_claude_code_sends_it(gw: Gateway) -> None:
    """`?beta=true`, x-api-key, version 2023-06-01, beta flags, a system entry inside
    messages, thinking and unknown fields: a stream with `event:` lines, no `[DONE]`."""
    r = httpx.post(f"{gw.url}/v1/messages?beta=true", timeout=TIMEOUT, headers={
        "x-api-key": "anything", "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "Accept": "application/json"}, json={
        "model": CHAT_MODEL, "max_tokens": 5, "stream": True,
        "system": [{"type": "text", "text": SYSTEM}],
        "messages": [{"role": "user", "content": "Hi"},
                     {"role": "system", "content": "Be brief."}],
        "thinking": {"type": "adaptive"}, "metadata": {"user_id": "{}"},
        "context_management": {"edits": []}, "output_config": {"effort": "high"}})
    assert r.status_code == 200, r.text
    assert "[DONE]" not in r.text
    events = sse_events(r.text)
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]
    assert start["type"] == "message_start"
    assert isinstance(start["message"]["usage"]["input_tokens"], int)
    assert events[-2][1]["type"] == "message_delta"
    assert isinstance(events[-2][1]["usage"]["output_tokens"], int)
    assert events[-1][1] == {"type": "message_stop"}


def test_messages_version_2026_and_bearer_auth(gw: Gateway) -> None:
    r = httpx.post(f"{gw.url}/v1/messages", timeout=TIMEOUT, headers={
        "Authorization": "Bearer x", "anthropic-version": "2026-10-21"},
        json={"model": CHAT_MODEL, "max_tokens": 5,
              "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"


def test_count_tokens(an: anthropic.Anthropic) -> None:
    short = an.messages.count_tokens(model=CHAT_MODEL,
                                     messages=[{"role": "user", "content": "Hi"}])
    long = an.messages.count_tokens(model=CHAT_MODEL, system=SYSTEM,
                                    messages=[{"role": "user", "content": QUESTION * 20}])
    assert 0 < short.input_tokens < long.input_tokens


def test_messages_errors_in_anthropic_shape(gw: Gateway, an: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        an.messages.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}],
                           max_tokens=None)  # type: ignore[arg-type]
    assert "max_tokens" in bad.value.message
    with pytest.raises(anthropic.NotFoundError) as nf:
        an.messages.create(model="no-such-model", max_tokens=5,
                           messages=[{"role": "user", "content": "Hi"}])
    assert "no-such-model" in nf.value.message
    r = httpx.post(f"{gw.url}/v1/messages", content=b"{not json", timeout=10)
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    r = httpx.get(f"{gw.url}/v1/messages", timeout=10)
    assert r.status_code == 405 and r.json()["type"] == "error"


# ---- tools on llama.cpp (its chat format calls tools on ChatML models) ---------------

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK = "What is the weather in Paris?"


def test_messages_named_tool_on_llamacpp(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model=CHAT_MODEL, max_tokens=64, extra_body={"temperature": 0},
        tools=[{"name": "get_weather", "description": "The current weather in a city",
                "input_schema": WEATHER}],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": ASK}])
    assert m.stop_reason == "tool_use", m
    [block] = [b for b in m.content if b.type == "tool_use"]
    assert block.name == "get_weather" and "city" in block.input and block.id


def test_responses_streamed_tool_call_on_llamacpp(oa: openai.OpenAI) -> None:
    events = list(oa.responses.create(
        model=CHAT_MODEL, input=ASK, temperature=0, max_output_tokens=64, stream=True,
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER,
                "description": "The current weather in a city"}],
        tool_choice={"type": "function", "name": "get_weather"}))
    assert any(e.type == "response.function_call_arguments.delta" for e in events)
    final = events[-1]
    assert final.type == "response.completed"
    [call] = [o for o in final.response.output if o.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    assert final.response.usage.input_tokens > 0
