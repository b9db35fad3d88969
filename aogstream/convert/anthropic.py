"""Anthropic's Messages API (format `claude`) to and from the chat form.

Requests: `system` (string or text blocks), `messages` with content blocks (text,
images, `tool_use`, `tool_result`; `role: "system"` entries inside `messages` too),
`max_tokens` (required, as Anthropic requires it), tools with `input_schema`,
`tool_choice` and `stop_sequences` become a chat request. Answers: a chat answer
becomes a `message`; a chat stream becomes `message_start`, content blocks
(`content_block_start` / `_delta` / `_stop`), `message_delta` (stop reason, cumulative
usage) and `message_stop` through `AnthropicStream`.

`thinking` becomes chat's `reasoning_effort` (a budget the effort `upstream`
sends that budget for, `disabled` "none"; `adaptive` none at all).

Lossy, as the spec lists: thinking blocks and `cache_control` are dropped; `is_error`
on a tool result becomes a prefix of its text; images inside tool results become a
note; a model's tool arguments that are not a JSON object become `{}`; a stop sequence
is reported as `end_turn` (engines do not say which one fired). Server tools (typed
`web_search_...` etc.) are skipped. PDF documents and file ids cannot reach a chat
model and are refused.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aogstream.convert.chat_form import (
    InvalidRequest,
    chat_choice,
    dumps,
    new_id,
    simplify,
    text_of,
    tool_calls_of,
    usage_counts,
)
from aogstream.convert.chat_stream import ChatStreamTranslator, Event, ToolCall
from aogstream.convert.upstream import effort_of_budget

log = logging.getLogger(__name__)

FORMAT = "claude"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
# HTTP status → Anthropic's error type (docs' table; other 4xx are invalid_request_error)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               402: "billing_error", 403: "permission_error", 404: "not_found_error",
               409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_object(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body, `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


# ---- request: Anthropic → chat ------------------------------------------------------------

def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "image/png"
            return {"type": "image_url",
                    "image_url": {"url": f"data:{media};base64,{source['data']}"}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise InvalidRequest(f"'{where}': only base64 and url image sources can be used here, "
                         "not file ids", "messages")


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text" and \
            isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise InvalidRequest(f"'{where}': only plain-text documents can be passed to a chat "
                         "model here; send the PDF's text as a text block", "messages")


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}.tool_use_id' is required", "messages")
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") == "image":
                texts.append("(an image was returned here; this model reads text only)")
        text = "\n".join(texts)
    else:
        text = text_of(content, what=f"{where}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _turn(role: str, content: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic turn as chat messages: tool results first (in block order), then
    the text/images; an assistant's tool_use blocks become its `tool_calls`."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of content blocks",
                             "messages")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"'{at}' must be a content block object", "messages")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind == "tool_use":
            args = block.get("input")
            calls.append({"id": block.get("id") or new_id("toolu_"), "type": "function",
                          "function": {"name": str(block.get("name") or ""),
                                       "arguments": dumps(args if args is not None else {})}})
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # no chat equivalent (spec: drop on input)
        else:
            raise InvalidRequest(f"'{at}' has type {kind!r}, which this gateway cannot pass "
                                 "to a chat model", "messages")
    out = results
    if role == "assistant":
        if parts or calls:
            msg: dict[str, Any] = {"role": "assistant",
                                   "content": "\n".join(p.get("text", "") for p in parts)
                                   if parts else None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
    elif parts:
        out.append({"role": role, "content": simplify(parts)})
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list of tools", "tools")
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise InvalidRequest("every entry of 'tools' must be an object", "tools")
        if tool.get("type") not in (None, "custom"):
            continue  # server tools (web_search_..., bash_...) do not run here
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("every tool needs a 'name'", "tools")
        fn: dict[str, Any] = {"name": name, "parameters": tool.get("input_schema") or
                              {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(chat tool_choice, parallel_tool_calls)."""
    if not isinstance(choice, dict):
        raise InvalidRequest("'tool_choice' must be an object such as {\"type\": \"auto\"}",
                             "tool_choice")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise InvalidRequest("'tool_choice.type' must be auto, any, tool (with a name) or none",
                         "tool_choice")


def _reasoning_effort(thinking: Any) -> str | None:
    """Anthropic's `thinking` as chat's `reasoning_effort` (what the chat and Responses
    doors carry too, so providers and thinking appliers see one setting): an enabled
    budget is the effort `upstream.chat_to_claude` would send that budget for,
    disabled is "none"; adaptive (Claude Code's) leaves it to the model: no effort."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise InvalidRequest("'thinking' must be an object such as "
                             "{\"type\": \"enabled\", \"budget_tokens\": 2048}", "thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        return "none"
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InvalidRequest("'thinking.budget_tokens' must be a positive integer "
                                 "when thinking is enabled", "thinking")
        return effort_of_budget(budget)
    return None


def request_to_chat(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """An Anthropic Messages request as a chat request (InvalidRequest when it cannot be).
    `count_only`: a count_tokens body, where `max_tokens` is not required."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = text_of(system, what="system")
        if text:
            messages.append({"role": "system", "content": text})
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content} objects",
                             "messages")
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise InvalidRequest(f"'{where}' must be a {{role, content}} object", "messages")
        role = turn.get("role")
        if role == "system":
            messages.append({"role": "system",
                             "content": text_of(turn.get("content"), what=f"{where}.content")})
        elif role in ("user", "assistant"):
            messages.extend(_turn(role, turn.get("content"), where))
        else:
            raise InvalidRequest(f"'{where}.role' must be \"user\" or \"assistant\", not "
                                 f"{role!r}", "messages")
    chat: dict[str, Any] = {"messages": messages}
    if isinstance(body.get("model"), str):
        chat["model"] = body["model"]
    limit = body.get("max_tokens")
    if limit is None and not count_only:
        raise InvalidRequest("'max_tokens' is required: the most tokens the answer may have",
                             "max_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("'max_tokens' must be a positive integer", "max_tokens")
        chat["max_tokens"] = limit
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        choice, parallel = _tool_choice(body["tool_choice"])
        if tools:
            chat["tool_choice"] = choice
            if parallel is not None:
                chat["parallel_tool_calls"] = parallel
        elif choice not in ("auto", "none"):
            raise InvalidRequest("'tool_choice' asks for a tool but 'tools' has none",
                                 "tool_choice")
    for field in ("temperature", "top_p", "top_k"):
        value = body.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"'{field}' must be a number", field)
            chat[field] = value
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("'stop_sequences' must be a list of strings", "stop_sequences")
        chat["stop"] = stops
    effort = _reasoning_effort(body.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    config = body.get("output_config")
    if not isinstance(config, dict):
        config = {}
    fmt = config.get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": fmt.get("schema") or {}}}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# ---- answers: chat → Anthropic ------------------------------------------------------------

def tool_input(arguments: str, name: str) -> dict[str, Any]:
    """A call's arguments as the object `tool_use.input` must be ({} when they are not
    a JSON object: lossy, logged)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("the model's arguments for tool %r are not a JSON object; sent as {}", name)
        return {}
    return value


def usage_object(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message_from_chat(chat: dict[str, Any], model: str,
                      prompt_estimate: int = 0) -> dict[str, Any]:
    """A unary chat answer as an Anthropic `message`."""
    message, reason = chat_choice(chat)
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = text_of(text, what="content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in tool_calls_of(message):
        content.append({"type": "tool_use", "id": call["id"], "name": call["name"],
                        "input": tool_input(call["arguments"], call["name"])})
    counts = usage_counts(chat.get("usage")) or (prompt_estimate, 0)
    return {"id": new_id("msg_"), "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(reason or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage_object(*counts)}


class AnthropicStream(ChatStreamTranslator):
    """A chat stream as Anthropic's events: `start()` gives `message_start` (with the
    prompt's input tokens, estimated when the engine counts only at the end); each chat
    chunk its block events; `finish()` the last `content_block_stop`, `message_delta`
    (stop reason, cumulative usage, the engine's input count) and `message_stop`."""

    def __init__(self, model: str, prompt_estimate: int = 0) -> None:
        super().__init__(prompt_estimate)
        self.model = model
        self.msg_id = new_id("msg_")

    def start(self) -> list[Event]:
        return [{"type": "message_start", "message": {
            "id": self.msg_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage_object(self.prompt_estimate, 0)}}]

    def open_text(self, out: list[Event]) -> None:
        out.append({"type": "content_block_start", "index": self.text_slot,
                    "content_block": {"type": "text", "text": ""}})

    def text_delta(self, text: str, out: list[Event]) -> None:
        out.append({"type": "content_block_delta", "index": self.text_slot,
                    "delta": {"type": "text_delta", "text": text}})

    def close_text(self, out: list[Event]) -> None:
        out.append({"type": "content_block_stop", "index": self.text_slot})

    def open_tool(self, call: ToolCall, out: list[Event]) -> None:
        out.append({"type": "content_block_start", "index": call.slot,
                    "content_block": {"type": "tool_use", "id": call.call_id,
                                      "name": call.name, "input": {}}})

    def tool_delta(self, call: ToolCall, fragment: str, out: list[Event]) -> None:
        out.append({"type": "content_block_delta", "index": call.slot,
                    "delta": {"type": "input_json_delta", "partial_json": fragment}})

    def close_tool(self, call: ToolCall, out: list[Event]) -> None:
        out.append({"type": "content_block_stop", "index": call.slot})

    def end(self, out: list[Event]) -> None:
        reason = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        if self.order and reason == "end_turn":
            reason = "tool_use"  # some engines finish a call with "stop"
        input_tokens, output_tokens = self.counts()
        out.append({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": None},
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})
        out.append({"type": "message_stop"})

    def fail(self, message: str, code: str = "api_error") -> list[Event]:
        return [{"type": "error", "error": {"type": code, "message": message}}]
