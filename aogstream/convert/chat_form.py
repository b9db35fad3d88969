"""The internal form every API format converts to and from: OpenAI chat completions.

The Responses and Anthropic translators (`responses`, `anthropic`) map their bodies onto
a chat request (`messages`, `tools`, `tool_choice`, `max_tokens`, ...) and map chat
answers and chat stream chunks (`choices[0].delta.content`, `delta.tool_calls`,
`finish_reason`, `usage`) back. What both directions share lives here: the refusal a
translator raises for a body it cannot honour, the compact JSON encoder, id minting,
and reading chat answers. (The prompt estimate used when an engine reports no usage
is `chat_tools.estimate_prompt_tokens`, shared with the chat door's streamed usage.)
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aogstream.convert.engine import ConvertError

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class InvalidRequest(ConvertError):
    """A request the translator cannot honour: the client's 400, naming the field
    (`param`) and what to send instead."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def dumps(value: Any) -> str:
    """Compact JSON text (one shared encoder: json.dumps with options builds one per call)."""
    return _ENCODER.encode(value)


def new_id(prefix: str) -> str:
    """A fresh id in the provider's style (`resp_...`, `msg_...`, `call_...`)."""
    return prefix + secrets.token_hex(12)


def now() -> int:
    """Unix seconds, as `created`/`created_at` fields carry them."""
    return int(time.time())


def text_of(parts: Any, *, what: str) -> str:
    """The text of a content given as a string or a list of text-like parts (joined by
    newlines); other part types are the caller's concern and are skipped here."""
    if isinstance(parts, str):
        return parts
    if parts is None:
        return ""
    if not isinstance(parts, list):
        raise InvalidRequest(f"{what} must be a string or a list of content parts, "
                             f"not {type(parts).__name__}", what)
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts)


def simplify(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content from text and image parts: a plain string when it is all text (chat
    templates of local engines render strings, not part lists), else the parts."""
    if all(p.get("type") == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def chat_choice(chat: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The first choice's message and finish reason of a unary chat answer."""
    choices = chat.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ConvertError("the chat answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    return (message if isinstance(message, dict) else {}), choice.get("finish_reason")


def usage_counts(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a chat `usage` object, or None when absent."""
    if not isinstance(usage, dict):
        return None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(p, int) and not isinstance(c, int):
        return None
    return (p if isinstance(p, int) else 0), (c if isinstance(c, int) else 0)


def tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat message's tool calls, each as {id, name, arguments (string)}."""
    out = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        fn = call.get("function")
        if not isinstance(fn, dict):
            fn = {}
        args = fn.get("arguments")
        if not isinstance(args, str):
            args = dumps(args) if args is not None else ""
        out.append({"id": call.get("id") or new_id("call_"), "name": fn.get("name") or "",
                    "arguments": args})
    return out
