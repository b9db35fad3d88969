"""Unit tests of `aogstream.convert.chat_tools`, the stateful chat steps around the
templates (pure functions and per-stream objects; no gateway).

Proven: an Ollama app's history gets call ids and `tool_call_id`s matched by name;
OpenAI-style call fragments reach an Ollama app whole, with object arguments, on the
`done` line; an Ollama provider's calls get stable ids and indexes across a stream and
the finish reason `tool_calls`; a `tool_choice` Ollama cannot express is refused; the
usage stream keeps a provider's usage that arrives after the finish chunk and drops the
repeated finish chunk it came in.
"""

from __future__ import annotations

import json

import pytest

from aogstream.convert import chat_tools as ct


def test_ollama_history_gets_ids_matched_by_name():
    history = [
        {"role": "user", "content": "both"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}}]},
        {"role": "tool", "tool_name": "b", "content": "B"},
        {"role": "tool", "content": "A"},
    ]
    out = ct.ollama_history_to_openai(history)
    assert out[1]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
        {"id": "call_1", "type": "function", "function": {"name": "b", "arguments": "{}"}}]
    assert out[2]["tool_call_id"] == "call_1" and out[3]["tool_call_id"] == "call_0"
    back = ct.openai_history_to_ollama(out)
    assert back[1]["tool_calls"][0] == {"function": {"name": "a", "arguments": {"x": 1}}}
    assert back[2]["tool_name"] == "b"


def test_fragments_reach_an_ollama_app_whole():
    s = ct.OllamaToolCallStream()
    line = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": False}
    frags = [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"ci'}},
             {"index": 0, "function": {"arguments": 'ty": "P"}'}}]
    for f in frags:
        out = s.convert(json.dumps({**line, "message": {**line["message"],
                                                         "tool_calls": [f]}}).encode())
        assert out is None  # nothing but a fragment: held back
    text = s.convert(json.dumps({**line, "message": {"role": "assistant",
                                                     "content": "hi"}}).encode())
    assert json.loads(text)["message"] == {"role": "assistant", "content": "hi"}
    done = json.loads(s.convert(json.dumps({**line, "done": True}).encode()))
    assert done["message"]["tool_calls"] == [{"function": {"name": "f",
                                                           "arguments": {"city": "P"}}}]


def test_ollama_provider_calls_are_numbered_across_a_stream():
    p = ct.OllamaProviderCalls()
    call = {"function": {"name": "f", "arguments": {"a": 1}}}
    first = json.loads(p.convert(json.dumps(
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]},
         "done": False}).encode()))
    second = json.loads(p.convert(json.dumps(
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]},
         "done": False}).encode()))
    assert [first["message"]["tool_calls"][0][k] for k in ("index", "id")] == [0, "call_0"]
    assert [second["message"]["tool_calls"][0][k] for k in ("index", "id")] == [1, "call_1"]
    assert first["message"]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    end = json.loads(p.convert(b'{"message":{"role":"assistant","content":""},'
                               b'"done":true,"done_reason":"stop"}'))
    assert end["done_reason"] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "f"}}])
def test_ollama_providers_refuse_tool_choice(choice):
    body = json.dumps({"messages": [], "tools": [{"type": "function"}],
                       "tool_choice": choice}).encode()
    with pytest.raises(ct.ToolChoiceError, match="no tool_choice"):
        ct.aog_request_to_ollama(body)
    ok = json.loads(ct.aog_request_to_ollama(body.replace(json.dumps(choice).encode(),
                                                          b'"auto"')))
    assert "tool_choice" not in ok


def test_usage_after_the_finish_chunk_is_kept():
    u = ct.OpenAIUsageStream(3, [b"[DONE]"])
    head = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta, reason=None, **extra):
        return json.dumps({**head, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": reason}], **extra},
                          separators=(",", ":")).encode()

    assert json.loads(u.convert(chunk({"content": "a"})))["usage"] is None
    assert json.loads(u.convert(chunk({}, "stop")))["usage"] is None
    # a converted provider usage chunk comes as a second finish chunk: kept, not sent
    assert u.convert(chunk({}, "stop", usage={"prompt_tokens": 9, "completion_tokens": 4,
                                               "total_tokens": 13})) is None
    closing, done = list(u.epilogue)
    assert json.loads(closing)["usage"]["prompt_tokens"] == 9 and done == b"[DONE]"
    assert json.loads(closing)["choices"] == []
