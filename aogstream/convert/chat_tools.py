"""Chat tool calls and streamed usage where the flavor templates cannot reach: state.

The templates map one body to one body. Three things about chat need more:

- OpenAI's `stream_options.include_usage`: every chunk carries `"usage": null`, and
  after the chunk with the finish reason one more chunk with `"choices": []` carries
  the usage. The provider's own counts are used when it reports them (llama.cpp does);
  otherwise the gateway counts: the streamed chunks that carried text or a tool call
  (engines stream one token per chunk) and the prompt's characters / 4.
- Ollama's tool calls: `arguments` is a JSON object, not a string, there are no call
  ids, and a streamed call arrives whole in one line. So an Ollama app's history is
  given ids (`call_<n>`, matched to `tool` results by `tool_name` or by order), and
  the OpenAI-style fragments other providers stream are joined and sent whole on the
  line with `done: true`; the other way round, an Ollama provider's calls get ids and
  indexes that stay stable across the stream.
- A provider that cannot express what was asked (Ollama has no `tool_choice`) gets a
  clear 400 instead of a silently dropped field.

Per-chunk work stays small: chunks without the fields concerned are recognised by a
byte search and pass untouched (or get `"usage":null` spliced in), so only the rare
chunks with tool calls or usage are parsed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, overload

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
USAGE_KEY = b'"usage"'
TOOL_CALLS_KEY = b'"tool_calls"'
NOT_FINISHED = b'"finish_reason":null'
CHARS_PER_TOKEN = 4


class ToolChoiceError(ValueError):
    """A tool request the provider's format cannot carry; the message says what to send."""


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _loads(body: bytes) -> Any:
    """The body's JSON, or None when it is not JSON (it then passes as it is)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def estimate_prompt_tokens(request: dict[str, Any]) -> int:
    """The gateway's own prompt count when the provider reports none: characters / 4 of
    the messages' text (and of the tool declarations, which the engine also reads)."""
    chars = 0
    for msg in request.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        for call in msg.get("tool_calls") or []:
            chars += len(json.dumps(call))
    if request.get("tools"):
        chars += len(json.dumps(request["tools"]))
    return max(1, -(-chars // CHARS_PER_TOKEN))


def wants_usage(request: dict[str, Any]) -> bool:
    """Did an OpenAI chat request ask for the closing usage chunk?"""
    opts = request.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


class OpenAIUsageStream:
    """`stream_options.include_usage` for one converted OpenAI chat stream.

    `convert` takes each chunk as the templates made it; the closing usage chunk and
    `[DONE]` come from `epilogue`, which the stream writer reads once the stream ended
    (so a provider's usage that follows its finish chunk is still counted)."""

    def __init__(self, prompt_estimate: int, done: Sequence[bytes]) -> None:
        self.prompt_estimate = prompt_estimate
        self.done = list(done)
        self.streamed = 0  # chunks that carried text or a tool call
        self.usage: dict[str, Any] | None = None
        self.head: dict[str, Any] = {}
        self.finished = False

    def convert(self, chunk: bytes | None) -> bytes | None:
        """One chunk with `"usage":null`; usage-only and repeated finish chunks are
        kept for the closing chunk instead of being sent."""
        if chunk is None:
            return None
        finishing = NOT_FINISHED not in chunk
        if not finishing and USAGE_KEY not in chunk and not self.finished:
            self.streamed += 1
            if chunk.endswith(b"}"):
                return chunk[:-1] + b',"usage":null}'
        obj = _loads(chunk)
        if not isinstance(obj, dict):
            return chunk
        usage = obj.pop("usage", None)
        if isinstance(usage, dict):
            self.usage = usage
        choices = obj.get("choices")
        if self.finished or not choices:
            return None  # the provider's own usage chunk, or a repeated finish
        if not finishing:
            self.streamed += 1
        else:
            self.finished = True
            self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                self.streamed += 1
        obj["usage"] = None
        return _dumps(obj)

    def closing(self) -> bytes:
        """The usage chunk: the provider's counts, else the gateway's."""
        usage = self.usage
        if not (isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int)):
            prompt, completion = self.prompt_estimate, self.streamed
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}
        head = self.head or {"object": "chat.completion.chunk"}
        return _dumps({**head, "object": "chat.completion.chunk", "choices": [],
                       "usage": usage})

    @property
    def epilogue(self) -> _Closing:
        return _Closing(self)


class _Closing(Sequence[bytes]):
    """The epilogue, computed when the writer reads it (after the last chunk)."""

    def __init__(self, stream: OpenAIUsageStream) -> None:
        self._stream = stream

    def _items(self) -> list[bytes]:
        return [self._stream.closing(), *self._stream.done]

    def __len__(self) -> int:
        return 1 + len(self._stream.done)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        return self._items()[i]


# ---------------------------------------------------------------- Ollama


def _arguments_object(arguments: Any) -> Any:
    """OpenAI's arguments string as Ollama's object (an unparsable string stays as is)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def _arguments_string(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(
        arguments if arguments is not None else {}, ensure_ascii=False)


def ollama_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped whole tool calls → Ollama's `{"function": {"name", "arguments"}}`."""
    out = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.append({"function": {"name": fn.get("name") or "",
                                     "arguments": _arguments_object(fn.get("arguments"))}})
    return out


def openai_calls(calls: Any, first: int = 0) -> list[dict[str, Any]]:
    """Ollama's tool calls → OpenAI's, with ids `call_<n>` and indexes from `first`."""
    out = []
    for n, call in enumerate(calls if isinstance(calls, list) else (), start=first):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.append({"index": n, "id": call.get("id") or f"call_{n}", "type": "function",
                        "function": {"name": fn.get("name") or "",
                                     "arguments": _arguments_string(fn.get("arguments"))}})
    return out


def ollama_history_to_openai(messages: Any) -> Any:
    """An Ollama app's messages in the OpenAI shapes every provider gets: assistant calls
    with ids and string arguments, each `tool` result with the `tool_call_id` of the call
    it answers (by `tool_name`, else the next unanswered call)."""
    if not isinstance(messages, list):
        return messages
    out: list[Any] = []
    open_calls: list[tuple[str, str]] = []  # (id, name) not yet answered
    n = 0
    for msg in messages:
        if not isinstance(msg, dict):
            out.append(msg)
            continue
        calls = msg.get("tool_calls")
        if msg.get("role") == "assistant" and isinstance(calls, list) and calls:
            converted = openai_calls(calls, n)
            for c in converted:
                c.pop("index", None)
                open_calls.append((c["id"], c["function"]["name"]))
            n += len(converted)
            msg = {**msg, "tool_calls": converted}
        elif msg.get("role") == "tool" and "tool_call_id" not in msg:
            name = msg.get("tool_name") or msg.get("name")
            match = next((c for c in open_calls if c[1] == name), None) or \
                (open_calls[0] if open_calls else None)
            if match is not None:
                open_calls.remove(match)
                msg = {**msg, "tool_call_id": match[0]}
        out.append(msg)
    return out


def openai_history_to_ollama(messages: Any) -> Any:
    """The other way, for Ollama providers: object arguments and `tool_name` on results."""
    if not isinstance(messages, list):
        return messages
    names: dict[str, str] = {}
    out: list[Any] = []
    for msg in messages:
        if isinstance(msg, dict) and msg.get("tool_calls"):
            for call in msg["tool_calls"] if isinstance(msg["tool_calls"], list) else ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    names[str(call.get("id"))] = call["function"].get("name") or ""
            msg = {**msg, "tool_calls": ollama_calls(msg["tool_calls"])}
        elif isinstance(msg, dict) and msg.get("role") == "tool" and "tool_name" not in msg:
            name = names.get(str(msg.get("tool_call_id")))
            if name:
                msg = {**msg, "tool_name": name}
        out.append(msg)
    return out


def ollama_request_to_aog(aog: dict[str, Any]) -> bool:
    """Give an Ollama app's converted request OpenAI-shaped tool history (in place);
    True when anything changed."""
    messages = aog.get("messages")
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool")
            for m in messages):
        return False
    aog["messages"] = ollama_history_to_openai(messages)
    return True


def aog_request_to_ollama(body: bytes) -> bytes:
    """An Ollama provider's request: tool history in Ollama's shapes, and a 400 for a
    `tool_choice` Ollama cannot express (it has none: the model always decides)."""
    if TOOL_CALLS_KEY not in body and b'"tool"' not in body and b"tool_choice" not in body:
        return body
    obj = _loads(body)
    if not isinstance(obj, dict):
        return body
    choice = obj.pop("tool_choice", None)
    if choice not in (None, "auto") and not (choice == "none" and not obj.get("tools")):
        raise ToolChoiceError(
            f"this provider speaks Ollama's API, which has no tool_choice, so "
            f"tool_choice {json.dumps(choice)} cannot be honoured; send tool_choice \"auto\" "
            f"(or none), or leave out the tools you do not want called")
    obj["messages"] = openai_history_to_ollama(obj.get("messages"))
    return _dumps(obj)


def ollama_answer_from_aog(body: bytes) -> bytes:
    """An Ollama app's unary answer: whole calls with object arguments."""
    if TOOL_CALLS_KEY not in body:
        return body
    obj = _loads(body)
    msg = obj.get("message") if isinstance(obj, dict) else None
    if not isinstance(msg, dict) or not msg.get("tool_calls"):
        return body
    msg["tool_calls"] = ollama_calls(msg["tool_calls"])
    return _dumps(obj)


class OllamaToolCallStream:
    """An Ollama app's stream: OpenAI-style call fragments are joined and sent whole,
    with object arguments, on the `done` line."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def convert(self, chunk: bytes | None) -> bytes | None:
        if chunk is None or (TOOL_CALLS_KEY not in chunk and not self.calls):
            return chunk
        obj = _loads(chunk)
        if not isinstance(obj, dict):
            return chunk
        msg = obj.get("message")
        if isinstance(msg, dict):
            for d in msg.pop("tool_calls", None) or ():
                if not isinstance(d, dict):
                    continue
                raw_index = d.get("index")
                index = raw_index if isinstance(raw_index, int) else len(self.calls)
                raw_fn = d.get("function")
                fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
                call = self.calls.setdefault(index, {"name": "", "arguments": ""})
                call["name"] = call["name"] or fn.get("name") or ""
                args = fn.get("arguments")
                if isinstance(args, str):
                    call["arguments"] += args
                elif args is not None:  # already whole (an Ollama-shaped call)
                    call["arguments"] = _arguments_string(args)
        if not obj.get("done"):
            if isinstance(msg, dict) and not msg.get("content") and not msg.get("thinking"):
                return None  # a fragment-only line: its call goes out whole at the end
            return _dumps(obj)
        if self.calls:
            msg = obj.setdefault("message", {"role": "assistant", "content": ""})
            msg["tool_calls"] = [
                {"function": {"name": c["name"], "arguments": _arguments_object(c["arguments"])}}
                for _, c in sorted(self.calls.items())]
            self.calls = {}
        return _dumps(obj)


class OllamaProviderCalls:
    """An Ollama provider's calls (whole, without ids, object arguments) as the
    OpenAI-style calls of AOG's shape, numbered across one stream, before the templates
    convert the line; the `done` line of an answer that called tools gets the finish
    reason `tool_calls`, which Ollama does not have."""

    def __init__(self) -> None:
        self.next = 0

    def convert(self, chunk: bytes) -> bytes:
        if TOOL_CALLS_KEY not in chunk and not (self.next and b'"done":true' in chunk):
            return chunk
        obj = _loads(chunk)
        if not isinstance(obj, dict):
            return chunk
        msg = obj.get("message")
        if isinstance(msg, dict) and msg.get("tool_calls"):
            calls = openai_calls(msg["tool_calls"], self.next)
            self.next += len(calls)
            msg["tool_calls"] = calls
        if obj.get("done") and self.next and obj.get("done_reason") in (None, "stop"):
            obj["done_reason"] = "tool_calls"
        return _dumps(obj)
