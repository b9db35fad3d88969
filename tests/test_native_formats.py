"""Format negotiation for native executors that do not speak `openai` (spec §3.1), and
`executor.count_tokens` behind `/v1/messages/count_tokens` — in a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with its default worker processes;
the C plugin `c-claude` (tests/native/claude_plugin.c, built by
tools/build-native-plugins.sh, loaded unchanged): a model provider and an executor
declaring only `anthropic` (CPA's alias of `claude`) as input and output format, which
refuses any request that is not an Anthropic Messages request and answers Anthropic
`message` JSON, Anthropic SSE events, and its own token count; the official `openai`
and `anthropic` clients and httpx over loopback.

Proven: a chat request through `/v1/chat/completions` reaches the executor as an
Anthropic request (system prompt in `system`, the user's text as a text block,
`max_tokens` set) and its Anthropic answer comes back as an OpenAI chat completion
with its usage, unary and streamed (Anthropic events, two of them in one chunk, become
chat chunks ending in `finish_reason: stop`); `/v1/messages` (the Anthropic SDK, unary
and streamed) reaches the same executor without translation, since it speaks the
client's format: the body as sent, the plugin's own message and events back;
`/v1/messages/count_tokens` for its model answers the plugin's own count, not the
gateway's estimate, from the request exactly as the client sent it (untranslated, as
on `/v1/messages`), while a model no native executor serves is still estimated for;
the plugin is listed as serving chat. A unit check of `negotiate` (no gateway) pins
the order in which request and answer formats are chosen.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway
from harness import native

from aogstream.host.native.negotiation import negotiate

BUILT = native.BUILT  # the names other modules import
_arch = native.arch
SAID = "claude saw: hello there | system: be brief"


@pytest.fixture(scope="module")
def claude_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with native.native_gateway(tmp_path_factory.mktemp("native-formats"), ["c-claude"],
                               native.enabled("c-claude")) as gw:
        yield gw


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)


MESSAGES: list = [{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "hello there"}]


def test_claude_executor_is_listed_as_serving_chat(claude_gw: Gateway) -> None:
    listed = httpx.get(f"{claude_gw.url}/aog/v0.2/plugin/list", timeout=10).json()
    entry = next(p for p in listed["data"] if p["name"] == "c-claude")
    assert entry["services"] == ["chat"] and entry["last_error"] == ""


def test_chat_door_reaches_a_claude_executor_unary(claude_gw: Gateway) -> None:
    out = client(claude_gw).chat.completions.create(model="c-claude", messages=MESSAGES)
    assert out.choices[0].message.content == SAID
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7, 5)


def test_chat_door_reaches_a_claude_executor_streamed(claude_gw: Gateway) -> None:
    stream = client(claude_gw).chat.completions.create(
        model="c-claude", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    text, finish, pieces = "", None, 0
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                pieces += 1
            finish = choice.finish_reason or finish
    assert text == SAID
    assert pieces == 2  # the plugin's two text deltas, relayed as two chunks
    assert finish == "stop"


def test_messages_door_serves_a_claude_executor_untranslated(claude_gw: Gateway) -> None:
    ant = anthropic.Anthropic(base_url=claude_gw.url, api_key="unused", max_retries=0,
                              timeout=30)
    blocks = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    msg = ant.messages.create(model="c-claude", max_tokens=50, system="be brief",
                              messages=blocks)
    assert msg.content[0].type == "text" and msg.content[0].text == SAID
    assert msg.id == "msg_c1"  # the plugin's own message, not one rebuilt from chat
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 5)
    # the request reaches it as sent: a string content stays a string (no text block)
    plain = ant.messages.create(model="c-claude", max_tokens=50, system="be brief",
                                messages=[{"role": "user", "content": "hello there"}])
    assert plain.content[0].text == "claude saw:  | system: be brief"
    with ant.messages.stream(model="c-claude", max_tokens=50, system="be brief",
                             messages=blocks) as s:
        assert "".join(s.text_stream) == SAID
        final = s.get_final_message()
    assert final.id == "msg_s1" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


def test_count_tokens_asks_the_native_executor(claude_gw: Gateway) -> None:
    blocks = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    r = httpx.post(f"{claude_gw.url}/v1/messages/count_tokens",
                   json={"model": "c-claude", "messages": blocks}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"input_tokens": 1000 + len("hello there")}
    # the executor speaks the client's format: it gets the request as sent, untranslated
    # (a string content stays a string, so the plugin finds no text block: 1000)
    ant = anthropic.Anthropic(base_url=claude_gw.url, api_key="unused", max_retries=0,
                              timeout=30)
    counted = ant.messages.count_tokens(
        model="c-claude", messages=[{"role": "user", "content": "hello there"}])
    assert counted.input_tokens == 1000


def test_count_tokens_estimates_for_other_models(claude_gw: Gateway) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hello there"}]}
    r = httpx.post(f"{claude_gw.url}/v1/messages/count_tokens", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert 0 < r.json()["input_tokens"] < 1000


@pytest.mark.parametrize(("ins", "outs", "chosen"), [
    (["openai", "claude"], ["claude", "openai"], ("openai", "openai")),
    (["claude"], ["claude"], ("claude", "claude")),
    (["codex", "openai-response"], ["claude", "openai-response"],
     ("openai-response", "openai-response")),
    (["claude"], ["codex", "openai-response"], ("claude", "openai-response")),
    (["claude"], ["openai"], ("claude", "openai")),
    (["gemini"], ["gemini"], ("gemini", "gemini")),
    (["codex"], ["codex"], None),
    ([], ["openai"], None),
])
def test_negotiation_follows_cpa_order(ins: list[str], outs: list[str],
                                       chosen: tuple[str, str] | None) -> None:
    """Unit check of `negotiate` (no gateway): the client's `openai` when declared,
    else the first translatable format; the answer in the client's format, else the
    request's, else the first translatable one."""
    assert negotiate(ins, outs) == chosen
