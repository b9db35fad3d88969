"""Reading an OpenAI chat stream, chunk by chunk, for translators into other formats.

A chat stream is a sequence of `chat.completion.chunk` objects whose first choice's
`delta` carries text (`content`) or tool-call fragments (`tool_calls[i]`, joined by
`index`; `id` and `name` come once, with the first fragment), then a `finish_reason`,
and (with `include_usage`) a last chunk with `usage` and no choices. Other formats'
streams (Responses' typed events, Anthropic's content blocks) need a state machine over
that: one chunk may open a block and fill it, switching from text to a call closes the
open block, counters and accumulated text persist. `ChatStreamTranslator` does the
reading once; a subclass says what each step emits. Pure Python on dicts, no template
engine: this runs once per streamed token.
"""

from __future__ import annotations

from typing import Any

from aogstream.convert.chat_form import new_id, usage_counts

Event = dict[str, Any]


class ToolCall:
    """One tool call being streamed: its chat index, id, name and argument fragments."""

    __slots__ = ("arguments", "call_id", "closed", "extra", "name", "slot")

    def __init__(self, call_id: str, name: str, slot: int) -> None:
        self.call_id = call_id
        self.name = name
        self.slot = slot  # the output position (block index / output_index) it got
        self.arguments: list[str] = []
        self.closed = False
        self.extra: dict[str, Any] = {}  # per-format state (e.g. the Responses item id)

    def args(self) -> str:
        return "".join(self.arguments)


class ChatStreamTranslator:
    """Folds chat chunks into another format's events; subclasses emit the events.

    `feed(chunk)` returns the events that chunk causes, `finish()` the closing ones
    (call it once the chat stream has ended), `fail(message)` a terminal error event.
    Usage: the engine's counts when a chunk carries them, else the prompt estimate
    given at construction and one token per content or argument fragment received.
    """

    def __init__(self, prompt_estimate: int = 0) -> None:
        self.prompt_estimate = prompt_estimate
        self.text_parts: list[str] = []
        self.text_open = False
        self.text_slot = 0
        self.text_start = 0  # where the open text block's parts begin in text_parts
        self.calls: dict[int, ToolCall] = {}
        self.order: list[ToolCall] = []
        self.open_call: ToolCall | None = None
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self.fragments = 0
        self.slots = 0  # output positions used so far (text block or call each take one)

    def start(self) -> list[Event]:
        """The events that open the stream, before the first chunk (each format's own)."""
        raise NotImplementedError

    # ---- reading chat chunks ------------------------------------------------------

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events one chat chunk causes (often one, sometimes none or several)."""
        out: list[Event] = []
        usage = usage_counts(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return out
        choice = choices[0]
        if not isinstance(choice, dict):
            return out
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if text and isinstance(text, str):
                if self.open_call is not None:
                    self._close_call(out)
                if not self.text_open:
                    self.text_open = True
                    self.text_start = len(self.text_parts)
                    self.text_slot = self.slots
                    self.slots += 1
                    self.open_text(out)
                self.text_parts.append(text)
                self.fragments += 1
                self.text_delta(text, out)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for tc in calls:
                    if isinstance(tc, dict):
                        self._tool_fragment(tc, out)
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
        return out

    def _tool_fragment(self, tc: dict[str, Any], out: list[Event]) -> None:
        index = tc.get("index")
        if not isinstance(index, int):
            index = len(self.calls) if tc.get("id") else max(self.calls, default=0)
        fn = tc.get("function")
        if not isinstance(fn, dict):
            fn = {}
        call = self.calls.get(index)
        if call is None:
            if self.text_open:
                self.text_open = False
                self.close_text(out)
            if self.open_call is not None:
                self._close_call(out)
            call = ToolCall(tc.get("id") or new_id("call_"), fn.get("name") or "", self.slots)
            self.slots += 1
            self.calls[index] = call
            self.order.append(call)
            self.open_call = call
            self.open_tool(call, out)
        elif not call.name and fn.get("name"):
            call.name = fn["name"]
        frag = fn.get("arguments")
        if frag and isinstance(frag, str):
            call.arguments.append(frag)
            self.fragments += 1
            if not call.closed:  # a late fragment of a closed call: kept, not re-emitted
                self.tool_delta(call, frag, out)

    def _close_call(self, out: list[Event]) -> None:
        call = self.open_call
        if call is not None:
            self.open_call = None
            call.closed = True
            self.close_tool(call, out)

    def finish(self) -> list[Event]:
        """The events that close the stream after the last chat chunk."""
        out: list[Event] = []
        if self.text_open:
            self.text_open = False
            self.close_text(out)
        self._close_call(out)
        self.end(out)
        return out

    def counts(self) -> tuple[int, int]:
        """(input, output) tokens: the engine's, else estimated."""
        if self.usage is not None:
            return self.usage
        return self.prompt_estimate, self.fragments  # a fragment is about one token

    def text(self) -> str:
        """All the text streamed so far (every text block)."""
        return "".join(self.text_parts)

    def block_text(self) -> str:
        """The text of the open (or just closed) text block: a model may write text
        again after a call, which becomes a block (or item) of its own."""
        return "".join(self.text_parts[self.text_start:])

    # ---- what a format emits (subclasses) -----------------------------------------

    def open_text(self, out: list[Event]) -> None:
        raise NotImplementedError

    def text_delta(self, text: str, out: list[Event]) -> None:
        raise NotImplementedError

    def close_text(self, out: list[Event]) -> None:
        raise NotImplementedError

    def open_tool(self, call: ToolCall, out: list[Event]) -> None:
        raise NotImplementedError

    def tool_delta(self, call: ToolCall, fragment: str, out: list[Event]) -> None:
        raise NotImplementedError

    def close_tool(self, call: ToolCall, out: list[Event]) -> None:
        raise NotImplementedError

    def end(self, out: list[Event]) -> None:
        raise NotImplementedError

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        raise NotImplementedError
