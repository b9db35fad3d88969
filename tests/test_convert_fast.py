"""Fast twins (aogstream.convert.fast) give exactly jsonata's answers, and only where they should.

Every twin runs beside the jsonata expression it replaces on a corpus of real-looking bodies
and on hundreds of mutants of them (fields missing, null, empty, of the wrong type, wrapped in
arrays, unicode), and the JSON bytes must be identical; where jsonata fails, the twin must
fall back to it.  Whole conversions with and without twins must agree byte for byte too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aogstream.convert import Converter, FlavorRegistry, parse_flavor
from aogstream.convert.engine import _dumps
from aogstream.convert.fast import TWINS, Fallback, lookup, normalise
from aogstream.convert.flavor import BUILTIN_DIR, Step

FAST = FlavorRegistry()
SLOW = FlavorRegistry(fast=False)
HOT_SERVICES = ("chat", "generate", "embed")

# ---------------------------------------------------------------- the corpus

UNICODE = "héllo 世界 🚀 \u2028 \"quoted\" \\ back"
TOOL_CALLS = [{"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}}]
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def oa_chunk(delta: Any, reason: Any = None, **extra: Any) -> dict[str, Any]:
    """An OpenAI chat.completion.chunk."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "qwen2.5", "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": reason}], **extra}


CHAT = [
    # openai stream chunks
    oa_chunk({"role": "assistant", "content": ""}),
    oa_chunk({"content": " world"}),
    oa_chunk({"content": UNICODE}),
    oa_chunk({"content": None, "tool_calls": TOOL_CALLS}),
    oa_chunk({}, "stop"),
    oa_chunk({}, "tool_calls", usage=None),
    {**oa_chunk({}), "choices": [], "usage": USAGE},
    {**oa_chunk({"content": "x"}), "created": 1700000000.25},
    {k: v for k, v in oa_chunk({"content": "x"}).items() if k not in ("id", "created")},
    # openai responses
    {"id": "chatcmpl-2", "object": "chat.completion", "created": 1700000001, "model": "m",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                  "finish_reason": "length"}], "usage": USAGE},
    {"object": "chat.completion", "model": "m",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                          "tool_calls": TOOL_CALLS},
                  "finish_reason": None}]},
    # AOG chunks and responses
    {"id": "42", "model": "m", "created_at": "2023-11-14T22:13:20.000Z",
     "message": {"role": "assistant", "content": " world"}, "finished": False},
    {"id": "42", "model": "m", "created_at": "2024-01-01T00:00:00.123456789Z",
     "message": {"role": "assistant", "content": ""}, "finished": True,
     "finish_reason": "length", "usage": USAGE},
    {"model": "m", "created_at": "2024-01-01T01:00:00+01:00", "finished": True,
     "message": {"role": "assistant", "content": UNICODE, "tool_calls": TOOL_CALLS}},
    {"id": "", "model": "m", "message": {"role": "assistant", "content": "x"},
     "finished": False, "usage": None},
    {"model": "m", "created_at": "", "finished": True, "finish_reason": "stop"},
    # ollama chunks and responses
    {"model": "qwen2.5:0.5b", "created_at": "2024-01-01T00:00:00.123456Z",
     "message": {"role": "assistant", "content": " world"}, "done": False},
    {"model": "qwen2.5:0.5b", "created_at": "2024-01-01T00:00:00Z",
     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 5, "eval_count": 2, "total_duration": 123},
    {"model": "q", "created_at": "2024-01-01T00:00:00Z", "done": True, "eval_count": 3},
    {"model": "q", "message": {"role": "assistant", "content": "", "tool_calls": TOOL_CALLS},
     "done": True, "done_reason": "stop", "prompt_eval_count": 0, "eval_count": 1.5},
    # requests (openai, AOG, ollama)
    {"model": "gpt-x", "messages": [{"role": "user", "content": UNICODE}], "stream": True,
     "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"], "max_tokens": 12},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
     "max_completion_tokens": 5, "max_tokens": 9, "tools": [{"type": "function"}]},
    {"messages": [{"role": "user", "content": "u"}], "stream": True,
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
     "tool_choice": "required", "parallel_tool_calls": False,
     "response_format": {"type": "json_object"}, "stream_options": {"include_usage": True}},
    {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "12"}],
     "tool_choice": {"type": "function", "function": {"name": "f"}},
     "stream_options": None},
    {"messages": [], "max_completion_tokens": None, "top_k": 4, "keep_alive": "5m"},
    {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "stream": False,
     "keep_alive": -1, "options": {"temperature": 0.1, "num_predict": 8, "seed": 1,
                                   "top_k": 5, "top_p": 1.0, "stop": ["a", "b"]}},
    {"messages": [{"role": "user", "content": "x"}], "options": {}},
]

GENERATE = [
    {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
     "choices": [{"index": 0, "text": " a", "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m",
     "choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "usage": USAGE},
    {"object": "text_completion", "model": "m", "choices": [{"index": 0, "text": UNICODE}]},
    {"object": "text_completion", "model": "m", "choices": []},
    {"id": "7", "model": "m", "created_at": "2023-11-14T22:13:20.000Z", "response": " a",
     "finished": False},
    {"model": "m", "response": "", "finished": True, "finish_reason": "length",
     "usage": USAGE},
    {"model": "m", "created_at": "2024-01-01T00:00:00Z", "response": "Be", "done": False},
    {"model": "m", "created_at": "2024-01-01T00:00:00Z", "response": "", "done": True,
     "done_reason": "length", "context": [1, 2, 3]},
    {"model": "m", "prompt": UNICODE, "stream": True, "max_tokens": 4, "temperature": 0,
     "stop": "\n", "seed": 9, "top_p": 0.5},
    {"model": "m", "prompt": "Why", "system": "be brief", "images": ["aGk="],
     "options": {"num_predict": 3, "top_k": 2}, "keep_alive": "1m"},
]

EMBED = [
    {"model": "e", "input": ["a", UNICODE], "encoding_format": "float", "dimensions": 8},
    {"model": "e", "input": "just one", "keep_alive": "5m", "truncate": True},
    {"object": "list", "model": "e",
     "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]},
              {"object": "embedding", "index": 1, "embedding": [1e-9, 3]}],
     "usage": {"prompt_tokens": 2, "total_tokens": 2}},
    {"id": "7", "model": "e", "data": [{"index": 0, "embedding": [0.5]}]},
    {"model": "e", "data": []},
    {"model": "e", "data": [{"index": 0}], "usage": {"prompt_tokens": 0, "total_tokens": 0}},
    {"model": "e", "embeddings": [[0.5, 0.25]], "prompt_eval_count": 4},
    {"model": "e", "embeddings": [[1.0], [2.0, 3.0]], "total_duration": 5},
    {"model": "e", "embeddings": []},
]

CORPUS = {"chat": CHAT, "generate": GENERATE, "embed": EMBED}

BINDINGS = [
    {},
    {"id": "42"},
    {"model": "chosen", "stream": True, "id": "7"},
    {"model": "m", "stream": False},
    {"model": UNICODE, "stream": "yes"},
]

ODD = [None, "", 0, 2.5, True, False, [], {}, UNICODE, [1, 2], [{"a": 1}], {"k": None}, -1e20]
_DROP = object()


def _paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 3) -> Iterator[tuple[Any, ...]]:
    """Every key/index path in `value` down to `depth`."""
    if depth == 0:
        return
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key), depth - 1)


def _replaced(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A deep copy of `doc` with the value at `path` replaced (or dropped)."""
    out = copy.deepcopy(doc)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if new is _DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


def mutants(doc: Any) -> Iterator[Any]:
    """Variants of `doc`: each field dropped, made odd, or wrapped in an array."""
    for path in _paths(doc):
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            yield _replaced(doc, path, _DROP)
        for odd in ODD:
            yield _replaced(doc, path, odd)
        yield _replaced(doc, path, [parent[path[-1]]])


# ---------------------------------------------------------------- comparing twin and jsonata


def _hot_steps() -> list[tuple[str, Step, Step]]:
    """(where, fast step, slow step) for every jsonata step of the hot services."""
    out = []
    for name, flavor in sorted(FAST.builtin().items()):
        slow_flavor = SLOW.builtin()[name]
        for svc in HOT_SERVICES:
            if svc not in flavor.services:
                continue
            for block, pipe in flavor.services[svc].pipelines.items():
                slow_pipe = slow_flavor.services[svc].pipelines[block]
                for fast_step, slow_step in zip(pipe.body_steps, slow_pipe.body_steps,
                                                strict=True):
                    if fast_step.converter == "jsonata":
                        out.append((f"{name}.{svc}.{block}", fast_step, slow_step))
    return out


def _twin_cases() -> list[tuple[str, str, Step]]:
    """One (twin name, service, slow step) per distinct twin."""
    seen: dict[str, tuple[str, str, Step]] = {}
    for where, fast_step, slow_step in _hot_steps():
        if fast_step.fast is not None and fast_step.fast.__name__ not in seen:
            seen[fast_step.fast.__name__] = (fast_step.fast.__name__, where.split(".")[1],
                                             slow_step)
    return sorted(seen.values(), key=lambda c: c[0])


def _run_jsonata(step: Step, doc: Any, bindings: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, step.expr.evaluate(copy.deepcopy(doc), dict(bindings))  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - an error is an answer to compare too
        return False, exc


def _same(twin_out: Any, slow_out: Any, doc: Any) -> bool:
    """Byte-identical JSON; `$millis()` (no usable created_at) may differ by a second."""
    if (isinstance(twin_out, dict) and isinstance(slow_out, dict)
            and type(twin_out.get("created")) is int and type(slow_out.get("created")) is int
            and abs(twin_out["created"] - slow_out["created"]) <= 1
            and not (isinstance(doc, dict) and isinstance(doc.get("created_at"), str)
                     and doc["created_at"])):
        twin_out = {**twin_out, "created": 0}
        slow_out = {**slow_out, "created": 0}
    return _dumps(twin_out) == _dumps(slow_out)


def compare(twin: Any, step: Step, doc: Any, bindings: dict[str, Any]) -> str:
    """'fast' when the twin answered (and agreed), 'fallback' when it declined; else fails."""
    before = copy.deepcopy(doc)
    arg = copy.deepcopy(doc)
    try:
        out = twin(arg, dict(bindings))
    except Fallback:
        out = Fallback
    except Exception as exc:  # noqa: BLE001 - the engine falls back on anything; note it
        out = exc
    assert arg == before, f"{twin.__name__} mutated its input {before!r}"
    ok, slow = _run_jsonata(step, doc, bindings)
    if out is Fallback or isinstance(out, Exception):
        return "fallback"
    assert ok, f"{twin.__name__} answered {out!r} where jsonata fails ({slow}) on {doc!r}"
    assert _same(out, slow, doc), (
        f"{twin.__name__} on {doc!r} with {bindings!r}:\n twin    {_dumps(out)!r}\n"
        f" jsonata {_dumps(slow)!r}")
    return "fast"


# ---------------------------------------------------------------- the tests


def test_every_hot_builtin_expression_has_a_fast_twin():
    """A new or edited built-in chat/generate/embed expression without a twin is noticed here."""
    steps = _hot_steps()
    assert len(steps) > 50
    missing = [where for where, fast_step, _ in steps if fast_step.fast is None]
    assert not missing, f"no fast twin (add one to aogstream/convert/fast.py): {missing}"
    assert all(slow.fast is None for _, _, slow in steps)
    # and no twin is dead code
    used = {fast_step.fast for _, fast_step, _ in steps}
    assert used == set(TWINS.values())


@pytest.mark.parametrize(("name", "service", "step"), _twin_cases(),
                         ids=[c[0] for c in _twin_cases()])
def test_twin_matches_jsonata(name, service, step):
    """Same bytes as jsonata on the corpus and its mutants; falls back where jsonata fails."""
    twin = next(fn for fn in TWINS.values() if fn.__name__ == name)
    counts = {"fast": 0, "fallback": 0}
    for doc in CORPUS[service]:
        for bindings in BINDINGS:
            result = compare(twin, step, doc, bindings)
            assert result == "fast", f"{name} fell back on a plain body {doc!r}"
            counts[result] += 1
        for mutant in mutants(doc):
            counts[compare(twin, step, mutant, BINDINGS[2])] += 1
    # the twins must carry the odd-but-valid bodies too, not just give up on them
    assert counts["fast"] > 3 * counts["fallback"], counts


def test_twins_mirror_binding_and_type_edges():
    """Bindings set to None are unset; non-scalar bindings and array roots go to jsonata."""
    for _, fast_step, slow_step in _hot_steps():
        twin = fast_step.fast
        for doc, bindings in (({"model": "m"}, {"id": None, "model": None, "stream": None}),
                              ({}, {}), ([{"model": "m"}], {}), ("text", {}), (3, {}),
                              ({"model": "m"}, {"model": ["a"], "id": {"x": 1}})):
            compare(twin, slow_step, doc, bindings)


def test_modified_expression_falls_back_to_jsonata(tmp_path: Path):
    """One changed character means no twin; re-indenting keeps it; results stay right."""
    text = (BUILTIN_DIR / "openai.yaml").read_text()
    hot = '"finished": choices[0].finish_reason ? true : $exists(usage),'
    assert text.count(hot) == 1
    edited = parse_flavor(text.replace(hot, hot.replace("true", "1 = 1")), "openai.yaml")
    reindented = parse_flavor(text.replace(hot, hot.replace(" ? ", "\n" + " " * 16 + "?   ")),
                              "openai.yaml")
    block = "stream_response_to_aog"
    assert edited.service("chat").pipeline(block).body_steps[1].fast is None
    assert reindented.service("chat").pipeline(block).body_steps[1].fast is not None
    # an unrelated block keeps its twin
    assert edited.service("chat").pipeline("stream_response_from_aog").body_steps[0].fast

    (tmp_path / "openai.yaml").write_text(text.replace(hot, hot.replace("true", '"yes"')))
    (tmp_path / "aog.yaml").write_text((BUILTIN_DIR / "aog.yaml").read_text())
    stream = Converter(FlavorRegistry(tmp_path)).between("chat", "aog", "openai").stream(id="1")
    out = json.loads(stream.convert(json.dumps(oa_chunk({}, "stop")).encode()))
    assert out["finished"] == "yes"  # the edited template's own answer, from jsonata


def test_normalise_keeps_string_literals():
    """Whitespace inside string literals is meaning, outside it is not."""
    assert normalise('{ "a" :\n  x }') == '{ "a" : x }'
    assert normalise('{"a  b": x}') != normalise('{"a b": x}')
    assert normalise("{'it''s  x': 1}") == "{'it''s  x': 1}"
    assert normalise('{"q\\"  ": `a  b`}') == '{"q\\"  ": `a  b`}'
    assert lookup("{ }") is None


CONVERSIONS = [
    (svc, app, prov)
    for svc in HOT_SERVICES
    for app in sorted(FAST.builtin())
    for prov in sorted(FAST.builtin())
    if app != prov and svc in FAST.get(app).services and svc in FAST.get(prov).services
]


@pytest.mark.parametrize(("service", "app", "provider"), CONVERSIONS)
def test_whole_conversions_agree_with_jsonata(service, app, provider):
    """Requests, responses and stream chunks: the same bytes with and without twins."""
    fast = Converter(FAST).between(service, app, provider)
    slow = Converter(SLOW).between(service, app, provider)
    for doc in CORPUS[service]:
        body = json.dumps(doc).encode()
        for kind in ("request", "response", "stream"):
            outs = []
            for conv in (fast, slow):
                try:
                    if kind == "request":
                        outs.append(conv.request(body, model="m").body)
                    elif kind == "response":
                        outs.append(conv.response(body, id="9").body)
                    else:
                        outs.append(conv.stream(id="9").convert(body))
                except Exception as exc:  # noqa: BLE001 - both must fail alike
                    outs.append(type(exc))
            a, b = outs
            if isinstance(a, bytes) and isinstance(b, bytes) and a != b:
                da, db = json.loads(a), json.loads(b)
                if isinstance(da, dict) and isinstance(db, dict) and "created" in da:
                    assert abs(da.pop("created") - db.pop("created")) <= 1
                assert da == db and list(da) == list(db), (kind, doc)
            else:
                assert a == b, (kind, doc)


def test_done_marker_is_dropped_and_only_it():
    """The byte pre-check of action_if drops `[DONE]` (trimmed) and nothing else."""
    stream = Converter(FAST).between("chat", "aog", "openai").stream()
    assert stream.convert(b"[DONE]") is None
    assert stream.convert(b" \t[DONE]\r\n") is None
    assert stream.convert(b"\xc2\xa0[DONE]") is None  # NBSP is whitespace to str.strip
    body = json.dumps(oa_chunk({"content": "[DONE]"})).encode()
    assert json.loads(stream.convert(body))["message"]["content"] == "[DONE]"
