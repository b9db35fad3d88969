"""The request pipeline hooks of native plugins, run by a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with its default worker
processes; two C plugins built by tools/build-native-plugins.sh and loaded unchanged
from its plugin folder: `c-test` (tests/native/test_plugin.c: models and an executor,
which echoes what reached it when asked) and `c-hooks` (tests/native/hooks_plugin.c: a
model router, request, response and stream-chunk interceptors, usage and lifecycle
plugins, speaking schema 3); the official `openai` client and raw sockets over loopback.

Proven: a request interceptor rewrites the body and headers the executor gets
(`intercept_before` without a target format, `intercept_after` with it) and one that
terminates answers the client with its own status and message; a response interceptor
rewrites a unary answer; the stream-chunk interceptor gets a header-only call first,
rewrites and drops chunks, sees the history of the chunks sent, and (schema 3) gets no
request bodies on chunk calls; a model router sends a model to another plugin's
executor under a new model name, and an invalid target falls through to the model's
own executor; `usage.handle` gets each request's tokens, failures marked; and
`request.complete` reports succeeded, failed, rejected and canceled — the last after
the client left, so its delivery is not cancelled with the request. Unit tests: the
usage detail read from an OpenAI body, Go's RFC 3339 times, CPA's header merge.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import openai
import pytest
from conftest import Gateway
from harness import native

from aogstream.host.native.hooks import _header_merge, rfc3339, usage_detail

BUILT = native.BUILT  # the names other modules import
_arch = native.arch


@pytest.fixture(scope="module")
def hooks_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = native.enabled("c-test") + "    c-hooks:\n      enabled: true\n      priority: 5\n"
    with native.native_gateway(tmp_path_factory.mktemp("native-hooks"), ["c-test", "c-hooks"],
                               config) as gw:
        yield gw


events = native.native_events


def wait_event(gw: Gateway, since: int, match: Callable[[str], bool],
               timeout: float = 10) -> str:
    """The first event after the first `since` lines that `match`es (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in events(gw)[since:]:
            if match(line):
                return line
        time.sleep(0.02)
    pytest.fail(f"no matching event; events since: {events(gw)[since:]}")


def oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


def ask(gw: Gateway, model: str, text: str) -> str:
    out = oai(gw).chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": text}])
    return out.choices[0].message.content or ""


# ---- request interceptors ----------------------------------------------------------------

def test_request_interceptor_rewrites_the_body_and_headers_the_executor_gets(
        hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    answer = ask(hooks_gw, "c-echo", "echo-payload rewrite-me")
    assert "rewritten" in answer and "rewrite-me" not in answer, answer
    assert "[X-Hooked]" in answer and "[X-Hooked-After]" in answer, answer
    # before credential selection there is no target format yet; after, there is
    assert wait_event(hooks_gw, since, lambda e: e.startswith("before ")) == "before to="
    assert wait_event(hooks_gw, since, lambda e: e.startswith("after ")) == "after to=openai"


def test_terminating_interceptor_answers_with_its_own_status_and_message(
        hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            out = oai(hooks_gw).chat.completions.create(
                model="c-echo", messages=[{"role": "user", "content": "please-terminate"}],
                stream=stream)
            list(out) if stream else None  # type: ignore[call-overload]
        assert info.value.status_code == 451
        assert "blocked by c-hooks" in str(info.value)
    wait_event(hooks_gw, since, lambda e: e == "complete c-echo rejected 451")


# ---- response interceptors ---------------------------------------------------------------

def test_response_interceptor_rewrites_a_unary_answer(hooks_gw: Gateway) -> None:
    assert ask(hooks_gw, "c-echo", "hi") == "HELLO FROM C (intercepted)"


def test_stream_chunk_interceptor_rewrites_drops_and_sees_history(hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    out = oai(hooks_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "stream me"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    assert text == "HELLO C"  # "hello" rewritten, " from" dropped, " C" kept
    seen = events(hooks_gw)[since:]
    # the header-only call first, with the request bodies
    assert "chunkinit original=1 index=-1" in seen
    chunks = [e for e in seen if e.startswith("chunk ")]
    # c-echo's four chunks; schema 3: no request bodies on chunk calls; the history
    # holds the chunks sent so far (the dropped one is not among them)
    assert chunks == ["chunk 0 history=0 original=0", "chunk 1 history=1 original=0",
                      "chunk 2 history=1 original=0", "chunk 3 history=2 original=0"]


# ---- model router ---------------------------------------------------------------------------

def test_model_router_sends_a_model_to_another_plugins_executor(hooks_gw: Gateway) -> None:
    # c-routed is c-hooks' model; its router sends it to c-test's executor as c-echo
    answer = ask(hooks_gw, "c-routed", "echo-payload who serves")
    assert "model=c-echo" in answer, answer
    assert '"model": "c-echo"' in answer or '"model":"c-echo"' in answer, answer


def test_router_target_that_serves_nothing_falls_through(hooks_gw: Gateway) -> None:
    assert ask(hooks_gw, "c-badroute", "hi") == "hello from c-hooks"
    assert "model.route named executor 'nobody'" in hooks_gw.log_tail(400)


# ---- usage and lifecycle ---------------------------------------------------------------------

def test_usage_reaches_usage_plugins_with_tokens_and_failures(hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    ask(hooks_gw, "c-hooks-self", "count me")
    line = wait_event(hooks_gw, since, lambda e: e.startswith("usage model=c-hooks-self"))
    assert " in=2 out=5 total=7 failed=false" in line, line
    since = len(events(hooks_gw))
    with pytest.raises(openai.RateLimitError):
        ask(hooks_gw, "c-echo", "fail429")
    line = wait_event(hooks_gw, since, lambda e: e.startswith("usage model=c-echo"))
    assert "failed=true" in line, line
    since = len(events(hooks_gw))
    ask(hooks_gw, "c-routed", "routed usage")  # under the model the executor ran
    line = wait_event(hooks_gw, since, lambda e: e.startswith("usage model=c-echo"))
    assert "requested=c-routed" in line, line


def test_request_complete_reports_succeeded_and_failed(hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    ask(hooks_gw, "c-hooks-self", "done")
    wait_event(hooks_gw, since, lambda e: e == "complete c-hooks-self succeeded 200")
    with pytest.raises(openai.RateLimitError):
        ask(hooks_gw, "c-echo", "fail429")
    wait_event(hooks_gw, since, lambda e: e == "complete c-echo failed 429")


def test_request_complete_is_delivered_after_the_client_left(hooks_gw: Gateway) -> None:
    since = len(events(hooks_gw))
    body = json.dumps({"model": "c-async", "stream": True,
                       "messages": [{"role": "user", "content": "forever"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", hooks_gw.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data:") < 3:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    sock.close()
    wait_event(hooks_gw, since, lambda e: e == "complete c-async canceled 499")


# ---- units -------------------------------------------------------------------------------

def test_usage_detail_reads_openai_usage() -> None:
    detail = usage_detail({"usage": {
        "prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2}}})
    assert detail == {"InputTokens": 10, "OutputTokens": 4, "ReasoningTokens": 2,
                      "CachedTokens": 3, "CacheReadTokens": 3, "CacheCreationTokens": 0,
                      "TotalTokens": 14}
    assert usage_detail({"choices": []}) is None


def test_times_are_written_as_go_writes_them() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1.25) == "1970-01-01T00:00:01.25Z"


def test_header_merge_clears_then_replaces_per_key() -> None:
    headers = {"Content-Type": ["application/json"], "X-Old": ["1"], "X-Keep": ["k"]}
    _header_merge(headers, {"ClearHeaders": ["x-old"], "Headers": {"content-type": ["t"]}})
    assert headers == {"X-Keep": ["k"], "content-type": ["t"]}
