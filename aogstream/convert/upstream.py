"""Translators toward an upstream that speaks `claude` or `openai-response`.

The doors translate a client's format into the chat form and the chat answer back
(`anthropic`, `responses`). A native executor that declares only `claude` or
`openai-response` (spec §3.1) needs the other two directions: a chat request in the
executor's format, and the executor's answer (unary, or its stream events) back in
the chat form. They live here, beside the door translators, and are reached through
`formats` like those (one set of translators, whatever calls them).

Pure functions on dicts, plus one small state machine per stream format
(`ClaudeToChat`, `ResponsesToChat`) that turns each upstream event into zero or more
`chat.completion.chunk` objects. Lossy where the formats differ: chat `n`,
`logprobs`, `response_format` and `seed` have no Anthropic equivalent and are
dropped; thinking/reasoning output is carried as `reasoning_content`; a chat
`reasoning_effort` is Responses' `reasoning.effort` and an Anthropic thinking budget
(`max_tokens` raised above the budget, as Anthropic requires).
"""

from __future__ import annotations

import json
from typing import Any

from aogstream.convert.chat_form import InvalidRequest, new_id, now
from aogstream.convert.engine import ConvertError

CLAUDE_MAX_TOKENS = 4096  # Anthropic requires max_tokens; chat requests may omit it
# Anthropic stop reasons / Responses incomplete reasons → chat finish reasons
CLAUDE_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter",
                 "pause_turn": "stop", "model_context_window_exceeded": "length"}
RESPONSES_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}
# chat `reasoning_effort` → Anthropic thinking budget (CLIProxyAPI's budgets; Anthropic's
# least is 1024; none turns thinking off; auto leaves it to the model's default)
CLAUDE_THINKING = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192,
                   "high": 24576, "xhigh": 32768}
# and back: an Anthropic budget → the least effort whose budget covers it ("low", not
# "minimal", for the shared 1024; above the largest, the largest)
CLAUDE_EFFORTS = ("low", "medium", "high", "xhigh")
Chunk = dict[str, Any]


# ---- chat request → upstream request ---------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _messages(chat: dict[str, Any]) -> list[dict[str, Any]]:
    messages = chat.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of chat messages", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a 'role'",
                                 f"messages[{i}]")
    return messages


def _parts(content: Any) -> list[dict[str, Any]]:
    """Chat content (a string or parts) as a list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [p for p in content if isinstance(p, dict)]
    raise InvalidRequest("message content must be a string or a list of parts", "messages")


def _text(content: Any) -> str:
    return "".join(str(p.get("text", "")) for p in _parts(content)
                   if p.get("type") in ("text", "input_text", "output_text"))


def _image_url(part: dict[str, Any]) -> str:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    return url if isinstance(url, str) else ""


def _json_object(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def effort_of_budget(budget: int) -> str:
    """The chat `reasoning_effort` of an Anthropic thinking budget: `CLAUDE_THINKING`
    inverted, so each effort's own budget maps back to that effort."""
    return next((e for e in CLAUDE_EFFORTS if budget <= CLAUDE_THINKING[e]),
                CLAUDE_EFFORTS[-1])


def merge_turn(turns: list[dict[str, Any]], role: str, key: str,
               items: list[dict[str, Any]]) -> None:
    """Append `items` as a turn of `role` (its list under `key`: Anthropic's `content`,
    Gemini's `parts`), into the last turn when that one is of the same role: both
    formats want user and model turns to alternate. No items, no turn."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def _claude_block(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        url = _image_url(part)
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media,
                                                "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}} if url else None
    return None


def chat_to_claude(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat request as an Anthropic Messages request: system messages join `system`,
    tool results become `tool_result` blocks of a user turn, and consecutive turns of
    one role merge (Anthropic wants user and assistant to alternate)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        merge_turn(turns, role, "content", blocks)

    for msg in _messages(chat):
        role = msg["role"]
        if role in ("system", "developer"):
            text = _text(msg.get("content"))
            if text:
                system.append(text)
        elif role == "tool":
            add("user", [{"type": "tool_result",
                          "tool_use_id": str(msg.get("tool_call_id") or ""),
                          "content": _text(msg.get("content"))}])
        elif role == "assistant":
            blocks = [b for p in _parts(msg.get("content")) if (b := _claude_block(p))]
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    blocks.append({"type": "tool_use",
                                   "id": str(call.get("id") or new_id("toolu_")),
                                   "name": str(fn.get("name", "")),
                                   "input": _json_object(fn.get("arguments"))})
            add("assistant", blocks)
        else:
            add("user", [b for p in _parts(msg.get("content")) if (b := _claude_block(p))])
    out: dict[str, Any] = {"model": chat.get("model", "")}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns
    limit = chat.get("max_completion_tokens") or chat.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else CLAUDE_MAX_TOKENS
    for key in ("temperature", "top_p", "metadata"):
        if chat.get(key) is not None:
            out[key] = chat[key]
    stop = chat.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    tools = [t["function"] for t in chat.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        out["tools"] = [{"name": str(f.get("name", "")),
                         **({"description": f["description"]} if f.get("description") else {}),
                         "input_schema": f.get("parameters") or {"type": "object"}}
                        for f in tools]
    choice = chat.get("tool_choice")
    claude_choice: dict[str, Any] | None = None
    if choice == "auto":
        claude_choice = {"type": "auto"}
    elif choice == "required":
        claude_choice = {"type": "any"}
    elif choice == "none":
        claude_choice = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        claude_choice = {"type": "tool", "name": str(choice["function"].get("name", ""))}
    if claude_choice is not None and chat.get("parallel_tool_calls") is False:
        claude_choice["disable_parallel_tool_use"] = True
    if claude_choice is not None:
        out["tool_choice"] = claude_choice
    effort = chat.get("reasoning_effort")
    budget = CLAUDE_THINKING.get(effort.lower()) if isinstance(effort, str) else None
    if budget == 0:
        out["thinking"] = {"type": "disabled"}
    elif budget:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        # Anthropic wants room to answer beyond the thinking budget
        out["max_tokens"] = max(out["max_tokens"], budget + CLAUDE_MAX_TOKENS)
    out["stream"] = chat.get("stream") is True
    return out


def chat_to_responses(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat request as an OpenAI Responses request (`input` items, `instructions`
    from the system messages, `store: false`: the whole history is sent each time)."""
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for msg in _messages(chat):
        role = msg["role"]
        if role in ("system", "developer"):
            text = _text(msg.get("content"))
            if text:
                instructions.append(text)
        elif role == "tool":
            items.append({"type": "function_call_output",
                          "call_id": str(msg.get("tool_call_id") or ""),
                          "output": _text(msg.get("content"))})
        else:
            kind = "output_text" if role == "assistant" else "input_text"
            content: list[dict[str, Any]] = []
            for part in _parts(msg.get("content")):
                if part.get("type") == "text":
                    content.append({"type": kind, "text": str(part.get("text", ""))})
                elif part.get("type") == "image_url" and role != "assistant":
                    content.append({"type": "input_image", "image_url": _image_url(part)})
            if content:
                items.append({"type": "message", "role": "assistant" if role == "assistant"
                              else "user", "content": content})
            for call in msg.get("tool_calls") or [] if role == "assistant" else []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    args = fn.get("arguments")
                    items.append({"type": "function_call", "call_id": str(call.get("id") or ""),
                                  "name": str(fn.get("name", "")),
                                  "arguments": args if isinstance(args, str) else json.dumps(args)})
    out: dict[str, Any] = {"model": chat.get("model", "")}
    if instructions:
        out["instructions"] = "\n\n".join(instructions)
    out["input"] = items
    limit = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        out["max_output_tokens"] = limit
    for key in ("temperature", "top_p", "parallel_tool_calls", "metadata", "user"):
        if chat.get(key) is not None:
            out[key] = chat[key]
    tools = [t["function"] for t in chat.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        out["tools"] = [{"type": "function", "name": str(f.get("name", "")),
                         "description": f.get("description"),
                         "parameters": f.get("parameters") or {"type": "object"}}
                        for f in tools]
    choice = chat.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out["tool_choice"] = {"type": "function", "name": str(choice["function"].get("name", ""))}
    effort = chat.get("reasoning_effort")
    if isinstance(effort, str) and effort:
        out["reasoning"] = {"effort": effort}  # the same setting, by Responses' name
    out["store"] = False
    out["stream"] = chat.get("stream") is True
    return out


# ---- upstream answer → chat answer ------------------------------------------------------


def _usage(prompt: Any, completion: Any) -> dict[str, int]:
    p = prompt if isinstance(prompt, int) else 0
    c = completion if isinstance(completion, int) else 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _claude_prompt(usage: dict[str, Any]) -> int:
    return sum(v for k in ("input_tokens", "cache_creation_input_tokens",
                           "cache_read_input_tokens")
               if isinstance(v := usage.get(k), int))


def _chat_answer(ident: Any, model: Any, message: dict[str, Any], reason: str,
                 usage: dict[str, int]) -> dict[str, Any]:
    return {"id": ident if isinstance(ident, str) and ident else new_id("chatcmpl-"),
            "object": "chat.completion", "created": now(),
            "model": model if isinstance(model, str) else "",
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": usage}


def _upstream_error(body: dict[str, Any]) -> None:
    err = body.get("error")
    if body.get("type") == "error" or (isinstance(err, dict)
                                       and body.get("object") != "response"):
        message = err.get("message") if isinstance(err, dict) else None
        raise ConvertError(f"the upstream answered an error: {message or err}")


def claude_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic `message` as a chat answer (text joined, `tool_use` blocks as tool
    calls, thinking as `reasoning_content`)."""
    _upstream_error(body)
    content = body.get("content")
    if not isinstance(content, list):
        raise ConvertError("an Anthropic message needs a 'content' list")
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif block.get("type") == "tool_use":
            calls.append({"id": str(block.get("id") or new_id("call_")), "type": "function",
                          "function": {"name": str(block.get("name", "")),
                                       "arguments": json.dumps(block.get("input") or {},
                                                               ensure_ascii=False)}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls
                               else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    reason = CLAUDE_FINISH.get(str(body.get("stop_reason") or "end_turn"), "stop")
    usage = _obj(body.get("usage"))
    return _chat_answer(body.get("id"), body.get("model"), message, reason,
                        _usage(_claude_prompt(usage), usage.get("output_tokens")))


def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses `response` object as a chat answer."""
    _upstream_error(body)
    if body.get("status") == "failed":
        err = body.get("error")
        raise ConvertError("the upstream response failed: "
                           f"{err.get('message') if isinstance(err, dict) else err}")
    output = body.get("output")
    if not isinstance(output, list):
        raise ConvertError("a Responses answer needs an 'output' list")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            text.extend(str(c.get("text", "")) for c in item.get("content") or []
                        if isinstance(c, dict) and c.get("type") == "output_text")
        elif item.get("type") == "reasoning":
            reasoning.extend(str(s.get("text", "")) for s in item.get("summary") or []
                             if isinstance(s, dict))
        elif item.get("type") == "function_call":
            calls.append({"id": str(item.get("call_id") or item.get("id") or new_id("call_")),
                          "type": "function",
                          "function": {"name": str(item.get("name", "")),
                                       "arguments": str(item.get("arguments") or "{}")}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls
                               else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    reason = "tool_calls" if calls else "stop"
    details = body.get("incomplete_details")
    if body.get("status") == "incomplete" and isinstance(details, dict):
        reason = RESPONSES_FINISH.get(str(details.get("reason")), "length")
    usage = _obj(body.get("usage"))
    return _chat_answer(body.get("id"), body.get("model"), message, reason,
                        _usage(usage.get("input_tokens"), usage.get("output_tokens")))


# the pieces the other upstream translators (`gemini`) share
obj, chat_messages, parts, text_of_parts, image_url, json_object = (
    _obj, _messages, _parts, _text, _image_url, _json_object)
usage, chat_answer = _usage, _chat_answer


# ---- upstream stream → chat chunks --------------------------------------------------------


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects in an SSE fragment: each `data:` payload of `event:`/`data:`
    frames, or the whole text when it is bare JSON (a plugin's chunk may be either).
    `[DONE]` and comments are skipped; unparsable payloads raise ConvertError."""
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return []
    if text.startswith("{"):
        payloads = [text]
    else:
        payloads = []
        for frame in text.replace("\r\n", "\n").split("\n\n"):
            lines = [ln[5:].lstrip() for ln in frame.split("\n") if ln.startswith("data:")]
            if lines:
                payloads.append("\n".join(lines))
    out: list[dict[str, Any]] = []
    for payload in payloads:
        if payload.strip() == "[DONE]":
            continue
        try:
            value = json.loads(payload)
        except ValueError:
            raise ConvertError(f"an upstream stream event is not JSON: {payload[:80]!r}") from None
        if isinstance(value, dict):
            out.append(value)
    return out


class UpstreamToChat:
    """Turns one upstream stream's events into chat chunks (`feed(event)` gives the
    chunks that event causes); a subclass per format reads its events."""

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl-")
        self.model = model
        self.created = now()
        self.started = False
        self.calls: dict[Any, int] = {}  # the upstream's block/item key → chat tool index
        self.prompt = 0
        self.completion = 0

    def chunk(self, delta: dict[str, Any], finish: str | None = None,
              usage: bool = False) -> Chunk:
        out: Chunk = {"id": self.id, "object": "chat.completion.chunk",
                      "created": self.created, "model": self.model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            out["usage"] = _usage(self.prompt, self.completion)
        return out

    def _delta(self, delta: dict[str, Any]) -> list[Chunk]:
        if not self.started:
            self.started = True
            delta = {"role": "assistant", **delta}
        return [self.chunk(delta)]

    def _call_start(self, key: Any, call_id: str, name: str) -> list[Chunk]:
        index = self.calls[key] = len(self.calls)
        return self._delta({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})

    def _call_args(self, key: Any, fragment: str) -> list[Chunk]:
        if key not in self.calls or not fragment:
            return []
        return self._delta({"tool_calls": [{"index": self.calls[key],
                                            "function": {"arguments": fragment}}]})

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        raise NotImplementedError


class ClaudeToChat(UpstreamToChat):
    """Anthropic's stream events (`message_start`, content blocks, `message_delta`,
    `message_stop`) as chat chunks; the finish chunk carries the usage."""

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "message_start":
            msg = _obj(event.get("message"))
            if isinstance(msg.get("model"), str) and msg["model"]:
                self.model = msg["model"]
            usage = _obj(msg.get("usage"))
            self.prompt = _claude_prompt(usage)
            return self._delta({"content": ""})
        if kind == "content_block_start":
            block = _obj(event.get("content_block"))
            if block.get("type") == "tool_use":
                return self._call_start(event.get("index"), str(block.get("id") or ""),
                                        str(block.get("name", "")))
            if block.get("type") == "text" and block.get("text"):
                return self._delta({"content": str(block["text"])})
            return []
        if kind == "content_block_delta":
            delta = _obj(event.get("delta"))
            if delta.get("type") == "text_delta":
                return self._delta({"content": str(delta.get("text", ""))})
            if delta.get("type") == "thinking_delta":
                return self._delta({"reasoning_content": str(delta.get("thinking", ""))})
            if delta.get("type") == "input_json_delta":
                return self._call_args(event.get("index"), str(delta.get("partial_json", "")))
            return []
        if kind == "message_delta":
            usage = _obj(event.get("usage"))
            if isinstance(usage.get("output_tokens"), int):
                self.completion = usage["output_tokens"]
            if isinstance(usage.get("input_tokens"), int):
                self.prompt = _claude_prompt(usage)
            delta = _obj(event.get("delta"))
            reason = CLAUDE_FINISH.get(str(delta.get("stop_reason") or "end_turn"), "stop")
            return [self.chunk({}, reason, usage=True)]
        if kind == "error":
            err = event.get("error")
            raise ConvertError("the upstream stream failed: "
                               f"{err.get('message') if isinstance(err, dict) else err}")
        return []  # ping, content_block_stop, message_stop


class ResponsesToChat(UpstreamToChat):
    """Responses' typed stream events as chat chunks; `response.completed` (or
    `incomplete`) gives the finish chunk with the usage."""

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        kind = event.get("type")
        if kind == "response.created":
            resp = _obj(event.get("response"))
            if isinstance(resp.get("model"), str) and resp["model"]:
                self.model = resp["model"]
            return self._delta({"content": ""})
        if kind == "response.output_text.delta":
            return self._delta({"content": str(event.get("delta", ""))})
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._delta({"reasoning_content": str(event.get("delta", ""))})
        if kind == "response.output_item.added":
            item = _obj(event.get("item"))
            if item.get("type") == "function_call":
                return self._call_start(item.get("id") or event.get("output_index"),
                                        str(item.get("call_id") or item.get("id") or ""),
                                        str(item.get("name", "")))
            return []
        if kind == "response.function_call_arguments.delta":
            key = event.get("item_id") if event.get("item_id") in self.calls \
                else event.get("output_index")
            return self._call_args(key, str(event.get("delta", "")))
        if kind in ("response.completed", "response.incomplete"):
            resp = _obj(event.get("response"))
            usage = _obj(resp.get("usage"))
            self.prompt = usage.get("input_tokens") or 0
            self.completion = usage.get("output_tokens") or 0
            reason = "tool_calls" if self.calls else "stop"
            details = resp.get("incomplete_details")
            if kind == "response.incomplete" and isinstance(details, dict):
                reason = RESPONSES_FINISH.get(str(details.get("reason")), "length")
            return [self.chunk({}, reason, usage=True)]
        if kind in ("response.failed", "error"):
            resp = _obj(event.get("response")) or event
            err = resp.get("error")
            why = err.get("message") if isinstance(err, dict) else event.get("message")
            raise ConvertError(f"the upstream stream failed: {why or kind}")
        return []
