"""Unit tests of the Responses and Anthropic translators (aogstream.convert.responses,
.anthropic, .formats): pure functions and per-stream state machines, fed the bodies
and chat chunks the spec and real clients (Codex, Claude Code, the SDKs) send.

Nothing is faked but the input dicts. Proven: each request maps onto the chat form as
the spec's mapping table says (system prompts, content parts and images, tool
declarations and choices, replayed calls merged into one assistant turn, tool results
before the user's text, Anthropic `thinking` as the `reasoning_effort` whose budget the
upstream translator sends back); what cannot be honoured is refused naming the field; chat
streams become the exact event sequences (counters, closing one item or block before
the next, terminal events for stop/length/failure) with the engine's usage or an
estimate; unary answers convert too; the CPA format names are the ones exported.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aogstream.convert import anthropic, formats, responses
from aogstream.convert.chat_form import InvalidRequest
from aogstream.convert.chat_tools import estimate_prompt_tokens as prompt_tokens


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "chat.completion.chunk",
                           "choices": [] if delta is None and finish is None else
                           [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def call_start(i: int, call_id: str, name: str) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]})


def call_args(i: int, frag: str) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]})


USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def run(stream: Any, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    return events + stream.finish()


# ---- format names -----------------------------------------------------------------------

def test_cpa_format_names() -> None:
    assert formats.FORMATS == ("openai", "openai-response", "claude", "gemini")
    with pytest.raises(formats.UnsupportedFormat, match="codex"):
        formats.request_to_chat("codex", {})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert formats.request_to_chat("openai", body) is body
    for bad, param in (({"model": 3, "input": "x"}, "model"),
                       ({"stream": "yes", "input": "x"}, "stream")):
        with pytest.raises(InvalidRequest) as exc:
            formats.request_to_chat("openai-response", bad)
        assert exc.value.param == param


# ---- Responses requests -------------------------------------------------------------------

def test_responses_string_input_and_instructions() -> None:
    chat = responses.request_to_chat({"model": "m", "input": "Hi", "instructions": "Be kind",
                                      "max_output_tokens": 9, "temperature": 0.5,
                                      "stream": True, "store": True, "reasoning": {}})
    assert chat == {"model": "m", "messages": [{"role": "system", "content": "Be kind"},
                                               {"role": "user", "content": "Hi"}],
                    "max_tokens": 9, "temperature": 0.5, "stream": True,
                    "stream_options": {"include_usage": True}}


def test_responses_items_as_codex_replays_them() -> None:
    chat = responses.request_to_chat({"input": [
        {"type": "message", "role": "developer", "id": "msg_1",
         "content": [{"type": "input_text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "encrypted_content": "xx"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok",
                                           "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "c1",
         "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x":1}'},
        {"type": "function_call_output", "id": "o1", "call_id": "c1", "output": "r1"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "r2"}]},
    ]})
    assert chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g",
                                                          "arguments": '{"x":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"}]


def test_responses_images_become_image_url_parts() -> None:
    chat = responses.request_to_chat({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}]})
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                            "detail": "low"}}]
    with pytest.raises(InvalidRequest, match="file ids"):
        responses.request_to_chat({"input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file_1"}]}]})


def test_responses_tools_flattened_and_builtins_skipped() -> None:
    body = {"input": "x", "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False, "tools": [
                {"type": "function", "name": "f", "parameters": {"type": "object"},
                 "strict": False},
                {"type": "web_search", "external_web_access": False},
                {"type": "namespace", "name": "ns", "description": "d",
                 "tools": [{"type": "function", "name": "g", "description": "G"}]}]}
    chat = responses.request_to_chat(body)
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                          "strict": False}},
        {"type": "function", "function": {"name": "g", "description": "G", "parameters": {
            "type": "object", "properties": {}}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assert responses.namespaces(body) == {"g": "ns"}
    body["tool_choice"] = {"type": "allowed_tools", "mode": "required", "tools": []}
    assert responses.request_to_chat(body)["tool_choice"] == "required"


def test_responses_refusals_name_the_field() -> None:
    for body, param in (({"input": "x", "previous_response_id": "resp_1"},
                         "previous_response_id"),
                        ({"input": "x", "conversation": "c"}, "conversation"),
                        ({"input": [{"type": "item_reference", "id": "i"}]}, "input"),
                        ({"input": [{"type": "mystery"}]}, "input"),
                        ({"input": [{"type": "function_call_output", "output": "x"}]},
                         "input"),
                        ({}, "input"),
                        ({"input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
                        ({"input": "x", "tool_choice": "required"}, "tool_choice")):
        with pytest.raises(InvalidRequest) as exc:
            responses.request_to_chat(body)
        assert exc.value.param == param, body


def test_responses_json_schema_format() -> None:
    chat = responses.request_to_chat({"input": "x", "text": {"format": {
        "type": "json_schema", "name": "S", "schema": {"type": "object"}, "strict": True}}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "S", "schema": {"type": "object"}, "strict": True}}


# ---- Responses answers --------------------------------------------------------------------

def test_responses_stream_text_then_call_sequence() -> None:
    s = responses.ResponsesStream({"input": "x"}, "m", prompt_estimate=3)
    events = run(s, [chunk({"role": "assistant", "content": ""}), chunk({"content": "He"}),
                     chunk({"content": "llo"}), call_start(0, "call_1", "f"),
                     call_args(0, '{"a"'), call_args(0, ":1}"), chunk({}, "tool_calls"),
                     chunk(usage=USAGE)])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    assert events[6]["text"] == "Hello"
    assert events[9]["output_index"] == 1 and events[9]["item"]["arguments"] == ""
    assert events[12]["arguments"] == '{"a":1}'
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0] == {"type": "output_text", "text": "Hello",
                                                "annotations": [], "logprobs": []}
    assert final["output"][1]["call_id"] == "call_1"
    assert final["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": 5,
                              "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 16}


def test_responses_text_after_a_call_is_an_item_of_its_own() -> None:
    s = responses.ResponsesStream({"input": "x"}, "m")
    events = run(s, [chunk({"content": "A"}), call_start(0, "c", "f"), call_args(0, "{}"),
                     chunk({"content": "B"}), chunk({}, "stop")])
    output = events[-1]["response"]["output"]
    assert [(o["type"], o.get("content", [{}])[0].get("text")) for o in output] == [
        ("message", "A"), ("function_call", None), ("message", "B")]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] \
        == [0, 1, 2]


def test_responses_stream_length_is_incomplete_and_usage_estimated() -> None:
    s = responses.ResponsesStream({"input": "x"}, "m", prompt_estimate=7)
    events = run(s, [chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, "length")])
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["usage"]["input_tokens"] == 7
    assert final["response"]["usage"]["output_tokens"] == 2


def test_responses_stream_failure_is_response_failed() -> None:
    s = responses.ResponsesStream({"input": "x"}, "m")
    s.start()
    s.feed(chunk({"content": "a"}))
    [failed] = s.fail("engine crashed")
    assert failed["type"] == "response.failed" and failed["sequence_number"] == 5
    assert failed["response"]["error"] == {"code": "server_error", "message": "engine crashed"}


def test_responses_namespace_calls_carry_their_namespace() -> None:
    body = {"input": "x", "tools": [{"type": "namespace", "name": "ns", "tools": [
        {"type": "function", "name": "g"}]}]}
    s = responses.ResponsesStream(body, "m")
    events = run(s, [call_start(0, "c", "g"), call_args(0, "{}"), chunk({}, "tool_calls")])
    assert events[-2]["item"]["namespace"] == "ns"


def test_responses_unary_answer() -> None:
    chat = {"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Sure.", "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]}}], "usage": USAGE}
    out = responses.response_from_chat(chat, {"input": "x", "tools": []})
    assert out["object"] == "response" and out["status"] == "completed"
    assert out["id"].startswith("resp_") and out["store"] is False
    assert out["output"][0]["content"][0]["text"] == "Sure."
    assert out["output"][1] == {"id": out["output"][1]["id"], "type": "function_call",
                                "status": "completed", "call_id": "call_9", "name": "f",
                                "arguments": "{}"}
    assert out["usage"]["total_tokens"] == 16


# ---- Anthropic requests -------------------------------------------------------------------

def test_anthropic_request_as_claude_code_sends_it() -> None:
    chat = anthropic.request_to_chat({
        "model": "claude-x", "max_tokens": 64000, "stream": True,
        "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "B"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "system", "content": "mid"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": 1}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "after"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "data",
                 "is_error": False, "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Read", "description": "d", "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}}],
        "thinking": {"type": "adaptive"}, "metadata": {"user_id": "{}"},
        "context_management": {"edits": []}, "output_config": {"effort": "high"}})
    assert chat["messages"] == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "mid"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "Read", "arguments": '{"p":1}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "data"},  # before the text
        {"role": "user", "content": "after"}]
    assert chat["tools"][0]["function"]["parameters"]["$schema"].startswith("https://")
    assert chat["max_tokens"] == 64000 and chat["stream"] is True


def test_anthropic_images_errors_choices_and_stops() -> None:
    chat = anthropic.request_to_chat({
        "max_tokens": 5, "stop_sequences": ["END"], "temperature": 0, "top_k": 3,
        "tools": [{"name": "f", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": "QUJD"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "tool_result", "tool_use_id": "t", "is_error": True,
             "content": [{"type": "text", "text": "boom"}]}]}]})
    assert chat["messages"][0] == {"role": "tool", "tool_call_id": "t", "content": "Error: boom"}
    assert chat["messages"][1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert [t["function"]["name"] for t in chat["tools"]] == ["f"]  # server tool skipped
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and chat["top_k"] == 3 and chat["temperature"] == 0
    named = anthropic.request_to_chat({"max_tokens": 5, "tools": [{"name": "f"}],
                                       "tool_choice": {"type": "tool", "name": "f"},
                                       "messages": [{"role": "user", "content": "x"}]})
    assert named["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_anthropic_refusals_name_the_field() -> None:
    msgs = [{"role": "user", "content": "x"}]
    for body, param in (({"messages": msgs}, "max_tokens"),
                        ({"max_tokens": 0, "messages": msgs}, "max_tokens"),
                        ({"max_tokens": 5, "messages": []}, "messages"),
                        ({"max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
                         "messages"),
                        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
                            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
                         "messages"),
                        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
                            {"type": "document", "source": {"type": "base64", "data": "x"}}]}]},
                         "messages"),
                        ({"max_tokens": 5, "messages": msgs, "tool_choice": {"type": "any"}},
                         "tool_choice")):
        with pytest.raises(InvalidRequest) as exc:
            anthropic.request_to_chat(body)
        assert exc.value.param == param, body
    assert "max_tokens" not in anthropic.request_to_chat({"messages": msgs}, count_only=True)


@pytest.mark.parametrize(("thinking", "effort"), [
    ({"type": "enabled", "budget_tokens": 1024}, "low"),
    ({"type": "enabled", "budget_tokens": 1}, "low"),
    ({"type": "enabled", "budget_tokens": 1025}, "medium"),
    ({"type": "enabled", "budget_tokens": 8192}, "medium"),
    ({"type": "enabled", "budget_tokens": 16000}, "high"),
    ({"type": "enabled", "budget_tokens": 24576}, "high"),
    ({"type": "enabled", "budget_tokens": 32768}, "xhigh"),
    ({"type": "enabled", "budget_tokens": 100000}, "xhigh"),
    ({"type": "disabled"}, "none"),
    ({"type": "adaptive"}, None),  # Claude Code's: the model's default, no effort
    (None, None),
])
def test_anthropic_thinking_is_chat_reasoning_effort(thinking: dict[str, Any] | None,
                                                     effort: str | None) -> None:
    body: dict[str, Any] = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    if thinking is not None:
        body["thinking"] = thinking
    chat = anthropic.request_to_chat(body)
    assert chat.get("reasoning_effort") == effort
    assert "thinking" not in chat


@pytest.mark.parametrize("effort", ["none", "low", "medium", "high", "xhigh"])
def test_anthropic_thinking_inverts_the_upstream_budgets(effort: str) -> None:
    """chat effort → Anthropic thinking (upstream) → chat effort is the same effort."""
    claude = formats.request_from_chat(formats.CLAUDE, {
        "messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort})
    assert formats.request_to_chat(formats.CLAUDE, claude)["reasoning_effort"] == effort


@pytest.mark.parametrize("thinking", [
    "on", {"type": "enabled"}, {"type": "enabled", "budget_tokens": 0},
    {"type": "enabled", "budget_tokens": "2048"}, {"type": "enabled", "budget_tokens": True}])
def test_anthropic_bad_thinking_names_the_field(thinking: Any) -> None:
    with pytest.raises(InvalidRequest, match="thinking") as exc:
        anthropic.request_to_chat({"max_tokens": 5, "thinking": thinking,
                                   "messages": [{"role": "user", "content": "x"}]})
    assert exc.value.param == "thinking"


def test_anthropic_error_shape() -> None:
    assert anthropic.error_object(404, "no") == {
        "type": "error", "error": {"type": "not_found_error", "message": "no"}}
    assert anthropic.error_type(503) == "api_error"
    assert anthropic.error_type(422) == "invalid_request_error"


# ---- Anthropic answers --------------------------------------------------------------------

def test_anthropic_stream_blocks_and_usage() -> None:
    s = anthropic.AnthropicStream("m", prompt_estimate=9)
    events = run(s, [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                     call_start(0, "call_1", "f"), call_args(0, '{"a":'), call_args(0, "1}"),
                     call_start(1, "call_2", "g"), chunk({}, "tool_calls"),
                     chunk(usage=USAGE)])
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["usage"]["input_tokens"] == 9  # estimated up front
    assert [(e["type"], e.get("index")) for e in events[1:]] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1),
        ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None)]
    assert events[4]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "f",
                                          "input": {}}
    assert events[5]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"] == {"input_tokens": 11, "output_tokens": 5}  # the engine's


@pytest.mark.parametrize(("finish", "reason"), [("stop", "end_turn"), ("length", "max_tokens"),
                                                 ("content_filter", "refusal")])
def test_anthropic_stop_reasons(finish: str, reason: str) -> None:
    events = run(anthropic.AnthropicStream("m"), [chunk({"content": "x"}), chunk({}, finish)])
    assert events[-2]["delta"]["stop_reason"] == reason


def test_anthropic_unary_answer_and_bad_arguments() -> None:
    chat = {"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}}]}
    out = anthropic.message_from_chat(chat, "m", prompt_estimate=4)
    assert out["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert out["stop_reason"] == "tool_use" and out["usage"]["input_tokens"] == 4
    assert out["id"].startswith("msg_") and out["type"] == "message"


def test_stream_failure_and_prompt_estimate() -> None:
    [err] = anthropic.AnthropicStream("m").fail("overloaded")
    assert err == {"type": "error", "error": {"type": "api_error", "message": "overloaded"}}
    small = prompt_tokens({"messages": [{"role": "user", "content": "hi"}]})
    big = prompt_tokens({"messages": [{"role": "user", "content": "hi " * 400}],
                         "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert 0 < small < big
    json.dumps(anthropic.AnthropicStream("m").start())  # events are plain JSON
