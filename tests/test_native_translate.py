"""Translation for native executors in a real gateway: the gateway's own translators
first, the plugins' translators where it has none, the normalizer chains around every
translation, the native `gemini` translator, and thinking appliers.

Real parts: gateway subprocesses (tests/conftest.py) with their default worker
processes; C plugins built by tools/build-native-plugins.sh and loaded unchanged from
their plugin folder: `c-lines` (tests/native/format_plugin.c: an executor speaking only
`x-lines`, a format no translator of the gateway knows, which also claims the thinking
of provider `gemini`), `c-gemini` (the same file built with GEMINI: an executor speaking
only `gemini`), `c-xlate` and `c-xlate2` (tests/native/translate_plugin.c: translators,
normalizers and thinking appliers, priorities 5 and 1) and `c-test` (an `openai`
executor); the official `openai` and `anthropic` clients and httpx over loopback.

Proven: an executor that declares only a format nobody translates is not routed and the
plugin list says why, while a `gemini`-only executor serves chat unary and streamed
through the native gemini translator (its request a real Gemini request, with
`SourceFormat` and `Format` naming gemini, `reasoning_effort` as its thinking budget,
its Gemini answer and stream back as chat with usage; the Anthropic and Responses doors
reach it too, through chat); with translator plugins loaded, the `x-lines` executor is
routed and serves unary and streamed chat: the normalizers chain over both plugins in
priority order on the client's body, the first plugin translator that answers wins
(c-xlate declines requests, so c-xlate2 translates them; c-xlate answers the responses,
so c-xlate2 is never asked), and a pair no plugin translates (`c-other`'s `x-other`) is
a 501 naming the formats, `response.normalize_before` and `normalize_after` chain around
the translation, per chunk in a stream; for the `gemini` executor the native translator
wins (no plugin `translate` call) and the normalizers still chain after it; disabling
the translator plugins in config.yaml takes the `x-lines` executor out of routing again,
with its reason, while the `gemini` one keeps serving (no plugin hook left to run); for
an executor that speaks the client's format no translate or normalize hook is called
(spec §9.3). Thinking: a chat request with `reasoning_effort`, a Responses request
with `reasoning.effort`, or an Anthropic request with `thinking` (a budget as the effort
it falls in, disabled as none), for the provider `c-gemini` reaches the higher-priority
applier (c-xlate, not c-xlate2) with CPA's Config, and its body reaches the executor; a request
without a setting, and the applier claiming a native provider name, are never asked.
Unit tests: negotiation with plugin translators, the thinking Config read from each
format, the applier tie-break by ID, and how a plugin translator's stream answer splits
into chat chunks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway
from harness import native

from aogstream.host.native.hooks import Hooks
from aogstream.host.native.negotiation import negotiate
from aogstream.host.native.thinking import applier, config_of
from aogstream.host.native.translate import chat_chunks

MESSAGES: list[Any] = [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hello norm-me"}]
LINES_SAID = "lines saw: hello norm-A-B markABab [by A]"
GEMINI_SAID = "gemini saw: hello norm-A-B | system: be brief markABab"


@pytest.fixture(scope="module")
def bare_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The two foreign-format executors and no translator plugin."""
    plugins = {"c-lines": 0, "c-gemini": 0}  # ID → priority
    with native.native_gateway(tmp_path_factory.mktemp("native-bare"), list(plugins),
                               native.enabled(*plugins, priority=plugins)) as gw:
        yield gw


@pytest.fixture(scope="module")
def xlate_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    plugins = {"c-test": 0, "c-lines": 0, "c-gemini": 0, "c-other": 0, "c-xlate": 5,
               "c-xlate2": 1}
    with native.native_gateway(tmp_path_factory.mktemp("native-xlate"), list(plugins),
                               native.enabled(*plugins, priority=plugins)) as gw:
        yield gw


events = native.native_events
wait_event = native.wait_event


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


def streamed(gw: Gateway, model: str, messages: list[Any]) -> tuple[str, str | None]:
    out = client(gw).chat.completions.create(model=model, messages=messages, stream=True)
    text, finish = "", None
    for chunk in out:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


def listed(gw: Gateway, name: str) -> dict[str, Any]:
    entries = httpx.get(f"{gw.url}/aog/v0.2/plugin/list", timeout=10).json()["data"]
    entry: dict[str, Any] = next(p for p in entries if p["name"] == name)
    return entry


# ---- no translator plugins ------------------------------------------------------------

def test_executor_no_translator_reaches_is_not_routed_and_says_why(bare_gw: Gateway) -> None:
    entry = listed(bare_gw, "c-lines")
    assert entry["services"] == [] and entry["state"] == "running"
    assert "x-lines" in entry["last_error"] and "not used" in entry["last_error"]
    with pytest.raises(openai.APIStatusError) as info:
        client(bare_gw).chat.completions.create(model="c-lines", messages=MESSAGES)
    assert 400 <= info.value.status_code < 500


def test_gemini_executor_serves_chat_through_the_native_translator(bare_gw: Gateway) -> None:
    assert listed(bare_gw, "c-gemini")["services"] == ["chat"]
    since = len(events(bare_gw))
    out = client(bare_gw).chat.completions.create(model="c-gemini", messages=MESSAGES,
                                                  max_tokens=50)
    assert out.choices[0].message.content == "gemini saw: hello norm-me | system: be brief mark"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (6, 4)
    # what the executor got is a Gemini request: contents, systemInstruction, config
    payload = wait_event(bare_gw, since, lambda e: e.startswith("gemini payload "))
    # the executor is told the format of its Payload and the one it answers in
    assert payload.startswith("gemini payload source=gemini format=gemini {")
    assert '"contents":[{"role":"user","parts":[{"text":"hello norm-me"}]}]' in payload
    assert '"systemInstruction":{"parts":[{"text":"be brief"}]}' in payload
    assert '"generationConfig":{"maxOutputTokens":50}' in payload
    text, finish = streamed(bare_gw, "c-gemini", MESSAGES)
    assert text == "gemini saw: hello norm-me | system: be brief mark"
    assert finish == "stop"
    # the client's reasoning setting reaches it as Gemini's thinking budget
    since = len(events(bare_gw))
    client(bare_gw).chat.completions.create(model="c-gemini", messages=MESSAGES,
                                            reasoning_effort="low")
    payload = wait_event(bare_gw, since, lambda e: e.startswith("gemini payload "))
    assert '"thinkingConfig":{"thinkingBudget":1024,"includeThoughts":true}' in payload


def test_gemini_executor_serves_the_anthropic_and_responses_doors(bare_gw: Gateway) -> None:
    """The other doors convert to chat first, then chat to Gemini."""
    ant = anthropic.Anthropic(base_url=bare_gw.url, api_key="unused", max_retries=0,
                              timeout=30)
    msg = ant.messages.create(model="c-gemini", max_tokens=50, system="be brief",
                              messages=[{"role": "user", "content": "hello there"}])
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "gemini saw: hello there | system: be brief mark"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (6, 4)
    with ant.messages.stream(model="c-gemini", max_tokens=50, system="be brief",
                             messages=[{"role": "user", "content": "hello there"}]) as s:
        assert "".join(s.text_stream) == "gemini saw: hello there | system: be brief mark"
    resp = client(bare_gw).responses.create(model="c-gemini", instructions="be brief",
                                            input="hello there")
    assert resp.output_text == "gemini saw: hello there | system: be brief mark"


# ---- with translator plugins ----------------------------------------------------------

def test_plugin_translators_make_a_foreign_executor_serve(xlate_gw: Gateway) -> None:
    entry = listed(xlate_gw, "c-lines")
    assert entry["services"] == ["chat"] and entry["last_error"] == ""
    since = len(events(xlate_gw))
    out = client(xlate_gw).chat.completions.create(model="c-lines", messages=MESSAGES)
    # normalizers A then B on the client's body, then B's translation (A declined); the
    # answer: before-chain A then B, A's translation (first that answers), after-chain
    assert out.choices[0].message.content == LINES_SAID
    assert out.usage is not None and out.usage.total_tokens == 5
    seen = [e for e in events(xlate_gw)[since:] if not e.startswith("gemini")]
    assert seen == [
        "A normalize openai->x-lines stream=0", "B normalize openai->x-lines stream=0",
        "A translate openai->x-lines stream=0", "B translate openai->x-lines stream=0",
        "A before x-lines->openai stream=0", "B before x-lines->openai stream=0",
        "A rtranslate x-lines->openai stream=0",
        "A after x-lines->openai stream=0", "B after x-lines->openai stream=0"]


def test_pair_no_plugin_translates_is_a_clear_error(xlate_gw: Gateway) -> None:
    # c-other is routed (translator plugins are loaded), but none handles x-other
    since = len(events(xlate_gw))
    with pytest.raises(openai.APIStatusError) as info:
        client(xlate_gw).chat.completions.create(model="c-other", messages=MESSAGES)
    assert info.value.status_code == 501
    assert "from openai into x-other" in str(info.value)
    seen = events(xlate_gw)[since:]
    assert "A translate openai->x-other stream=0" in seen
    assert "B translate openai->x-other stream=0" in seen


def test_plugin_translators_translate_each_stream_chunk(xlate_gw: Gateway) -> None:
    since = len(events(xlate_gw))
    text, finish = streamed(xlate_gw, "c-lines", MESSAGES)
    assert text == LINES_SAID and finish == "stop"
    seen = events(xlate_gw)[since:]
    assert "B translate openai->x-lines stream=1" in seen
    # the executor's three chunks, each through the before-chain and A's translator
    assert seen.count("A rtranslate x-lines->openai stream=1") == 3
    assert seen.count("B before x-lines->openai stream=1") == 3
    assert not any(e.startswith("B rtranslate") for e in seen)


def test_native_translator_wins_and_normalizers_chain_after_it(xlate_gw: Gateway) -> None:
    since = len(events(xlate_gw))
    out = client(xlate_gw).chat.completions.create(model="c-gemini", messages=MESSAGES)
    assert out.choices[0].message.content == GEMINI_SAID
    payload = wait_event(xlate_gw, since, lambda e: e.startswith("gemini payload "))
    assert '"text":"hello norm-A-B"' in payload  # normalized after native translation
    seen = events(xlate_gw)[since:]
    assert "A normalize openai->gemini stream=0" in seen
    assert "B normalize openai->gemini stream=0" in seen
    assert not any("translate" in e for e in seen), seen
    text, finish = streamed(xlate_gw, "c-gemini", MESSAGES)
    assert text == GEMINI_SAID and finish == "stop"


def test_no_translation_hooks_when_the_executor_speaks_the_clients_format(
        xlate_gw: Gateway) -> None:
    since = len(events(xlate_gw))
    out = client(xlate_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "echo-payload norm-me"}])
    assert "norm-me" in (out.choices[0].message.content or "")
    assert [e for e in events(xlate_gw)[since:] if e[:2] in ("A ", "B ")] == []


# ---- thinking ---------------------------------------------------------------------------

THINK: list[Any] = [{"role": "user", "content": "think-about-it"}]


@pytest.mark.parametrize(("door", "config"), [
    ("chat high", "mode=level level=high budget=0"),
    ("chat none", "mode=none level= budget=0"),
    ("responses low", "mode=level level=low budget=0"),
])
def test_thinking_applier_of_the_provider_rewrites_the_body(
        xlate_gw: Gateway, door: str, config: str) -> None:
    since = len(events(xlate_gw))
    kind, effort = door.split()
    if kind == "chat":  # the chat door: `reasoning_effort`
        out = client(xlate_gw).chat.completions.create(model="c-gemini", messages=THINK,
                                                       reasoning_effort=effort)  # type: ignore[arg-type]
        assert out.choices[0].message.content is not None
    else:  # the Responses door: `reasoning.effort`
        resp = client(xlate_gw).responses.create(model="c-gemini", input="think-about-it",
                                                 reasoning={"effort": effort})  # type: ignore[typeddict-item]
        assert resp.output_text
    payload = wait_event(xlate_gw, since, lambda e: e.startswith("gemini payload "))
    assert "thought-applied-A" in payload and "think-about-it" not in payload
    seen = events(xlate_gw)[since:]
    assert f"A thinking provider=c-gemini model=c-gemini {config}" in seen
    # the lower-priority applier of the same provider, and the one that claimed the
    # native name "gemini", are never asked
    assert not any(e.startswith(("B thinking", "lines thinking")) for e in seen)


@pytest.mark.parametrize(("thinking", "config"), [
    ({"type": "enabled", "budget_tokens": 2048}, "mode=level level=medium budget=0"),
    ({"type": "enabled", "budget_tokens": 16000}, "mode=level level=high budget=0"),
    ({"type": "disabled"}, "mode=none level= budget=0"),
])
def test_anthropic_thinking_reaches_the_applier_as_its_effort(
        xlate_gw: Gateway, thinking: Any, config: str) -> None:
    """The Messages door carries `thinking` into the chat form as the effort whose
    budget the upstream translator would send, so the applier is asked with it."""
    since = len(events(xlate_gw))
    ant = anthropic.Anthropic(base_url=xlate_gw.url, api_key="unused", max_retries=0,
                              timeout=30)
    msg = ant.messages.create(model="c-gemini", max_tokens=20000, thinking=thinking,
                              messages=[{"role": "user", "content": "think-about-it"}])
    assert msg.content[0].type == "text"
    payload = wait_event(xlate_gw, since, lambda e: e.startswith("gemini payload "))
    assert "thought-applied-A" in payload and "think-about-it" not in payload
    seen = events(xlate_gw)[since:]
    assert f"A thinking provider=c-gemini model=c-gemini {config}" in seen
    assert not any(e.startswith(("B thinking", "lines thinking")) for e in seen)


def test_thinking_applier_is_not_asked_without_a_setting(xlate_gw: Gateway) -> None:
    since = len(events(xlate_gw))
    client(xlate_gw).chat.completions.create(model="c-gemini", messages=THINK)
    payload = wait_event(xlate_gw, since, lambda e: e.startswith("gemini payload "))
    assert "think-about-it" in payload
    assert not any("thinking" in e for e in events(xlate_gw)[since:])


# ---- hot reload (last: it changes the gateway) ------------------------------------------

def test_disabling_the_translator_plugins_takes_the_foreign_executor_out(
        xlate_gw: Gateway) -> None:
    config = xlate_gw.workdir / "data" / "config.yaml"
    config.write_text(config.read_text().replace(
        "    c-xlate:\n      enabled: true", "    c-xlate:\n      enabled: false").replace(
        "    c-xlate2:\n      enabled: true", "    c-xlate2:\n      enabled: false"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the gateway applies the edit on its own
        entry = listed(xlate_gw, "c-lines")
        if entry["services"] == []:
            break
        time.sleep(0.1)
    assert entry["services"] == [] and "x-lines" in entry["last_error"], entry
    assert listed(xlate_gw, "c-gemini")["services"] == ["chat"]  # native: unaffected
    status = 200
    while time.monotonic() < deadline:  # every worker process follows the primary
        try:
            client(xlate_gw).chat.completions.create(model="c-lines", messages=MESSAGES)
        except openai.APIStatusError as exc:
            status = exc.status_code
            break
        time.sleep(0.1)
    assert 400 <= status < 500
    out = client(xlate_gw).chat.completions.create(model="c-gemini", messages=MESSAGES)
    assert out.choices[0].message.content == "gemini saw: hello norm-me | system: be brief mark"


# ---- unit tests -------------------------------------------------------------------------

@pytest.mark.parametrize(("ins", "outs", "requests", "answers", "chosen"), [
    (["x-lines"], ["x-lines"], False, False, None),
    (["x-lines"], ["x-lines"], True, False, None),
    (["x-lines"], ["x-lines"], True, True, ("x-lines", "x-lines")),
    (["x-lines", "claude"], ["x-lines", "claude"], True, True, ("claude", "claude")),
    (["x-lines"], ["x-lines", "gemini"], True, True, ("x-lines", "gemini")),
])
def test_negotiation_takes_plugin_translated_formats_only_as_a_fallback(
        ins: list[str], outs: list[str], requests: bool, answers: bool,
        chosen: tuple[str, str] | None) -> None:
    assert negotiate(ins, outs, plugin_requests=requests, plugin_answers=answers) == chosen


@pytest.mark.parametrize(("body", "config"), [
    (b'{"reasoning_effort": "Medium"}', {"Mode": "level", "Budget": 0, "Level": "medium"}),
    (b'{"reasoning": {"effort": "low"}}', {"Mode": "level", "Budget": 0, "Level": "low"}),
    (b'{"thinking": {"type": "enabled", "budget_tokens": 1024}}',
     {"Mode": "budget", "Budget": 1024, "Level": ""}),
    (b'{"thinking": {"type": "disabled"}}', {"Mode": "none", "Budget": 0, "Level": ""}),
    (b'{"thinking": {"type": "enabled", "budget_tokens": -1}}',
     {"Mode": "auto", "Budget": 0, "Level": ""}),
    (b'{"reasoning_effort": "auto"}', {"Mode": "auto", "Budget": 0, "Level": ""}),
    (b'{"messages": []}', None),
    (b"not json", None),
])
def test_thinking_config_is_read_from_each_format(body: bytes,
                                                  config: dict[str, Any] | None) -> None:
    assert config_of(body) == config


def test_thinking_applier_ties_go_to_the_lower_id() -> None:
    def plugin(pid: str, priority: int, key: str) -> Any:
        return SimpleNamespace(id=pid, priority=priority, state="running", thinking_key=key,
                               capabilities={"thinking_applier": True})

    plugins = [plugin("b", 1, "p"), plugin("a", 1, "p"), plugin("c", 0, "p"),
               plugin("z", 9, "other")]
    hooks = Hooks(lambda: plugins)
    assert applier(hooks, "p").id == "a"  # type: ignore[union-attr]
    plugins.append(plugin("y", 2, "p"))
    assert applier(hooks, "p").id == "y"  # type: ignore[union-attr]
    assert applier(hooks, "none") is None


def test_plugin_translator_stream_answers_split_into_chat_chunks() -> None:
    assert chat_chunks(b'{"a":1}') == [b'{"a":1}']
    assert chat_chunks(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    assert chat_chunks(b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n') == \
        [b'{"a":1}', b'{"b":2}']
    assert chat_chunks(b"event: x\r\ndata: {\"c\":3}\r\n\r\n") == [b'{"c":3}']
    assert chat_chunks(b"  ") == []
