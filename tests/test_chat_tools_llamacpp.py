"""Tool calling and streamed usage through the OpenAI door, on the real llama.cpp engine.

Real parts: a gateway subprocess serving only llamacpp-plugin with its installed engine
(llama_cpp.server, SmolLM2-135M-Instruct), the official `openai` Python SDK over
loopback HTTP, and raw NDJSON over the Ollama and AOG doors.

Proven: `tools` and `tool_choice` (a named function, "required", "auto", "none") reach
the engine, whose calls come back as `message.tool_calls` (unary) and as
`delta.tool_calls` fragments the SDK joins by index (streamed), with finish reason
`tool_calls`; a tool result sent back is answered; `stream_options.include_usage`
gives the closing usage chunk (`choices: []`) with the engine's own counts, and every
other chunk carries `usage: null`; the AOG door's last event carries the same counts;
bad tool declarations are clear 400s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import Gateway, parse_ndjson, parse_sse, shipped_plugins_gateway

PLUGIN = "llamacpp-plugin"
MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                   "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("gw-tools"), [PLUGIN]) as g:
        yield g


@pytest.fixture(scope="module")
def sdk(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", timeout=120,
                       max_retries=0) as c:
        yield c


def arguments(call: object) -> dict[str, object]:
    args = json.loads(call.function.arguments)  # type: ignore[attr-defined]
    assert isinstance(args, dict)
    return args


def test_named_tool_choice_returns_a_tool_call(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **GREEDY)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    assert "city" in arguments(calls[0])  # the grammar follows the schema
    assert out.usage and out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0


def test_required_picks_one_of_several_tools(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME],
                                      tool_choice="required", max_tokens=64, **GREEDY)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name in ("get_weather", "get_time")
    arguments(choice.message.tool_calls[0])


def test_auto_and_none_answer_with_text_or_calls(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                      tool_choice="auto", max_tokens=48, **GREEDY)
    msg = out.choices[0].message
    if msg.tool_calls:  # the model decides; either way the answer is well formed
        assert out.choices[0].finish_reason == "tool_calls"
        assert msg.tool_calls[0].function.name == "get_weather"
    else:
        assert msg.content
    out = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                      tool_choice="none", max_tokens=16, **GREEDY)
    assert not out.choices[0].message.tool_calls and out.choices[0].message.content


def test_streamed_tool_call_arrives_as_deltas_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=64,
        stream=True, stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    usage_chunks = [c for c in chunks if not c.choices]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    usage = usage_chunks[0].usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    deltas = [tc for c in chunks[:-1] for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) >= 2, "arguments should arrive in several fragments"
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    args = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert "city" in args
    reasons = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert reasons == ["tool_calls"]


def test_streamed_auto_choice_and_plain_usage(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=32,
        stream=True, **GREEDY))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    # no include_usage: no usage-only chunk
    assert all(c.choices for c in chunks)
    # a plain streamed chat with include_usage: the engine's counts, as unary reports them
    unary = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, **GREEDY)
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.prompt_tokens == unary.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content


def test_a_tool_result_is_answered(sdk: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    out = sdk.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER],
                                      tool_choice="none", max_tokens=24, **GREEDY)
    assert out.choices[0].message.content


def test_bad_tool_requests_are_clear_400s(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                    tool_choice={"type": "function",
                                                 "function": {"name": "nope"}})
    assert "nope" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=ASK,
                                    tools=[{"type": "code_interpreter"}])  # type: ignore[list-item]
    assert "function" in str(err.value)


def test_ollama_and_aog_doors_carry_tools(gw: Gateway) -> None:
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{gw.url}/api/chat", json={
            "model": MODEL, "messages": ASK, "tools": [WEATHER], "stream": True,
            "options": {"temperature": 0, "num_predict": 64}})
        # Ollama has no tool_choice: the model decides; the lines are well formed
        assert r.status_code == 200, r.text
        lines = parse_ndjson(r.content)
        assert lines[-1]["done"] is True
        for line in lines:
            for call in line["message"].get("tool_calls") or []:
                assert isinstance(call["function"]["arguments"], dict)  # Ollama: an object
        r = c.post(gw.service_url("chat"), json={
            "model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
            "stream": True, "max_tokens": 64, "temperature": 0})
        assert r.status_code == 200, r.text
        events = parse_sse(r.content)
        last = events[-1]
        assert last["finished"] is True and last["finish_reason"] == "tool_calls"
        assert last["usage"]["prompt_tokens"] > 0
        calls = [tc for e in events for tc in e["message"].get("tool_calls") or []]
        assert calls[0]["function"]["name"] == "get_weather"

