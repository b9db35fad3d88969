"""Hostile input gets a 4xx naming the problem, never a 500 and never a server path.

Real parts: the session's gateway subprocess with the echo test plugin, reached over
loopback by httpx (and a raw socket for a request line httpx will not send); a gateway
serving the shipped pocketsphinx-plugin for AOG's realtime speech socket, reached by
the `websockets` client.

What is proven, on every route family (AOG services, OpenAI `/v1`, Ollama `/api`,
`/aog/v0.2/api_flavors/...`, the management API): JSON nested thousands of levels deep,
an integer of 5,000 digits, a lone surrogate (escaped or as raw bytes), invalid UTF-8,
NaN and overflowing numbers, truncated JSON and wrong types each answer 400 with a JSON
error whose message says what is wrong (and, where there is one, which field); a
conversion failure names the problem without the templates' folder; on the realtime
socket the same mistakes, and a `run-task` with `parameters: "x"` or
`sample_rate: "abc"`, get a `task-failed` CLIENT_ERROR naming the field, and the socket
goes on serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import REPO, Gateway, raw_http, shipped_plugins_gateway
from websockets.sync.client import connect

API = "/aog/v0.2"
CHAT_JSON = '{"model": "echo", "messages": [{"role": "user", "content": %s}]}'

# route → (method, flavor of its error body)
ROUTES = {
    f"{API}/services/chat": ("POST", "aog"),
    "/v1/chat/completions": ("POST", "openai"),
    "/v1/embeddings": ("POST", "openai"),
    "/api/chat": ("POST", "ollama"),
    f"{API}/api_flavors/openai/v1/chat/completions": ("POST", "openai"),
    f"{API}/api_flavors/ollama/api/chat": ("POST", "ollama"),
    f"{API}/service_provider": ("POST", "aog"),
    f"{API}/service/import": ("POST", "aog"),
    f"{API}/service": ("PUT", "aog"),
}

# name → (body, words the message must contain)
HOSTILE: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "nested-20000": (b"[" * 20_000 + b"]" * 20_000, ("nested deeper than 128",)),
    "nested-5000-in-a-field": (
        (CHAT_JSON % ("[" * 5000 + "]" * 5000)).encode(), ("nested deeper than 128",
                                                          "messages[0].content")),
    "integer-5000-digits": ((CHAT_JSON % ("9" * 5000)).encode(), ("more than 4300 digits",)),
    "lone-surrogate-escape": ((CHAT_JSON % '"\\ud800"').encode(),
                              ("lone UTF-16 surrogate", "messages[0].content")),
    "surrogate-bytes": ((CHAT_JSON % '"x"').encode().replace(b'"x"', b'"\xed\xa0\x80"'),
                        ("not UTF-8",)),
    "invalid-utf8": ((CHAT_JSON % '"x"').encode().replace(b'"x"', b'"\xff"'),
                     ("not UTF-8",)),
    "nan": ((CHAT_JSON % "NaN").encode(), ("NaN is not valid JSON",)),
    "overflowing-float": ((CHAT_JSON % "1e999").encode(), ("too large",)),
    "truncated": (b'{"model": "echo", "messages": [{"role": "us', ("not valid JSON",
                                                                  "line 1 column")),
    "not-an-object": (b'"hello"', ("must be a JSON object", "a string")),
}


def message_of(resp: httpx.Response, flavor: str) -> str:
    """The error message, read the way each flavor's clients read it."""
    body = resp.json()
    if flavor == "openai":
        return body["error"]["message"]
    if flavor == "ollama":
        return body["error"]
    return body["message"]


def assert_clean_4xx(resp: httpx.Response, flavor: str, *words: str) -> str:
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json")
    message = message_of(resp, flavor)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert str(REPO) not in resp.text and "/tmp/" not in resp.text, resp.text[:300]
    return message


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_json_gets_a_400_naming_the_problem(gateway: Gateway, route: str,
                                                   kind: str) -> None:
    method, flavor = ROUTES[route]
    body, words = HOSTILE[kind]
    resp = httpx.request(method, gateway.url + route, content=body,
                         headers={"content-type": "application/json"}, timeout=20)
    assert resp.status_code == 400, f"{resp.status_code}: {resp.text[:300]}"
    assert_clean_4xx(resp, flavor, *words)


WRONG_TYPES: list[tuple[str, str, Any, tuple[str, ...]]] = [
    # (route, method, body, words)
    (f"{API}/services/chat", "POST", [], ("must be a JSON object", "an array")),
    (f"{API}/services/chat", "POST", None, ("must be a JSON object", "null")),
    (f"{API}/services/chat", "POST", {"model": 5, "messages": []}, ("'model'", "a number")),
    (f"{API}/services/chat", "POST", {"model": "echo", "stream": "yes", "messages": []},
     ("'stream'", "true or false")),
    (f"{API}/services/chat", "POST", {"messages": [{"role": "user", "content": "x"}, 5]},
     ("'messages[1]'",)),
    (f"{API}/services/chat", "POST", {"service": "chat", "data": {"model": 5, "messages": []}},
     ("'model'", "a number")),  # inside AOG's plugin-guide envelope
    (f"{API}/services/generate", "POST", {"prompt": "x", "temperature": "hot"},
     ("'temperature'", "a number")),
    (f"{API}/services/chat", "POST", {"messages": [], "hybrid_policy": ["x"]},
     ("'hybrid_policy'",)),
    ("/v1/chat/completions", "POST", {"model": "echo", "messages": "hi"}, ("'messages'",)),
    ("/v1/chat/completions", "POST",
     {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"},
     ("'max_tokens'", "an integer")),
    ("/v1/chat/completions", "POST",
     {"model": "echo", "messages": [{"role": 7, "content": "hi"}]}, ("'messages[0].role'",)),
    ("/v1/embeddings", "POST", {"model": "echo", "input": 5}, ("'input'",)),
    ("/api/chat", "POST", {"model": "echo", "messages": {}}, ("'messages'",)),
    ("/api/chat", "POST",
     {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "options": "x"},
     ("'options'", "an object")),
    ("/api/generate", "POST", {"model": "echo", "prompt": 5}, ("'prompt'",)),
    (f"{API}/api_flavors/openai/v1/chat/completions", "POST",
     {"model": ["echo"], "messages": [{"role": "user", "content": "hi"}]}, ("'model'",)),
    (f"{API}/service", "PUT", {"service_name": "chat", "hybrid_policy": [1]},
     ("hybrid_policy",)),
    (f"{API}/service_provider", "POST", "x", ("must be a JSON object",)),
    (f"{API}/model/support", "GET", {"page": "abc"}, ("page", "integer")),
    (f"{API}/service/import", "POST", {"services": "x"}, ("JSON objects",)),
    (f"{API}/plugin/info", "GET", {"name": "x" * 5000}, ("is not loaded",)),
    (f"{API}/plugin/load", "POST", {"name": "x" * 5000}, ("plain folder name",)),
]


@pytest.mark.parametrize(("route", "method", "body", "words"), WRONG_TYPES,
                         ids=[f"{m} {r} {json.dumps(b)[:40]}" for r, m, b, _ in WRONG_TYPES])
def test_wrong_types_get_a_4xx_naming_the_field(gateway: Gateway, route: str, method: str,
                                                body: Any, words: tuple[str, ...]) -> None:
    flavor = "openai" if route.startswith(("/v1/", f"{API}/api_flavors/openai")) else \
        "ollama" if route.startswith("/api/") else "aog"
    resp = httpx.request(method, gateway.url + route, content=json.dumps(body).encode(),
                         timeout=20)
    assert_clean_4xx(resp, flavor, *words)


def test_a_failed_conversion_names_the_problem_without_a_server_path() -> None:
    """A request the templates cannot convert: a 400 naming the template file and the
    step, never the folder the templates live in (nor any other server path)."""
    from aogstream.convert import Converter, ConvertError
    from aogstream.http.flavor_errors import conversion_error

    conv = Converter().between("chat", "openai", "aog")
    with pytest.raises(ConvertError) as caught:
        conv.response(b"not json {")
    assert str(REPO) in str(caught.value)  # the log keeps the whole location
    err = conversion_error(caught.value, request=True)
    assert err.status == 400 and str(REPO) not in err.message
    assert "openai.yaml" in err.message and "response_from_aog" in err.message
    answer = conversion_error(caught.value, request=False, who="p")
    assert answer.status == 502 and str(REPO) not in answer.message


def test_a_query_string_that_is_not_utf8_is_a_400(gateway: Gateway) -> None:
    sock = raw_http(gateway.port, "GET", f"{API}/services/chat?model=\xff".encode(
        "latin-1").decode("latin-1"))
    try:
        head = sock.recv(4096)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 4"), head[:200]


# ---- the realtime speech socket -------------------------------------------------------------

RUN_TASK = {"task": "speech-to-text-ws", "action": "run-task", "model": "pocketsphinx-en-us",
            "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en"}}


@pytest.fixture(scope="module")
def speech_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("hostile-speech"),
                                 ["pocketsphinx-plugin"]) as gateway:
        gateway.wait_plugin_running(name="pocketsphinx-plugin", timeout=30)
        yield gateway.service_ws_url("speech-to-text-ws")


def run_task_with(**changes: Any) -> str:
    run = json.loads(json.dumps(RUN_TASK))
    params = changes.pop("parameters_update", None)
    if params:
        run["parameters"].update(params)
    run.update(changes)
    return json.dumps(run)


HOSTILE_FRAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "nested-20000": ("[" * 20_000 + "]" * 20_000, ("nested deeper than 128",)),
    "nested-in-parameters": (
        json.dumps(RUN_TASK).replace('"en"', "[" * 3000 + "]" * 3000),
        ("nested deeper than 128",)),
    "integer-5000-digits": (json.dumps(RUN_TASK).replace("16000", "9" * 5000),
                            ("more than 4300 digits",)),
    "lone-surrogate": (json.dumps(RUN_TASK).replace('"en"', '"\\udc00"'),
                       ("lone UTF-16 surrogate", "parameters.language")),
    "parameters-a-string": (run_task_with(parameters="x"), ("'parameters'", "a string")),
    "sample-rate-a-word": (run_task_with(parameters_update={"sample_rate": "abc"}),
                           ("'parameters.sample_rate'", "a string")),
    "sample-rate-an-object": (run_task_with(parameters_update={"sample_rate": {"hz": 1}}),
                              ("'parameters.sample_rate'", "an object")),
    "language-a-number": (run_task_with(parameters_update={"language": 5}),
                          ("'parameters.language'",)),
    "model-a-list": (run_task_with(model=["x"]), ("'model'", "an array")),
    "not-an-object": ("[1, 2]", ("must be a JSON object", "an array")),
    "truncated": ('{"action": "run-ta', ("not valid JSON",)),
}


def test_hostile_frames_on_the_realtime_socket_get_task_failed_client_error(
        speech_url: str) -> None:
    """Each mistake gets a CLIENT_ERROR naming it (not SERVER_ERROR, not a close
    reported as normal), and the socket still runs a proper task afterwards."""
    with connect(speech_url, open_timeout=10, max_size=None) as ws:
        for name, (frame, words) in HOSTILE_FRAMES.items():
            ws.send(frame)
            header = json.loads(ws.recv(timeout=20))["header"]
            assert header["event"] == "task-failed", (name, header)
            assert header["error_code"] == "CLIENT_ERROR", (name, header)
            for word in words:
                assert word in header["error_message"], (name, word, header)
            assert str(REPO) not in header["error_message"]
        ws.send(json.dumps(RUN_TASK))
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
        ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
        events = []
        while not events or events[-1] not in ("task-finished", "task-failed"):
            events.append(json.loads(ws.recv(timeout=20))["header"]["event"])
        assert events[-1] == "task-finished", events


# ---- the decoder itself (a unit test of aogstream.safejson) ---------------------------------

def test_the_decoder_accepts_what_real_clients_send_and_bounds_the_rest() -> None:
    from aogstream import safejson

    limit = safejson.MAX_DEPTH
    assert safejson.loads("[" * limit + "]" * limit) is not None
    with pytest.raises(safejson.JSONInputError, match="nested deeper"):
        safejson.loads("[" * (limit + 1) + "]" * (limit + 1))
    # a surrogate pair is one character, a BOM is tolerated, big-but-legal numbers pass
    assert safejson.loads(b'\xef\xbb\xbf{"x": "\\ud83d\\ude00", "n": 1e308}') == {
        "x": "\U0001f600", "n": 1e308}
    assert safejson.loads("9" * 4000) == int("9" * 4000)
    with pytest.raises(safejson.JSONInputError, match=r"surrogate.*messages\[2\]\.content"):
        safejson.loads('{"messages": [{}, {}, {"content": "\\udc00"}]}')
    with pytest.raises(safejson.JSONInputError, match="nested deeper"):
        safejson.loads('{"a": ' + "[" * 9000 + "]" * 9000 + "}")
