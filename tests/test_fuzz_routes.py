"""A seeded fuzzing run over every route family: no input error may answer 5xx.

Real parts: a gateway subprocess with the echo test plugin (its own instance: the
management routes are fuzzed too), driven over loopback by a real httpx client, and a
gateway serving the shipped pocketsphinx-plugin for AOG's realtime speech socket, driven
by a real `websockets` client.

What is proven: a few hundred bodies built from valid requests by seeded random
mutations (wrong types for each field, random JSON values, huge strings, deep nesting,
huge and non-finite numbers, lone surrogates, invalid UTF-8, truncated JSON, random
bytes) sent to every route family (AOG services, OpenAI `/v1`, Ollama `/api`, every
built-in flavor's `/aog/v0.2/api_flavors/...` endpoint, the management API) get an
answer below 500, whose error body is JSON naming the problem without a server path;
on the realtime socket every hostile text frame gets a `task-failed` that is never a
SERVER_ERROR. The seed is printed (and can be set with AOGSTREAM_FUZZ_SEED) so a failure
can be replayed exactly.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import REPO, Gateway, shipped_plugins_gateway
from websockets.sync.client import connect

from aogstream.convert import FlavorRegistry

SEED = int(os.environ.get("AOGSTREAM_FUZZ_SEED", "1206"))
HTTP_CASES = 360
WS_FRAMES = 60
BUDGET_S = 45.0  # a hard stop for the whole HTTP run (it takes ~10-20 s)
API = "/aog/v0.2"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

# (method, path, a valid body to mutate)
AOG_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", f"{API}/services/chat", CHAT),
    ("POST", f"{API}/services/generate", {"model": "echo", "prompt": "hi"}),
    ("POST", f"{API}/services/embed", {"model": "echo", "input": ["hi"]}),
    ("POST", f"{API}/services/rerank", {"model": "echo", "query": "q", "documents": ["d"]}),
]
# No real plugin names here (the management routes are fuzzed for real), and no
# strings that look like paths or URLs (see `random_text`).
MANAGEMENT_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", f"{API}/service", {"service_name": "chat"}),
    ("PUT", f"{API}/service", {"service_name": "chat", "hybrid_policy": "default"}),
    ("POST", f"{API}/service/install", {"service_name": "fuzzsvc", "service_source": "local",
                                        "skip_model": True}),
    ("POST", f"{API}/service/export", {"service_name": "chat"}),
    ("POST", f"{API}/service/import", {"services": {"chat": {"hybrid_policy": "default"}},
                                       "service_providers": {}}),
    ("GET", f"{API}/service_provider", {"service_name": "chat"}),
    ("GET", f"{API}/service_provider/detail", {"provider_name": "fuzz-provider"}),
    ("POST", f"{API}/service_provider", {"service_name": "chat", "service_source": "remote",
                                         "api_flavor": "openai", "provider_name": "fuzz-p",
                                         "models": ["m"], "properties": {}}),
    ("PUT", f"{API}/service_provider", {"provider_name": "fuzz-p", "models": ["m"]}),
    ("DELETE", f"{API}/service_provider", {"provider_name": "fuzz-none"}),
    ("GET", f"{API}/model", {"service_name": "chat"}),
    ("POST", f"{API}/model", {"model_name": "fuzz-model", "provider_name": "fuzz-none"}),
    ("POST", f"{API}/model/stream", {"model_name": "fuzz-model", "provider_name": "fuzz-none"}),
    ("POST", f"{API}/model/stream/cancel", {"model_name": "fuzz-model"}),
    ("DELETE", f"{API}/model", {"model_name": "fuzz-model", "provider_name": "fuzz-none"}),
    ("GET", f"{API}/model/recommend", {}),
    ("GET", f"{API}/model/support", {"service_name": "chat", "page": 1, "page_size": 5}),
    ("GET", f"{API}/plugin/info", {"name": "fuzz-none"}),
    ("POST", f"{API}/plugin/load", {"name": "fuzz-none"}),
    ("POST", f"{API}/plugin/enable", {"name": "fuzz-none"}),
    ("POST", f"{API}/plugin/disable", {"name": "fuzz-none"}),
    ("POST", f"{API}/plugin/stop", {"name": "fuzz-none"}),
    ("DELETE", f"{API}/plugin/delete", {"name": "fuzz-none"}),
]
BASE_BY_SERVICE: dict[str, dict[str, Any]] = {
    "chat": CHAT,
    "generate": {"model": "echo", "prompt": "hi"},
    "embed": {"model": "echo", "input": "hi"},
    "text-to-speech": {"model": "tts-1", "input": "hi", "voice": "alloy"},
}


def front_door_routes() -> list[tuple[str, str, dict[str, Any]]]:
    """Every POST endpoint of every built-in flavor, bare (`install_raw_routes`) and
    under /aog/v0.2/api_flavors/<flavor>/, from the templates' `endpoints`."""
    out = []
    for name, flavor in FlavorRegistry().builtin().items():
        for svc, sdef in flavor.services.items():
            for endpoint in sdef.info.get("endpoints") or []:
                method, _, path = str(endpoint).strip().partition(" ")
                if method.upper() != "POST" or not path.startswith("/"):
                    continue
                base = BASE_BY_SERVICE.get(svc, {"model": "echo", "input": "hi"})
                out.append(("POST", f"{API}/api_flavors/{name}{path}", base))
                if sdef.info.get("install_raw_routes"):
                    out.append(("POST", path, base))
    unique = sorted({(m, p, json.dumps(b)) for m, p, b in out})
    return [(m, p, json.loads(b)) for m, p, b in unique]


# ---- the mutations ------------------------------------------------------------------------

def random_text(rng: random.Random, n: int | None = None) -> str:
    """Letters, digits, spaces and non-ASCII text: never a path, a URL or a real name."""
    n = rng.randint(6, 24) if n is None else n
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789 _-éü中文😀\t"
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str", "list", "dict", "numstr"]
    if depth > 3:
        kinds = kinds[:5]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**18, rng.randint(-999, 999)])
    if kind == "float":
        return rng.choice([0.5, -1e300, 1e-300, 3.14])
    if kind == "str":
        return random_text(rng)
    if kind == "numstr":
        return rng.choice(["1", "-5", "1e3", "abc", "", "true", "null"])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, rng.randint(1, 8)): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def deep(n: int, rng: random.Random) -> str:
    opener, closer = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
    return opener * n + "1" + closer * n


def mutate(base: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    """One hostile body from a valid one, and a label saying what was done."""
    kind = rng.choice(["field-type", "field-type", "field-type", "random-json",
                       "extra-field", "huge-string", "deep", "deep-field", "big-int",
                       "non-finite", "surrogate", "invalid-utf8", "truncated",
                       "random-bytes", "drop-field", "empty"])
    body = json.loads(json.dumps(base))
    if kind == "field-type" and body:
        key = rng.choice(sorted(body))
        body[key] = random_value(rng)
        return json.dumps(body).encode(), f"{kind}:{key}"
    if kind == "drop-field" and body:
        body.pop(rng.choice(sorted(body)))
        return json.dumps(body).encode(), kind
    if kind == "extra-field":
        body[random_text(rng, 5)] = random_value(rng)
        return json.dumps(body).encode(), kind
    if kind == "random-json":
        return json.dumps(random_value(rng)).encode(), kind
    if kind == "huge-string":
        key = rng.choice(sorted(body) or ["x"])
        body[key] = "x" * rng.choice([100_000, 1_000_000])
        return json.dumps(body).encode(), f"{kind}:{key}"
    if kind == "deep":
        return deep(rng.choice([129, 1000, 20_000]), rng).encode(), kind
    if kind == "deep-field":
        key = rng.choice(sorted(body) or ["x"])
        text = json.dumps(body | {key: 0})
        return text.replace(f'"{key}": 0', f'"{key}": {deep(rng.choice([200, 5000]), rng)}'
                            ).encode(), f"{kind}:{key}"
    if kind == "big-int":
        key = rng.choice(sorted(body) or ["x"])
        text = json.dumps(body | {key: 0})
        return text.replace(f'"{key}": 0', f'"{key}": {"9" * 5000}').encode(), kind
    if kind == "non-finite":
        key = rng.choice(sorted(body) or ["x"])
        text = json.dumps(body | {key: 0})
        lit = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
        return text.replace(f'"{key}": 0', f'"{key}": {lit}').encode(), f"{kind}:{lit}"
    if kind == "surrogate":
        key = rng.choice(sorted(body) or ["x"])
        text = json.dumps(body | {key: "a"})
        return text.replace('"a"', rng.choice(['"\\ud800"', '"x\\udfff"', '"\\udbff!"'])
                            ).encode(), kind
    if kind == "invalid-utf8":
        raw = json.dumps(body).encode()
        cut = rng.randint(0, len(raw))
        return raw[:cut] + rng.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80"]) + \
            raw[cut:], kind
    if kind == "truncated":
        raw = json.dumps(body).encode()
        return raw[:rng.randint(1, max(1, len(raw) - 1))], kind
    if kind == "random-bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))), kind
    return b"", kind


# ---- the checks ---------------------------------------------------------------------------

SERVER_PATH_MARKERS = (str(REPO), "site-packages", ".py\"", ".py'", "Traceback")


def check_answer(resp: httpx.Response, what: str) -> list[str]:
    """What is wrong with this answer (nothing, for a 2xx-4xx with a clean error)."""
    text = resp.text
    if resp.status_code >= 500:
        return [f"{what}: {resp.status_code} {text[:300]!r}"]
    if resp.status_code < 400:
        return []
    for marker in SERVER_PATH_MARKERS:
        if marker in text:
            return [f"{what}: the answer shows {marker!r}: {text[:300]!r}"]
    try:
        body = resp.json()  # an error is JSON in every flavor
    except ValueError:
        return [f"{what}: {resp.status_code} answer is not JSON: {text[:300]!r}"]
    message = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message:
        return [f"{what}: no error message in {text[:300]!r}"]
    return []


@pytest.fixture(scope="module")
def fuzz_gateway(gateway_factory: Any) -> Gateway:
    return gateway_factory("fuzz", AOGSTREAM_WORKERS="1")


def test_fuzzed_bodies_on_every_route_family_never_get_a_5xx(fuzz_gateway: Gateway) -> None:
    print(f"fuzz seed: {SEED} (set AOGSTREAM_FUZZ_SEED to replay)")
    rng = random.Random(SEED)
    routes = AOG_ROUTES + front_door_routes() + MANAGEMENT_ROUTES
    families = {p.split("/")[1] if not p.startswith(API) else p.split("/")[3] for _, p, _ in routes}
    assert {"v1", "api", "services", "api_flavors", "service", "model", "plugin"} <= families
    started = time.monotonic()
    sent = 0
    problems: list[str] = []
    with httpx.Client(base_url=fuzz_gateway.url, timeout=httpx.Timeout(30.0)) as client:
        # each route once with its valid body first (a baseline that must not be 5xx
        # either), then the mutations spread over all of them
        cases = [(m, p, json.dumps(b).encode(), "valid") for m, p, b in routes]
        for i in range(HTTP_CASES):
            method, path, base = routes[i % len(routes)] if i < len(routes) else \
                rng.choice(routes)
            content, label = mutate(base, rng)
            cases.append((method, path, content, label))
        for method, path, content, label in cases:
            assert time.monotonic() - started < BUDGET_S, f"fuzzing took over {BUDGET_S} s"
            ctype = rng.choice(["application/json", "text/plain", ""])
            headers = {"content-type": ctype} if ctype else {}
            resp = client.request(method, path, content=content, headers=headers)
            problems.extend(check_answer(resp, f"{method} {path} [{label}] body "
                                               f"{content[:120]!r}"))
            sent += 1
            # a GET with a fuzzed query string on the routes that read one
            if method in ("GET", "POST") and label.startswith("field-type:") and \
                    rng.random() < 0.3:
                params = {k: json.dumps(v) if not isinstance(v, str) else v
                          for k, v in json.loads(content).items()}
                resp = client.get(path, params=params)
                problems.extend(check_answer(resp, f"GET {path}?{params}"))
                sent += 1
    print(f"{sent} requests in {time.monotonic() - started:.1f} s, {len(problems)} bad")
    assert not problems, (f"{len(problems)} of {sent} answers were wrong (replay with "
                          f"AOGSTREAM_FUZZ_SEED={SEED}):\n" + "\n".join(problems[:15]))
    # and the gateway is still whole
    assert httpx.get(f"{fuzz_gateway.url}/health", timeout=5).status_code == 200
    r = httpx.post(f"{fuzz_gateway.url}{API}/services/chat", json=CHAT, timeout=10)
    assert r.status_code == 200, r.text


# ---- the realtime speech socket -----------------------------------------------------------

RUN_TASK = {"task": "speech-to-text-ws", "action": "run-task", "model": "pocketsphinx-en-us",
            "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en"}}


@pytest.fixture(scope="module")
def speech_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("fuzz-speech"),
                                 ["pocketsphinx-plugin"]) as gateway:
        gateway.wait_plugin_running(name="pocketsphinx-plugin", timeout=30)
        yield gateway


def ws_mutation(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["params", "params", "field", "random-json", "deep", "big-int",
                       "surrogate", "truncated", "action"])
    run = json.loads(json.dumps(RUN_TASK))
    if kind == "params":
        run["parameters"][rng.choice(["format", "sample_rate", "language", "model"])] = \
            rng.choice([random_value(rng), [], {}, "abc", True, 1.5])
    elif kind == "field":
        run[rng.choice(["parameters", "model"])] = rng.choice(
            ["x", 5, [], True, {"a": [1]}])
    elif kind == "random-json":
        return json.dumps(random_value(rng)), kind
    elif kind == "deep":
        return deep(rng.choice([200, 20_000]), rng), kind
    elif kind == "big-int":
        return json.dumps(run).replace("16000", "9" * 5000), kind
    elif kind == "surrogate":
        return json.dumps(run).replace('"en"', '"\\ud800"'), kind
    elif kind == "truncated":
        text = json.dumps(run)
        return text[:rng.randint(1, len(text) - 1)], kind
    else:
        run["action"] = random_value(rng)
    return json.dumps(run), kind


def _barrier(ws: Any, kind: str, frame: str) -> None:
    """Wait out a task that failed on its own while our finish-task was on its way.

    Whether that finish-task reached the task (and was answered by its task-failed) or
    arrived after it (and gets a task-failed restating why, so a client waiting on its
    finish-task is never left hanging) depends on timing; a frame with an unknown action
    is answered in order, so everything before its answer belongs to the failed task.
    Those are the only two legitimate orders: at most that one restatement comes before
    the barrier's answer (a second task-failed for the same task, e.g. the plugin call's
    own end reported after the plugin's task-failed, is a bug)."""
    ws.send(json.dumps({"task": "speech-to-text-ws", "action": "barrier"}))
    restated = 0
    while True:
        header = json.loads(ws.recv(timeout=20))["header"]
        assert header["event"] == "task-failed", (kind, frame[:200], header)
        assert header["error_code"] != "SERVER_ERROR", (kind, frame[:200], header)
        if "'barrier'" in header["error_message"]:
            return
        restated += 1
        assert restated == 1 and "already failed" in header["error_message"], (
            kind, frame[:200], header)


def test_fuzzed_text_frames_on_the_realtime_socket_are_client_errors(
        speech_gateway: Gateway) -> None:
    print(f"fuzz seed: {SEED} (set AOGSTREAM_FUZZ_SEED to replay)")
    rng = random.Random(SEED + 1)
    url = speech_gateway.service_ws_url("speech-to-text-ws")
    with connect(url, open_timeout=10, max_size=None) as ws:
        for _ in range(WS_FRAMES):
            frame, kind = ws_mutation(rng)
            ws.send(frame)
            event = json.loads(ws.recv(timeout=20))
            header = event["header"]
            if header["event"] == "task-started":  # the mutation left a valid run-task
                ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
                while header["event"] not in ("task-finished", "task-failed"):
                    header = json.loads(ws.recv(timeout=20))["header"]
                assert header.get("error_code") != "SERVER_ERROR", (kind, frame[:200], header)
                if header["event"] == "task-failed":
                    _barrier(ws, kind, frame)
                continue
            assert header["event"] == "task-failed", (kind, frame[:200], event)
            assert header["error_code"] in ("CLIENT_ERROR", "MODEL_ERROR"), (
                f"[{kind}] {frame[:200]!r} → {header} (seed {SEED})")
            assert str(REPO) not in header["error_message"]
        # the socket still serves a proper task after all that
        ws.send(json.dumps(RUN_TASK))
        assert json.loads(ws.recv(timeout=20))["header"]["event"] == "task-started"
