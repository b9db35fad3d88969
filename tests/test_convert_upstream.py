"""Unit tests of the upstream directions of `aogstream.convert.formats`: chat request →
`claude` / `openai-response` / `gemini` request, and those formats' answers and stream
events → chat answer and chat chunks (modules `convert.upstream`, `convert.gemini`).

Real parts: the translators themselves, and the door translators of the opposite
direction (`anthropic`, `responses`) used as the other end of each round trip; no
gateway. Proven: a chat request with a system prompt, an image, a tool call and its
result survives chat → format → chat through the doors' own request translators; an
answer the doors would write (`message`, `response`) comes back as the chat answer it
came from (text, tool calls, finish reason, usage); a stream of the doors' own events
(`AnthropicStream`, `ResponsesStream`, `GeminiStream`), framed as SSE, comes back as
chat chunks that reassemble to the same text and tool calls with the usage on the finish chunk; an
upstream error object or error event is a ConvertError, not an answer. Gemini has no
call ids: a tool result reaches Gemini named after the function of the call it
answers, and a call's id minted on the way back is what its result answers.
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


def test_chat_request_round_trips_through_gemini() -> None:
    gem = formats.request_from_chat(formats.GEMINI, CHAT_REQUEST)
    assert gem["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert gem["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.5,
                                       "stopSequences": ["END"]}
    assert gem["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert gem["tools"][0]["functionDeclarations"][0]["name"] == "look"
    assert [t["role"] for t in gem["contents"]] == ["user", "model", "user"]
    assert gem["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}
    assert gem["contents"][1]["parts"] == [
        {"functionCall": {"name": "look", "args": {"where": "here"}}}]
    # the tool result is named after the function of the call it answers
    assert gem["contents"][2]["parts"] == [
        {"functionResponse": {"name": "look", "response": {"content": "a cat"}}}]
    assert "model" not in gem and "stream" not in gem  # both live in Gemini's URL
    back = formats.request_to_chat(formats.GEMINI, json.loads(json.dumps(gem)))
    roles = [m["role"] for m in back["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    call_id = back["messages"][2]["tool_calls"][0]["id"]
    assert back["messages"][3]["tool_call_id"] == call_id
    assert json.loads(back["messages"][2]["tool_calls"][0]["function"]["arguments"]) == \
        {"where": "here"}
    assert back["tool_choice"] == "required" and back["stop"] == ["END"]
    assert back["messages"][1]["content"][1]["image_url"]["url"] == \
        "data:image/png;base64,iVBORw0K"


def test_reasoning_effort_reaches_claude_and_responses() -> None:
    chat = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium",
            "max_tokens": 100}
    claude = formats.request_from_chat(formats.CLAUDE, chat)
    assert claude["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert claude["max_tokens"] > 8192
    assert formats.request_from_chat(formats.CLAUDE, {**chat, "reasoning_effort": "none"})[
        "thinking"] == {"type": "disabled"}
    assert "thinking" not in formats.request_from_chat(formats.CLAUDE, {
        **chat, "reasoning_effort": "auto"})
    resp = formats.request_from_chat(formats.OPENAI_RESPONSE, chat)
    assert resp["reasoning"] == {"effort": "medium"}
    assert formats.request_to_chat(formats.OPENAI_RESPONSE, resp)["reasoning_effort"] == \
        "medium"


@pytest.mark.parametrize(("effort", "budget", "back"), [
    ("high", 24576, "high"), ("none", 0, "none"), ("auto", -1, "auto"),
    ("low", 1024, "low")])
def test_reasoning_effort_is_a_gemini_thinking_budget(effort: str, budget: int,
                                                      back: str) -> None:
    gem = formats.request_from_chat(formats.GEMINI, {
        "messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort})
    assert gem["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": budget, "includeThoughts": budget != 0}
    assert formats.request_to_chat(formats.GEMINI, gem)["reasoning_effort"] == back


def test_gemini_thoughts_and_finish_reasons_read_as_chat() -> None:
    chat = formats.response_to_chat(formats.GEMINI, {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "hmm", "thought": True}, {"text": "done"}]},
            "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
                          "thoughtsTokenCount": 3, "totalTokenCount": 9}})
    message = chat["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "done", "reasoning_content": "hmm"}
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


@pytest.mark.parametrize("fmt", [formats.CLAUDE, formats.OPENAI_RESPONSE, formats.GEMINI])
def test_answer_round_trips_to_chat(fmt: str) -> None:
    body = {"model": "m", "max_tokens": 8, "input": "x",
            "messages": [{"role": "user", "content": "x"}]}
    written = formats.response_from_chat(fmt, CHAT_ANSWER, body, "m")
    chat = formats.response_to_chat(fmt, json.loads(json.dumps(written)))
    message = chat["choices"][0]["message"]
    assert message["content"] == "let me look"
    if fmt != formats.GEMINI:  # Gemini carries no call ids
        assert message["tool_calls"][0]["id"] == "call_9"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"where": "there"}
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    assert chat["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@pytest.mark.parametrize("fmt", [formats.CLAUDE, formats.OPENAI_RESPONSE, formats.GEMINI])
def test_stream_events_round_trip_to_chat_chunks(fmt: str) -> None:
    body = {"model": "m", "input": "x"}
    writer = formats.stream_from_chat(fmt, body, "m")
    events = writer.start() + [e for c in chat_chunks() for e in writer.feed(c)] + \
        writer.finish()
    # Gemini's stream (`alt=sse`) has data lines only; the others name each event
    sse = b"".join((b"event: " + e["type"].encode() + b"\n" if "type" in e else b"")
                   + b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    reader = formats.stream_to_chat(fmt, "m")
    # framed SSE split at arbitrary event boundaries, and bare JSON, both read
    out = [c for e in upstream.sse_events(sse) for c in reader.feed(e)]
    text, calls, finish, usage = reassemble(out)
    assert text == "Hello"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [("look", {"where": 1})]
    if fmt != formats.GEMINI:  # Gemini carries no call ids
        assert calls[0]["id"] == "call_5"
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
    with pytest.raises(ConvertError, match="exhausted"):
        formats.response_to_chat(formats.GEMINI, {
            "error": {"code": 429, "message": "exhausted", "status": "RESOURCE_EXHAUSTED"}})
    with pytest.raises(ConvertError, match="exhausted"):
        formats.stream_to_chat(formats.GEMINI, "m").feed({"error": {"message": "exhausted"}})


def test_claude_request_needs_max_tokens_and_alternating_roles() -> None:
    claude = formats.request_from_chat(formats.CLAUDE, {
        "model": "m", "messages": [{"role": "user", "content": "a"},
                                   {"role": "user", "content": "b"}]})
    assert claude["max_tokens"] == upstream.CLAUDE_MAX_TOKENS
    assert claude["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
