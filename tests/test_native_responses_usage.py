"""A Responses-format (`openai-response`) native executor's usage reaches the client
complete (spec §3.1, CLIProxyAPI's `EnsureResponsesUsageDetails`) — in a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with its default worker processes;
the C plugin `c-resp` (tests/native/responses_plugin.c, built by
tools/build-native-plugins.sh, loaded unchanged): a model provider and an executor
declaring only `responses` (CPA's alias of `openai-response`) as input and output
format, which refuses any request that is not a Responses request and whose answers
(a `response` object; Responses events, the last two as SSE frames in one chunk) carry
a usage of only `input_tokens` 7 and `output_tokens` 5; the chat-speaking C plugin
`c-test` (model c-echo) beside it; the official `openai` client over loopback.

Proven: `client.responses.create` through `/v1/responses`, unary and streamed, reaches
the executor untranslated (its own response id, its events) and gets a complete usage:
`input_tokens_details.cached_tokens` 0, `output_tokens_details.reasoning_tokens` 0,
`total_tokens` 12, the executor's counts kept; the chat door reaches the same executor
(translated to a Responses request) with its usage as chat usage, unary and streamed; a
chat executor served through `/v1/responses` (the translated path) also answers complete
usage. Unit checks of `responses.complete_usage` and `complete_usage_in` (no gateway):
what is missing is filled, what is given is never overwritten, absent usage is not
invented, SSE and bare JSON forms are both handled, text without usage is returned as
the very same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import Gateway
from harness import native

from aogstream.convert import responses

SAID = "responses saw: hello there | instructions: be brief"
FULL = {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}


@pytest.fixture(scope="module")
def resp_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with native.native_gateway(tmp_path_factory.mktemp("native-responses"),
                               ["c-resp", "c-test"], native.enabled("c-resp", "c-test")) as gw:
        yield gw


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _usage(usage: Any) -> dict[str, Any]:
    assert usage is not None
    dumped: dict[str, Any] = usage.model_dump(exclude_unset=True)
    return dumped


def test_responses_door_unary_gets_complete_usage(resp_gw: Gateway) -> None:
    out = client(resp_gw).responses.create(model="c-resp", input="hello there",
                                           instructions="be brief")
    assert out.id == "resp_c1"  # the executor's own answer, untranslated
    assert out.output_text == SAID
    assert out.usage is not None
    assert out.usage.input_tokens_details.cached_tokens == 0
    assert out.usage.output_tokens_details.reasoning_tokens == 0
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens == 12
    assert _usage(out.usage) == FULL


def test_responses_door_streamed_completed_event_has_complete_usage(resp_gw: Gateway) -> None:
    stream = client(resp_gw).responses.create(model="c-resp", input="hello there",
                                              instructions="be brief", stream=True)
    kinds: list[str] = []
    text = ""
    completed = None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            completed = event
    assert text == SAID
    assert kinds == ["response.created", "response.output_item.added",
                     "response.output_text.delta", "response.output_text.delta",
                     "response.output_item.done", "response.completed"]
    assert completed is not None and completed.response.id == "resp_s1"
    usage = completed.response.usage
    assert usage is not None
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens == 12
    assert _usage(usage) == FULL


MESSAGES: list[Any] = [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hello there"}]


def test_chat_door_reaches_the_responses_executor_with_usage(resp_gw: Gateway) -> None:
    out = client(resp_gw).chat.completions.create(model="c-resp", messages=MESSAGES)
    assert out.choices[0].message.content == SAID
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens,
            out.usage.total_tokens) == (7, 5, 12)
    stream = client(resp_gw).chat.completions.create(
        model="c-resp", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text == SAID
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 5, 12)


def test_responses_door_to_a_chat_executor_gets_complete_usage(resp_gw: Gateway) -> None:
    """The translated path (chat executor → Responses client) builds complete usage."""
    out = client(resp_gw).responses.create(model="c-echo", input="hi")
    assert _usage(out.usage) == {
        "input_tokens": 1, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 4}
    completed = [e for e in client(resp_gw).responses.create(model="c-echo", input="hi",
                                                             stream=True)
                 if e.type == "response.completed"]
    assert len(completed) == 1
    usage = completed[0].response.usage
    assert usage is not None
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


# ---- unit checks of the normalising functions (no gateway) ----------------------------

@pytest.mark.parametrize(("given", "want"), [
    ({"input_tokens": 7, "output_tokens": 5}, FULL),
    ({}, {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
          "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
          "total_tokens": 0}),
    # what the executor gave is kept, even a total that is not the sum
    ({"input_tokens": 7, "output_tokens": 5, "total_tokens": 20,
      "input_tokens_details": {"cached_tokens": 3, "audio_tokens": 1},
      "output_tokens_details": {"reasoning_tokens": 2}},
     {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 3, "audio_tokens": 1},
      "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2},
      "total_tokens": 20}),
    # details present without their counter, nulls and non-counts filled
    ({"input_tokens": 4, "output_tokens": None, "input_tokens_details": {},
      "output_tokens_details": None, "extra": "kept"},
     {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 4,
      "extra": "kept"}),
])
def test_complete_usage_fills_only_what_is_missing(given: dict[str, Any],
                                                  want: dict[str, Any]) -> None:
    before = json.dumps(given)
    assert responses.complete_usage(given) == want
    assert json.dumps(given) == before  # pure: the argument is not changed


def test_complete_usage_returns_a_complete_usage_itself() -> None:
    assert responses.complete_usage(FULL) is FULL


def test_complete_usage_in_a_unary_answer() -> None:
    answer = {"id": "resp_1", "object": "response", "output": [],
              "usage": {"input_tokens": 7, "output_tokens": 5}}
    out = json.loads(responses.complete_usage_in(json.dumps(answer).encode()))
    assert out == dict(answer, usage=FULL)
    assert list(out) == list(answer)  # the answer's own field order


def test_complete_usage_in_sse_frames_and_bare_events() -> None:
    completed = {"type": "response.completed",
                 "response": {"id": "r", "usage": {"input_tokens": 7, "output_tokens": 5}}}
    sse = (b"event: response.output_text.done\ndata: {\"type\":\"x\",\"text\":\"a\"}\n\n"
           b"event: response.completed\r\ndata: " + json.dumps(completed).encode()
           + b"\r\n\r\n")
    out = responses.complete_usage_in(sse)
    frames = out.split(b"\n")
    assert frames[:3] == sse.split(b"\n")[:3]  # the event without usage, untouched
    assert frames[3] == b"event: response.completed\r"
    assert frames[4].startswith(b"data: ") and frames[4].endswith(b"\r")
    assert json.loads(frames[4][6:])["response"]["usage"] == FULL
    bare = json.dumps(completed).encode()
    assert json.loads(responses.complete_usage_in(bare))["response"]["usage"] == FULL


@pytest.mark.parametrize("payload", [
    b'{"type":"response.output_text.delta","delta":"hi"}',  # no usage: not parsed
    b'{"type":"response.created","response":{"usage":null}}',  # null usage: not invented
    b'{"object":"response.compaction","usage":{"input_tokens":1}}',  # left alone, as CPA
    b'data: {"usage": not json',  # unparsable: relayed as it is
    json.dumps({"usage": FULL}).encode(),  # complete already
])
def test_complete_usage_in_leaves_these_as_the_same_bytes(payload: bytes) -> None:
    assert responses.complete_usage_in(payload) is payload
