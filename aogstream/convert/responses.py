"""OpenAI's Responses API (format `openai-response`) to and from the chat form.

Requests: `input` (a string, or message / `function_call` / `function_call_output`
items), `instructions`, flat function tools and `tool_choice` become a chat request.
Answers: a chat answer becomes a `response` object; a chat stream becomes the typed
events (`response.created` ... `response.completed`) through `ResponsesStream`, a
per-chunk state machine.

What cannot be honoured is refused, not dropped: `previous_response_id`,
`conversation` and `item_reference` need responses kept on the server, which this
gateway does not do (resend the whole history with `store: false`, as Codex, the
Vercel AI SDK and plain SDK loops do); `store` is accepted and nothing is kept (the
answer says `store: false`). Built-in tools (`web_search`, ...) are skipped, as the
spec advises for a gateway that runs only function tools; `namespace` tools are
flattened and their calls carry `namespace` again. Reasoning items are dropped.
"""

from __future__ import annotations

from typing import Any

from aogstream.convert.chat_form import (
    InvalidRequest,
    chat_choice,
    new_id,
    now,
    simplify,
    text_of,
    tool_calls_of,
    usage_counts,
)
from aogstream.convert.chat_stream import ChatStreamTranslator, Event, ToolCall

FORMAT = "openai-response"
# Item types replayed from built-in tools or reasoning: nothing to give a chat engine.
_SKIPPED_ITEMS = ("reasoning", "web_search_call", "file_search_call", "computer_call",
                  "computer_call_output", "code_interpreter_call", "image_generation_call",
                  "local_shell_call", "local_shell_call_output", "mcp_call", "mcp_list_tools",
                  "mcp_approval_request", "mcp_approval_response", "custom_tool_call",
                  "custom_tool_call_output", "shell_call", "shell_call_output",
                  "apply_patch_call", "apply_patch_call_output", "compaction")
_STATELESS = ("this gateway keeps no responses; resend the whole conversation in 'input' "
              "(earlier messages, function_call and function_call_output items) with "
              "\"store\": false")


# ---- request: Responses → chat -----------------------------------------------------------

def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content (string or input/output parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{where}.content[{j}]' must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise InvalidRequest(
                    f"'{where}.content[{j}]': only images given by 'image_url' (an https URL "
                    "or a data: URL) can be used here, not file ids", where)
            image: dict[str, Any] = {"url": url}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"'{where}.content[{j}]' has type {kind!r}, which this gateway cannot pass "
                "to a chat model; send input_text or input_image parts", where)
    return simplify(parts)


def _output_text(output: Any, where: str) -> str:
    """A function_call_output's output as tool message text."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return text_of(output, what=f"{where}.output")
    if output is None:
        return ""
    raise InvalidRequest(f"'{where}.output' must be a string or a list of parts", where)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list):
        raise InvalidRequest("'input' must be a string or a list of input items", "input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object", "input")
        kind = item.get("type") or "message"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"'{where}.role' must be user, assistant, system or "
                                     f"developer, not {role!r}", "input")
            content = _content(item.get("content"), where)
            if role == "assistant" and isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content)
            messages.append({"role": "system" if role == "developer" else role,
                             "content": content})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or new_id("call_"),
                    "type": "function",
                    "function": {"name": str(item.get("name") or ""),
                                 "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one assistant turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"'{where}.call_id' is required: the call_id of the "
                                     "function_call it answers", "input")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _output_text(item.get("output"), where)})
        elif kind == "item_reference":
            raise InvalidRequest(f"'{where}' is an item_reference; {_STATELESS}", "input")
        elif kind in _SKIPPED_ITEMS:
            continue
        else:
            raise InvalidRequest(f"'{where}' has type {kind!r}, which this gateway cannot "
                                 "use; send message, function_call and function_call_output "
                                 "items", "input")
    return messages


def _tools(tools: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Function tools in chat's nested shape, namespaces flattened (name → namespace)."""
    if tools is None:
        return [], {}
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list of tools", "tools")
    out: list[dict[str, Any]] = []
    spaces: dict[str, str] = {}

    def add(tool: dict[str, Any], namespace: str | None) -> None:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("every function tool needs a 'name'", "tools")
        fn: dict[str, Any] = {"name": name,
                              "parameters": tool.get("parameters") or {"type": "object",
                                                                       "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
        if namespace:
            spaces[name] = namespace

    for tool in tools:
        if not isinstance(tool, dict):
            raise InvalidRequest("every entry of 'tools' must be an object", "tools")
        if tool.get("type") == "function":
            add(tool, None)
        elif tool.get("type") == "namespace":
            for inner in tool.get("tools") or []:
                if isinstance(inner, dict) and inner.get("type", "function") == "function":
                    add(inner, str(tool.get("name") or ""))
        # built-in tools (web_search, file_search, ...) run on OpenAI's servers: skipped
    return out, spaces


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if choice.get("type") == "allowed_tools":
            return "required" if choice.get("mode") == "required" else "auto"
    raise InvalidRequest("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"name\": ...}; built-in tools do not run "
                         "here", "tool_choice")


def request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as a chat request (raises InvalidRequest when it cannot be)."""
    for field in ("previous_response_id", "conversation"):
        if body.get(field):
            raise InvalidRequest(f"'{field}' is not supported: {_STATELESS}", field)
    if "input" not in body:
        raise InvalidRequest("'input' is required: a string or a list of input items", "input")
    chat: dict[str, Any] = {"messages": _messages(body)}
    if not chat["messages"]:
        raise InvalidRequest("'input' is empty; send at least one message", "input")
    if isinstance(body.get("model"), str):
        chat["model"] = body["model"]
    tools, _ = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"])
        if isinstance(body.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidRequest("'tool_choice' asks for a tool but 'tools' has no function "
                             "tools", "tool_choice")
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest("'max_output_tokens' must be a positive integer",
                                 "max_output_tokens")
        chat["max_tokens"] = limit
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"'{field}' must be a number", field)
            chat[field] = value
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema: dict[str, Any] = {"name": fmt.get("name") or "output",
                                      "schema": fmt.get("schema") or {}}
            if isinstance(fmt.get("strict"), bool):
                schema["strict"] = fmt["strict"]
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]  # chat's name for the same setting
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def namespaces(body: dict[str, Any]) -> dict[str, str]:
    """Tool name → namespace for the request's flattened namespace tools."""
    try:
        return _tools(body.get("tools"))[1]
    except InvalidRequest:
        return {}


# ---- answers: chat → Responses -----------------------------------------------------------

def usage_object(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Responses' usage, with the two detail objects SDKs type as required."""
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def response_shell(body: dict[str, Any], resp_id: str, created: int, model: str) -> dict[str, Any]:
    """The response object's fields that echo the request (status/output/usage set later)."""
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    choice = body.get("tool_choice")
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": "in_progress",
        "model": model, "output": [], "usage": None, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": False, "temperature": body.get("temperature"),
        "text": body.get("text") if isinstance(body.get("text"), dict)
        else {"format": {"type": "text"}},
        "tool_choice": choice if isinstance(choice, str | dict) else "auto",
        "tools": tools, "top_p": body.get("top_p"), "truncation": "disabled",
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "user": None,
    }


def _status(reason: str | None) -> tuple[str, dict[str, str] | None]:
    if reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str,
              spaces: dict[str, str], status: str = "completed") -> dict[str, Any]:
    item = {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}
    if name in spaces:
        item["namespace"] = spaces[name]
    return item


def response_from_chat(chat: dict[str, Any], body: dict[str, Any],
                       prompt_estimate: int = 0) -> dict[str, Any]:
    """A unary chat answer as a Responses `response` object for request `body`."""
    message, reason = chat_choice(chat)
    model = chat.get("model") if isinstance(chat.get("model"), str) else body.get("model")
    out = response_shell(body, new_id("resp_"), now(), str(model or ""))
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = text_of(text, what="content")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg_"), text))
    spaces = namespaces(body)
    for call in tool_calls_of(message):
        output.append(call_item(new_id("fc_"), call["id"], call["name"], call["arguments"],
                                spaces))
    status, incomplete = _status(reason)
    counts = usage_counts(chat.get("usage"))
    if counts is None:
        counts = (prompt_estimate, 0)
    out.update(status=status, incomplete_details=incomplete, output=output,
               usage=usage_object(*counts))
    return out


class ResponsesStream(ChatStreamTranslator):
    """A chat stream as Responses' typed events, each with its `sequence_number`.

    `start()` gives `response.created` and `response.in_progress`; then `feed` each chat
    chunk; `finish()` closes the open item and ends with `response.completed` (or
    `response.incomplete`); `fail()` ends with `response.failed`."""

    def __init__(self, body: dict[str, Any], model: str, prompt_estimate: int = 0) -> None:
        super().__init__(prompt_estimate)
        self.seq = 0
        self.response = response_shell(body, new_id("resp_"), now(), model)
        self.spaces = namespaces(body)
        self.output: list[dict[str, Any]] = []
        self.msg_id = ""

    def _event(self, kind: str, out: list[Event], **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1

    def _snapshot(self) -> dict[str, Any]:
        return dict(self.response, output=list(self.output))

    def start(self) -> list[Event]:
        out: list[Event] = []
        self._event("response.created", out, response=self._snapshot())
        self._event("response.in_progress", out, response=self._snapshot())
        return out

    def open_text(self, out: list[Event]) -> None:
        self.msg_id = new_id("msg_")
        item = {"id": self.msg_id, "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        self._event("response.output_item.added", out, output_index=self.text_slot, item=item)
        self._event("response.content_part.added", out, item_id=self.msg_id,
                    output_index=self.text_slot, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})

    def text_delta(self, text: str, out: list[Event]) -> None:
        self._event("response.output_text.delta", out, item_id=self.msg_id,
                    output_index=self.text_slot, content_index=0, delta=text, logprobs=[])

    def close_text(self, out: list[Event]) -> None:
        text = self.block_text()
        idx = self.text_slot
        self._event("response.output_text.done", out, item_id=self.msg_id, output_index=idx,
                    content_index=0, text=text, logprobs=[])
        self._event("response.content_part.done", out, item_id=self.msg_id, output_index=idx,
                    content_index=0, part={"type": "output_text", "text": text,
                                           "annotations": []})
        item = message_item(self.msg_id, text)
        self.output.append(item)
        self._event("response.output_item.done", out, output_index=idx, item=item)

    def open_tool(self, call: ToolCall, out: list[Event]) -> None:
        call.extra["id"] = new_id("fc_")
        item = call_item(call.extra["id"], call.call_id, call.name, "", self.spaces,
                         "in_progress")
        self._event("response.output_item.added", out, output_index=call.slot, item=item)

    def tool_delta(self, call: ToolCall, fragment: str, out: list[Event]) -> None:
        self._event("response.function_call_arguments.delta", out, item_id=call.extra["id"],
                    output_index=call.slot, delta=fragment)

    def close_tool(self, call: ToolCall, out: list[Event]) -> None:
        args = call.args()
        self._event("response.function_call_arguments.done", out, item_id=call.extra["id"],
                    output_index=call.slot, name=call.name, arguments=args)
        item = call_item(call.extra["id"], call.call_id, call.name, args, self.spaces)
        self.output.append(item)
        self._event("response.output_item.done", out, output_index=call.slot, item=item)

    def end(self, out: list[Event]) -> None:
        status, incomplete = _status(self.finish_reason)
        final = dict(self._snapshot(), status=status, incomplete_details=incomplete,
                     usage=usage_object(*self.counts()))
        self._event("response.completed" if status == "completed" else "response.incomplete",
                    out, response=final)

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        out: list[Event] = []
        final = dict(self._snapshot(), status="failed",
                     error={"code": code, "message": message})
        self._event("response.failed", out, response=final)
        return out
