"""llamacpp-plugin end to end: SmolLM2 through the gateway on llama.cpp's own server.

Streams arrive token by token in AOG's chat/generate shapes, unary answers carry usage,
a client that hangs up mid-stream really stops the engine's generation (its CPU time
stops growing) and, with one engine slot, frees the engine for the next request at once
(the plugin closes its nested stream generators as the cancel lands), bad requests get
clear 4xx errors, and a GGUF pulled by local path or URL loads and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import re
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import EventReader, require_engines, shipped_plugins_gateway
from hostutil import running_plugin

from aogstream import manifest as m

PLUGIN = "llamacpp-plugin"
PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / PLUGIN
MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "seed": 42}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
IDLE_CPU_S = 0.05  # engine CPU seconds per 0.5 s sample that count as "not generating"


@pytest.fixture(scope="module", autouse=True)
def _engines():
    require_engines([PLUGIN])


def post(gw, client, service, **body):
    return client.post(gw.service_url(service), json=body, timeout=120)


def stream(gw, service, body, until=None):
    """POST with stream:true; returns (reader, request start time). Stops reading (and
    hangs up) once `until(reader)` is true."""
    reader = EventReader()
    t0 = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(120, connect=5)) as c, \
            c.stream("POST", gw.service_url(service), json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            reader.feed(chunk)
            if until is not None and until(reader):
                break
    return reader, t0


def check_chat_shape(ev, finished):
    assert set(ev) >= {"id", "model", "created_at", "message", "finished"}, ev
    assert ev["model"] == MODEL and ev["id"]
    assert RFC3339.match(ev["created_at"]), ev["created_at"]
    assert ev["message"]["role"] == "assistant" and isinstance(ev["message"]["content"], str)
    assert ev["finished"] is finished, ev
    if finished:
        assert ev["finish_reason"] in ("stop", "length"), ev


def test_streamed_chat_arrives_token_by_token(engines_gateway):
    # content and shape: the one-word question
    reader, _ = stream(engines_gateway, "chat", {"messages": FRANCE, **GREEDY,
                                                 "max_tokens": 24})
    evs = reader.events
    assert len(evs) >= 3, evs
    for ev in evs[:-1]:
        check_chat_shape(ev, finished=False)
    check_chat_shape(evs[-1], finished=True)
    assert len({ev["id"] for ev in evs}) == 1
    text = "".join(ev["message"]["content"] for ev in evs)
    assert "Paris" in text, text

    # token by token: a longer answer arrives as many events over many separate reads,
    # in order, the first ones well before the last (ordering and counts, no speeds)
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    reader, t0 = stream(engines_gateway, "chat", {"messages": poem, **GREEDY,
                                                  "max_tokens": 48})
    evs, times = reader.events, reader.times
    assert len(evs) >= 20, len(evs)
    assert evs[-1]["finished"] is True and all(not e["finished"] for e in evs[:-1])
    assert times == sorted(times)
    assert len(set(times)) >= len(evs) // 2, "events were not delivered one by one"
    assert times[0] < times[len(times) // 2] < times[-1], "not streamed: all came at once"
    tokens = len(evs) - 1
    print(f"\nchat stream: TTFT {times[0] - t0:.3f} s, {tokens} tokens, "
          f"{(tokens - 1) / (times[-2] - times[0]):.0f} tokens/s")


def test_unary_chat_and_generate(engines_gateway, client):
    r = post(engines_gateway, client, "chat", messages=FRANCE, **GREEDY, max_tokens=24)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    check_chat_shape(answer, finished=True)
    assert "Paris" in answer["message"]["content"], answer
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    body = {"prompt": "The capital of France is", **GREEDY, "max_tokens": 8}
    r = post(engines_gateway, client, "generate", **body)
    assert r.status_code == 200, r.text
    gen = r.json()
    assert set(gen) >= {"id", "model", "created_at", "response", "finished", "finish_reason"}
    assert gen["model"] == MODEL and gen["finished"] is True
    assert gen["finish_reason"] in ("stop", "length") and gen["response"].strip()
    assert 0 < gen["usage"]["completion_tokens"] <= 8

    reader, _ = stream(engines_gateway, "generate", body)
    evs = reader.events
    assert len(evs) >= 2 and evs[-1]["finished"] is True
    assert all(e["finished"] is False and "response" in e for e in evs[:-1])
    # greedy decoding: the streamed pieces are exactly the unary answer
    assert "".join(e["response"] for e in evs) == gen["response"]


def engine_process(gw):
    """The llama_cpp.server child of the llamacpp-plugin process."""
    plugin = psutil.Process(gw.plugin(PLUGIN)["pid"])
    found = [p for p in plugin.children(recursive=True)
             if "llama_cpp.server" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline() for p in plugin.children(recursive=True)]
    return found[0]


def cpu_seconds(proc):
    t = proc.cpu_times()
    return t.user + t.system


def test_client_disconnect_stops_generation(engines_gateway, client):
    # the engine runs (first request loads it if needed)
    assert post(engines_gateway, client, "chat", messages=FRANCE, max_tokens=1).status_code == 200
    engine = engine_process(engines_gateway)
    marks = {}

    def after_some_events(reader):
        if len(reader.events) == 5:
            marks["cpu"] = cpu_seconds(engine)
        return len(reader.events) >= 30

    count = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
    reader, _ = stream(engines_gateway, "chat",
                       {"messages": count, **GREEDY, "max_tokens": 1500},
                       until=after_some_events)
    # connection closed here, ~1470 tokens before the answer would be complete
    busy = cpu_seconds(engine) - marks["cpu"]
    assert not reader.events[-1]["finished"]
    assert busy > IDLE_CPU_S, f"the engine was not generating while streaming ({busy:.3f} s)"

    deltas = []
    last = cpu_seconds(engine)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(engine)
        deltas.append(now - last)
        last = now
        if len(deltas) >= 2 and deltas[-1] < IDLE_CPU_S and deltas[-2] < IDLE_CPU_S:
            break
    assert len(deltas) >= 2 and max(deltas[-2:]) < IDLE_CPU_S, \
        f"engine CPU time still growing after the disconnect: {deltas}"
    print(f"\nengine CPU per 0.5 s after disconnect: {[round(d, 3) for d in deltas]}")

    assert engine.is_running() and engine_process(engines_gateway).pid == engine.pid
    r = post(engines_gateway, client, "chat", messages=FRANCE, **GREEDY, max_tokens=24)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["message"]["content"]


def test_a_hung_up_stream_frees_the_engine_for_the_next_request_at_once(tmp_path_factory):
    """With one engine slot (LLAMACPP_MAX_ENGINE_REQUESTS=1), a stream the client hangs
    up on mid-way gives its slot and engine connection back as the cancel lands: the
    next request is served in about the time it takes on an idle engine, not after the
    engine finished the abandoned answer (some 1,500 tokens) nor whenever the garbage
    collector finalises the plugin's generators (a slot held until then blocks it)."""
    count = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
    with shipped_plugins_gateway(tmp_path_factory.mktemp("llama-one-slot"), [PLUGIN],
                                 {"LLAMACPP_MAX_ENGINE_REQUESTS": "1"}) as gw, \
            httpx.Client(timeout=httpx.Timeout(120, connect=5)) as client:
        def answer_time() -> float:
            t = time.monotonic()
            r = post(gw, client, "chat", messages=FRANCE, **GREEDY, max_tokens=8)
            assert r.status_code == 200, r.text
            return time.monotonic() - t

        answer_time()  # the first request loads the engine
        idle = min(answer_time() for _ in range(3))
        for _ in range(3):
            reader, _t0 = stream(gw, "chat", {"messages": count, **GREEDY, "max_tokens": 1500},
                                 until=lambda r: len(r.events) >= 10)
            assert not reader.events[-1]["finished"]  # hung up mid-answer
            took = answer_time()
            assert took < 3 * idle + 2.0, \
                f"the next request took {took:.2f} s after a hang-up (idle: {idle:.2f} s)"


def load_plugin_module():
    """plugin.py as a module (its name is not importable: plugins are folders)."""
    spec = importlib.util.spec_from_file_location("llamacpp_plugin_under_test",
                                                  PLUGIN_DIR / "plugin.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_cancel_at_the_plugins_yield_closes_the_engine_stream_before_it_returns(
        tmp_path, monkeypatch):
    """The cancel the SDK throws into the plugin's stream at its `yield` (the host
    cancelled: the client hung up) closes the nested engine stream right there: the
    engine slot is free and the engine's connection closed before the throw returns,
    with no event loop turn for a finaliser. Real: the plugin's code, httpx and a
    loopback server streaming SSE forever; only the engine lookup is replaced."""
    monkeypatch.setenv("LLAMACPP_MAX_ENGINE_REQUESTS", "1")
    mod = load_plugin_module()

    async def main() -> None:
        closed = asyncio.Event()

        async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            event = b'data: {"id":"c1","choices":[{"delta":{"content":"x"}}]}\n\n'
            with contextlib.suppress(ConnectionError, OSError):
                while not reader.at_eof():  # until the client hangs up
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(0.01)
            closed.set()

        server = await asyncio.start_server(engine, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        plugin = mod.LlamaCppPlugin(tmp_path, PLUGIN)

        async def fake_engine(body):
            return MODEL, types.SimpleNamespace(base_url=f"http://127.0.0.1:{port}")

        plugin._engine = fake_engine
        stream = plugin.invoke_service_stream("chat", "", json.dumps(
            {"messages": FRANCE}).encode())
        for _ in range(3):
            assert (await anext(stream))["message"]["content"] == "x"
        slots = plugin._slots(MODEL)
        assert slots.locked()  # the one slot is this stream's
        with pytest.raises(asyncio.CancelledError):
            await stream.athrow(asyncio.CancelledError())
        assert not slots.locked(), "the engine slot is still held after the cancel"
        await asyncio.wait_for(closed.wait(), 10)  # the engine saw the hang-up
        await plugin.http.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("body, words", [
    ({"prompt": "hi"}, ["messages"]),
    ({"messages": "hello"}, ["messages", "list"]),
    ({"messages": []}, ["messages", "empty"]),
    ({"messages": [{"role": "user"}]}, ["messages[0].content"]),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, ["messages[0].role"]),
    ({"messages": "hello", "stream": True}, ["messages"]),
    ({"messages": FRANCE, "temperature": "hot"}, ["temperature"]),
])
def test_bad_chat_requests_get_clear_errors(engines_gateway, client, body, words):
    r = post(engines_gateway, client, "chat", **body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    message = r.json()["message"]
    for word in words:
        assert word in message, message


def test_bad_generate_and_unknown_model(engines_gateway, client):
    r = post(engines_gateway, client, "generate", prompt=42)
    assert 400 <= r.status_code < 500 and "prompt" in r.json()["message"], r.text

    for stream_it in (False, True):
        r = post(engines_gateway, client, "chat", messages=FRANCE, model="no-such-llm",
                 stream=stream_it)
        assert r.status_code == 404, r.text
        message = r.json()["message"]
        assert "no-such-llm" in message and "pull" in message.lower(), message
        assert MODEL in message, message  # names what can be pulled


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


async def test_gguf_pulled_by_path_and_url_answers(tmp_path):
    """A GGUF named by local path or http URL is pulled into a fresh model store (next to
    the installed engine), listed as gguf, and chats when asked for by name."""
    src = require_engines([PLUGIN]) / PLUGIN
    engines = tmp_path / "engines"
    (engines / PLUGIN).mkdir(parents=True)
    os.symlink(src / "engine", engines / PLUGIN / "engine")
    gguf = next((src / "models" / MODEL).glob("*.gguf"))

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(gguf.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{gguf.name}"
    try:
        async with running_plugin(PLUGIN_DIR, engine_dir=engines,
                                  start_engines=False) as (_plugin, client):
            for name, source in (("smol-path", str(gguf)), ("smol-url", url)):
                async with client.pull_model_stream(
                        m.PullModelRequest(model=source, name=name)) as progress:
                    events = [ev async for ev in progress]
                assert events[-1] == {"status": "success"}, events
                pulled = engines / PLUGIN / "models" / name / gguf.name
                assert pulled.stat().st_size == gguf.stat().st_size
            listed = {i.name: i for i in (await client.list_models()).models}
            assert set(listed) == {"smol-path", "smol-url"}
            assert listed["smol-url"].details.format == "gguf"

            answer = json.loads(await client.invoke_service(
                "chat", "", json.dumps({"model": "smol-url", "messages": FRANCE, **GREEDY,
                                        "max_tokens": 24}).encode(), timeout=120))
            assert answer["model"] == "smol-url"
            assert "Paris" in answer["message"]["content"], answer
            await client.delete_model(m.DeleteModelRequest(model="smol-url"))
            assert [i.name for i in (await client.list_models()).models] == ["smol-path"]
    finally:
        server.shutdown()
        server.server_close()
