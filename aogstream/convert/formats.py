"""The API formats the gateway translates between, by CLIProxyAPI's names.

One set of translators serves both the HTTP doors (`/v1/responses`, `/v1/messages`) and
native plugins' executor format negotiation, which names formats the same way CPA
does: `openai` (chat completions, the internal form), `openai-response` (Responses),
`claude` (Anthropic Messages) and `gemini` (Gemini `generateContent`, module
`gemini`). Every translation goes through the chat
form: format → chat for requests, chat → format for answers and stream chunks, and
the other way for an upstream (a native executor) that speaks `fmt`: chat → format
for requests, format → chat for its answers and stream events (module `upstream`).
"""

from __future__ import annotations

from typing import Any

from aogstream.convert import anthropic, gemini, responses, upstream
from aogstream.convert.chat_form import InvalidRequest
from aogstream.convert.chat_stream import ChatStreamTranslator
from aogstream.convert.engine import ConvertError

OPENAI = "openai"
OPENAI_RESPONSE = responses.FORMAT
CLAUDE = anthropic.FORMAT
GEMINI = gemini.FORMAT
FORMATS = (OPENAI, OPENAI_RESPONSE, CLAUDE, GEMINI)
TRANSLATED = FORMATS  # the formats with a native translator (to and from chat)


class UnsupportedFormat(ConvertError):
    """A format name with no translator (yet)."""


def _check(fmt: str) -> None:
    if fmt not in TRANSLATED:
        raise UnsupportedFormat(f"no translator for format {fmt!r}; translated formats: "
                                f"{', '.join(TRANSLATED)}")


def request_to_chat(fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request of format `fmt` in the chat form (InvalidRequest names what is wrong)."""
    _check(fmt)
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise InvalidRequest("'model' must be a string (the model's name)", "model")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be true or false", "stream")
    if fmt == OPENAI_RESPONSE:
        return responses.request_to_chat(body)
    if fmt == CLAUDE:
        return anthropic.request_to_chat(body)
    if fmt == GEMINI:
        return gemini.request_to_chat(body)
    return body


def response_from_chat(fmt: str, chat: dict[str, Any], body: dict[str, Any],
                       model: str, prompt_estimate: int = 0) -> dict[str, Any]:
    """A unary chat answer in format `fmt`, for the request `body` of that format
    (`prompt_estimate` stands in for the input tokens when the answer has no usage)."""
    _check(fmt)
    estimate = prompt_estimate
    if fmt == OPENAI_RESPONSE:
        return responses.response_from_chat(chat, body, estimate)
    if fmt == CLAUDE:
        return anthropic.message_from_chat(chat, model, estimate)
    if fmt == GEMINI:
        return gemini.response_from_chat(chat, model, estimate)
    return chat


def stream_from_chat(fmt: str, body: dict[str, Any], model: str,
                     prompt_estimate: int = 0) -> ChatStreamTranslator:
    """A per-stream state machine turning chat chunks into `fmt`'s events."""
    _check(fmt)
    if fmt == OPENAI_RESPONSE:
        return responses.ResponsesStream(body, model, prompt_estimate)
    if fmt == CLAUDE:
        return anthropic.AnthropicStream(model, prompt_estimate)
    if fmt == GEMINI:
        return gemini.GeminiStream(model, prompt_estimate)
    raise UnsupportedFormat("chat streams need no translation into chat")


def request_from_chat(fmt: str, chat: dict[str, Any]) -> dict[str, Any]:
    """A chat request in format `fmt`, for an upstream that speaks it."""
    _check(fmt)
    if fmt == OPENAI_RESPONSE:
        return upstream.chat_to_responses(chat)
    if fmt == CLAUDE:
        return upstream.chat_to_claude(chat)
    if fmt == GEMINI:
        return gemini.chat_to_gemini(chat)
    return chat


def response_to_chat(fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """An upstream's unary answer of format `fmt` as a chat answer (ConvertError when
    it is not one, or is that format's error object)."""
    _check(fmt)
    if fmt == OPENAI_RESPONSE:
        return upstream.responses_to_chat(body)
    if fmt == CLAUDE:
        return upstream.claude_to_chat(body)
    if fmt == GEMINI:
        return gemini.gemini_to_chat(body)
    return body


def stream_to_chat(fmt: str, model: str) -> upstream.UpstreamToChat:
    """A per-stream state machine turning `fmt`'s stream events into chat chunks."""
    _check(fmt)
    if fmt == OPENAI_RESPONSE:
        return upstream.ResponsesToChat(model)
    if fmt == CLAUDE:
        return upstream.ClaudeToChat(model)
    if fmt == GEMINI:
        return gemini.GeminiToChat(model)
    raise UnsupportedFormat("chat streams need no translation into chat")
