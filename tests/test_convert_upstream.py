"""Unit tests of the upstream directions of `aogstream.convert.formats`: chat request →
`claude` / `openai-response` request, and those formats' answers and stream events →
chat answer and chat chunks (module `convert.upstream`).

Real parts: the translators themselves, and the door translators of the opposite
direction (`anthropic`, `responses`) used as the other end of each round trip; no
gateway. Proven: a chat request with a system prompt, an image, a tool call and its
result survives chat → format → chat through the doors' own request translators; an
answer the doors would write (`message`, `response`) comes back as the chat answer it
came from (text, tool calls, finish reason, usage); a stream of the doors' own events
(`AnthropicStream`, `ResponsesStream`), framed as SSE, comes back as chat chunks that
reassemble to the same text and tool calls with the usage on the finish chunk; an
upstream error object or error event is a ConvertError, not an answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aogstream.convert import formats, upstream
from aogstream.convert.engine import ConvertError

CHAT_REQUEST: dict[str, Any] = {
    "model": "m", "max_tokens": 64, "temperature": 0.5, "stop": "END",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "look", "arguments": "{\"where\": \"here\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "look", "description": "looks",
        "parameters": {"type": "object", "properties": {"where": {"type": "string"}}}}}],
    "tool_choice": "required",
}

CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "let me look",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "look", "arguments": "{\"where\": \"there\"}"}}]}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


def chat_chunks() -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return [
        chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_5", "type": "function",
                               "function": {"name": "look", "arguments": "{\"wh"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ere\": 1}"}}]}),
        chunk({}, "tool_calls"),
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                  "total_tokens": 8}},
    ]


def reassemble(chunks: list[dict[str, Any]]) -> tuple[str, dict[int, dict[str, str]], str | None,
                                                       dict[str, int] | None]:
    text, calls, finish, usage = "", {}, None, None
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        usage = c.get("usage") or usage
        for choice in c["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = call.get("function", {}).get("name") or slot["name"]
                slot["arguments"] += call.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return text, calls, finish, usage


def test_chat_request_round_trips_through_claude() -> None:
    claude = formats.request_from_chat(formats.CLAUDE, CHAT_REQUEST)
    assert claude["system"] == "be brief"
    assert claude["max_tokens"] == 64 and claude["stop_sequences"] == ["END"]
    assert claude["tool_choice"] == {"type": "any"}
    assert claude["tools"][0]["input_schema"]["properties"]["where"] == {"type": "string"}
    assert [t["role"] for t in claude["messages"]] == ["user", "assistant", "user"]
    assert claude["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png",
                                    "data": "iVBORw0K"}}
    assert claude["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"where": "here"}}]
    assert claude["messages"][2]["content"][0]["type"] == "tool_result"
    back = formats.request_to_chat(formats.CLAUDE, json.loads(json.dumps(claude)))
    roles = [m["role"] for m in back["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert back["messages"][3]["tool_call_id"] == "call_1"
    assert json.loads(back["messages"][2]["tool_calls"][0]["function"]["arguments"]) == \
        {"where": "here"}


def test_chat_request_round_trips_through_responses() -> None:
    resp = formats.request_from_chat(formats.OPENAI_RESPONSE, CHAT_REQUEST)
    assert resp["instructions"] == "be brief" and resp["max_output_tokens"] == 64
    assert resp["store"] is False and resp["tool_choice"] == "required"
    assert [i["type"] for i in resp["input"]] == ["message", "function_call",
                                                   "function_call_output"]
    back = formats.request_to_chat(formats.OPENAI_RESPONSE, json.loads(json.dumps(resp)))
    roles = [m["role"] for m in back["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert back["tools"][0]["function"]["name"] == "look"


@pytest.mark.parametrize("fmt", [formats.CLAUDE, formats.OPENAI_RESPONSE])
def test_answer_round_trips_to_chat(fmt: str) -> None:
    body = {"model": "m", "max_tokens": 8, "input": "x",
            "messages": [{"role": "user", "content": "x"}]}
    written = formats.response_from_chat(fmt, CHAT_ANSWER, body, "m")
    chat = formats.response_to_chat(fmt, json.loads(json.dumps(written)))
    message = chat["choices"][0]["message"]
    assert message["content"] == "let me look"
    assert message["tool_calls"][0]["id"] == "call_9"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"where": "there"}
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@pytest.mark.parametrize("fmt", [formats.CLAUDE, formats.OPENAI_RESPONSE])
def test_stream_events_round_trip_to_chat_chunks(fmt: str) -> None:
    body = {"model": "m", "input": "x"}
    writer = formats.stream_from_chat(fmt, body, "m")
    events = writer.start() + [e for c in chat_chunks() for e in writer.feed(c)] + \
        writer.finish()
    sse = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode()
                   + b"\n\n" for e in events)
    reader = formats.stream_to_chat(fmt, "m")
    # framed SSE split at arbitrary event boundaries, and bare JSON, both read
    out = [c for e in upstream.sse_events(sse) for c in reader.feed(e)]
    text, calls, finish, usage = reassemble(out)
    assert text == "Hello"
    assert calls == {0: {"id": "call_5", "name": "look", "arguments": "{\"where\": 1}"}}
    assert finish == "tool_calls"
    assert usage is not None and usage["prompt_tokens"] == 5 and \
        usage["completion_tokens"] == 3
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"


def test_bare_json_and_done_are_read() -> None:
    assert upstream.sse_events(b'{"type":"ping"}') == [{"type": "ping"}]
    assert upstream.sse_events(b"data: [DONE]\n\n") == []
    with pytest.raises(ConvertError):
        upstream.sse_events(b"data: {not json\n\n")


def test_upstream_errors_are_convert_errors() -> None:
    with pytest.raises(ConvertError, match="overloaded"):
        formats.response_to_chat(formats.CLAUDE, {
            "type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}})
    with pytest.raises(ConvertError, match="boom"):
        formats.stream_to_chat(formats.CLAUDE, "m").feed(
            {"type": "error", "error": {"message": "boom"}})
    with pytest.raises(ConvertError, match="quota"):
        formats.stream_to_chat(formats.OPENAI_RESPONSE, "m").feed(
            {"type": "response.failed", "response": {"error": {"message": "quota"}}})
    with pytest.raises(ConvertError):
        formats.response_to_chat(formats.OPENAI_RESPONSE, {"object": "response"})


def test_claude_request_needs_max_tokens_and_alternating_roles() -> None:
    claude = formats.request_from_chat(formats.CLAUDE, {
        "model": "m", "messages": [{"role": "user", "content": "a"},
                                   {"role": "user", "content": "b"}]})
    assert claude["max_tokens"] == upstream.CLAUDE_MAX_TOKENS
    assert claude["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
