"""Which formats a native executor is spoken to in (CPA's format negotiation, spec §3.1).

A native executor declares the formats it reads and writes; the gateway's doors speak
OpenAI chat to every native provider (its `config_ref` flavor), so the executor gets
chat as is when it declares `openai`, else a format the translators in
`aogstream.convert` reach (CPA's native translators), else — only when a loaded plugin
declares a `request_translator` (and, for the answer, a `response_translator`) — the
first declared format, left to the plugins' translators (spec §3.2, "native first,
plugins fill gaps"; module `translate`). A pure table and functions, apart from the
library handling (`plugin`) and the serving (`provider`) that both need them.
"""

from __future__ import annotations

from aogstream.convert import formats

# CPA's executor format aliases (adapters.go normalizeExecutorFormatName)
FORMAT_ALIASES = {
    "chat-completions": "openai", "chat_completions": "openai",
    "openai-chat-completions": "openai", "openai_chat_completions": "openai",
    "responses": "openai-response", "openai-responses": "openai-response",
    "openai_responses": "openai-response", "anthropic": "claude",
}
# the client protocol of every native executor (its `config_ref` flavor): the doors
# convert to and from OpenAI chat
CLIENT_FORMAT = formats.OPENAI


def normalize_format(name: str) -> str:
    name = name.strip().lower()
    return FORMAT_ALIASES.get(name, name)


def native(fmt: str) -> bool:
    """Whether the gateway itself translates between `fmt` and the client's format."""
    return fmt in formats.TRANSLATED


def negotiate(ins: list[str], outs: list[str], *, plugin_requests: bool = False,
              plugin_answers: bool = False) -> tuple[str, str] | None:
    """The (request, answer) formats of an executor for an `openai` client (spec §3.1):
    the client's format when declared, else the first declared one aogstream
    translates; the answer in the client's format when declared, else in the request's
    format when aogstream translates it back, else the first translatable one. Native
    translators first: only when none fits, and a plugin translates that direction
    (`plugin_requests`, `plugin_answers`), the first declared format. None: no usable
    pair."""
    def pick(declared: list[str], prefer: list[str], plugins: bool) -> str:
        for fmt in prefer:
            if fmt in declared and (fmt == CLIENT_FORMAT or native(fmt)):
                return fmt
        found = next((f for f in declared if native(f)), "")
        return found or (declared[0] if plugins and declared else "")

    request = pick(ins, [CLIENT_FORMAT], plugin_requests)
    answer = pick(outs, [CLIENT_FORMAT, request], plugin_answers) if request else ""
    return (request, answer) if request and answer else None
