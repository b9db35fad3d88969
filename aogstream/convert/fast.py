"""Fast twins: plain-Python equivalents of the built-in templates' hot jsonata expressions.

jsonata-python interprets every expression node by node; converting one stream chunk costs
~20x a `json.loads` + `json.dumps` of it.  The built-in templates are the single source of
truth for behaviour, so the twins here are keyed by the *exact* expression text (whitespace
outside string literals normalised): a plugin's own template, or a built-in edited by one
character, finds no twin and runs on jsonata as before.

A twin mirrors jsonata-python 0.7.1 exactly for the JSON shapes real servers send, and for
anything else it does not try to be clever: it raises `Fallback` and the caller evaluates the
jsonata expression instead (same answer, or the same error).  Twins never mutate their input,
so falling back half-way is always safe.  tests/test_convert_fast.py runs every twin against
jsonata on a corpus of ordinary and odd bodies and checks that every hot built-in expression
has a twin.

Why one module of this size: each twin mirrors one template expression's exact text and
is found by that text, so they are kept side by side with the lookup table; splitting
them by flavor would scatter the table that proves every hot expression has a twin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, cast

from aogstream.convert.time_functions import from_millis, millis, to_millis

Twin = Callable[[Any, dict[str, Any]], Any]


class Fallback(Exception):
    """The twin met a shape it does not mirror exactly; evaluate the jsonata expression."""


class _Undefined:
    """jsonata's `undefined` (a missing value), distinct from JSON null (None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        """Readable in test failure output."""
        return "undefined"


U: Final = _Undefined()
_SCALARS = (str, int, float, bool)


def normalise(source: str) -> str:
    """The lookup key of an expression: whitespace runs outside string literals become one space.

    Whitespace outside literals never changes a jsonata expression's meaning, so re-indenting a
    template keeps its twin; any other edit, however small, changes the key.
    """
    out: list[str] = []
    i, n = 0, len(source)
    space = False
    while i < n:
        ch = source[i]
        if ch in "\"'`":
            j = i + 1
            while j < n and source[j] != ch:
                j += 2 if source[j] == "\\" and ch != "`" else 1
            if space and out:
                out.append(" ")
            space = False
            out.append(source[i:j + 1])
            i = j + 1
            continue
        if ch.isspace():
            space = True
        else:
            if space and out:
                out.append(" ")
            space = False
            out.append(ch)
        i += 1
    return "".join(out)


TWINS: dict[str, Twin] = {}


def lookup(source: str) -> Twin | None:
    """The twin of this expression text, or None when it must run on jsonata."""
    return TWINS.get(normalise(source))


def _twin(source: str) -> Callable[[Twin], Twin]:
    """Register a function as the twin of the given jsonata source text."""
    def register(fn: Twin) -> Twin:
        key = normalise(source)
        if key in TWINS:
            raise RuntimeError(f"two fast twins for one expression: {fn.__name__}")
        TWINS[key] = fn
        return fn
    return register


# ------------------------------------------------------------------ jsonata semantics, mirrored


def _root(doc: Any) -> dict[str, Any]:
    """Twins start from an object; a top-level array or scalar goes to jsonata."""
    if type(doc) is not dict:
        raise Fallback
    return doc


def _get(value: Any, key: str) -> Any:
    """One path step `value.key`: arrays map in jsonata, so they fall back."""
    t = type(value)
    if t is dict:
        return value.get(key, U)
    if value is U or value is None or t in _SCALARS:
        return U
    raise Fallback


def _first(value: Any) -> Any:
    """`x[0]` as a step followed by more steps: only arrays of objects (or an object) mirror."""
    t = type(value)
    if t is list:
        if not value:
            return U
        head = value[0]
        if type(head) is dict:
            return head
        raise Fallback
    if t is dict:
        return value  # a lone object is a one-item sequence
    if value is U or value is None:
        return U
    raise Fallback


def _var(bindings: dict[str, Any], name: str) -> Any:
    """`$name`: an unset (or None) binding is undefined."""
    value = bindings.get(name)
    if value is None:
        return U
    if type(value) in _SCALARS:
        return value
    raise Fallback


def _truthy(value: Any) -> bool:
    """jsonata's boolean cast for the condition of `a ? b : c` (arrays fall back)."""
    if value is U or value is None:
        return False
    t = type(value)
    if t is bool:
        return cast(bool, value)
    if t is str:
        return cast(bool, value != "")
    if t is int:
        return cast(bool, value != 0)
    if t is float:
        if not math.isfinite(value):
            raise Fallback
        return cast(bool, value != 0.0)
    if t is dict:
        return bool(value)
    raise Fallback


def _number(value: Any) -> float:
    """An arithmetic operand: jsonata raises on anything but a finite number (incl. null)."""
    t = type(value)
    if t is int or (t is float and math.isfinite(value)):
        return float(value)
    raise Fallback


def _result(value: float) -> Any:
    """jsonata-python's arithmetic result: integral floats become ints."""
    if not math.isfinite(value):
        raise Fallback
    whole = int(value)  # as jsonata.utils.Utils.convert_number, inlined
    return whole if whole == value else value


def _mul(value: Any, factor: float) -> Any:
    """`value * factor`; undefined stays undefined."""
    if value is U:
        return U
    return _result(_number(value) * factor)


def _add(left: Any, right: Any) -> Any:
    """`left + right`; undefined on either side gives undefined."""
    if left is U or right is U:
        return U
    return _result(_number(left) + _number(right))


def _floor_div(value: Any, divisor: float) -> Any:
    """`$floor(value / divisor)`."""
    if value is U:
        return U
    return math.floor(float(_result(_number(value) / divisor)))


def _from_ms(value: Any) -> Any:
    """`$fromMillis(value)` with the registered fast implementation."""
    if value is U:
        return U
    out = from_millis(value)
    return U if out is None else out


def _to_ms(value: Any) -> Any:
    """`$toMillis(value)` for strings (other inputs take the library's own path)."""
    if value is U:
        return U
    if type(value) is not str:
        raise Fallback
    out = to_millis(value)
    return U if out is None else out


def _created(doc: dict[str, Any]) -> Any:
    """`created_at ? $floor($toMillis(created_at) / 1000) : $floor($millis() / 1000)`."""
    stamp = doc.get("created_at", U)
    if _truthy(stamp):
        return _floor_div(_to_ms(stamp), 1000.0)
    return _floor_div(millis(), 1000.0)


def _obj(fields: dict[str, Any]) -> dict[str, Any]:
    """An object constructor: keys whose value is undefined are left out."""
    for value in fields.values():
        if value is U:
            return {k: v for k, v in fields.items() if v is not U}
    return fields


def _or(value: Any, default: Any) -> Any:
    """`x ? x : default`."""
    return value if _truthy(value) else default


# ------------------------------------------------------------------ openai (and openai-like)


def _tool_fields(d: dict[str, Any], stream_options: Any) -> dict[str, Any]:
    """`tool_choice`, `parallel_tool_calls`, `response_format` and `stream_options` of a
    chat request, in the templates' key order (undefined ones are left out by `_obj`)."""
    return {"tool_choice": d.get("tool_choice", U),
            "parallel_tool_calls": d.get("parallel_tool_calls", U),
            "response_format": d.get("response_format", U),
            "stream_options": stream_options}


@_twin("""{
  "model": $model,
  "stream": $stream,
  "messages": messages,
  "tools": tools,
  "tool_choice": tool_choice,
  "parallel_tool_calls": parallel_tool_calls,
  "response_format": response_format,
  "stream_options": stream_options,
  "seed": seed,
  "temperature": temperature,
  "top_p": top_p,
  "top_k": top_k,
  "stop": stop,
  "max_tokens": $exists(max_completion_tokens) ? max_completion_tokens : max_tokens,
  "keep_alive": keep_alive,
  "reasoning_effort": reasoning_effort
}""")
def openai_chat_request_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai (and openai-like) chat request → AOG."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "stream": _var(b, "stream"),
        "messages": d.get("messages", U), "tools": d.get("tools", U),
        **_tool_fields(d, d.get("stream_options", U)),
        "seed": d.get("seed", U), "temperature": d.get("temperature", U),
        "top_p": d.get("top_p", U), "top_k": d.get("top_k", U), "stop": d.get("stop", U),
        "max_tokens": d["max_completion_tokens"] if "max_completion_tokens" in d
        else d.get("max_tokens", U),
        "keep_alive": d.get("keep_alive", U),
        "reasoning_effort": d.get("reasoning_effort", U),
    })


@_twin("""{
  "model": $model,
  "stream": $stream,
  "messages": messages,
  "tools": tools,
  "tool_choice": tool_choice,
  "parallel_tool_calls": parallel_tool_calls,
  "response_format": response_format,
  "stream_options": $stream ? stream_options,
  "seed": seed,
  "temperature": temperature,
  "top_p": top_p,
  "stop": stop,
  "max_tokens": max_tokens,
  "reasoning_effort": reasoning_effort
}""")
def openai_chat_request_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG chat request → openai (and openai-like)."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "stream": _var(b, "stream"),
        "messages": d.get("messages", U), "tools": d.get("tools", U),
        **_tool_fields(d, d.get("stream_options", U) if _truthy(_var(b, "stream")) else U),
        "seed": d.get("seed", U), "temperature": d.get("temperature", U),
        "top_p": d.get("top_p", U), "stop": d.get("stop", U),
        "max_tokens": d.get("max_tokens", U),
        "reasoning_effort": d.get("reasoning_effort", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "model": model,
  "created_at": $exists(created) ? $fromMillis(created * 1000),
  "message": choices[0].message,
  "finished": true,
  "finish_reason": choices[0].finish_reason,
  "usage": usage
}""")
def openai_chat_response_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai chat response → AOG."""
    d = _root(doc)
    c0 = _first(d.get("choices", U))
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "model": d.get("model", U),
        "created_at": _from_ms(_mul(d["created"], 1000.0)) if "created" in d else U,
        "message": _get(c0, "message"), "finished": True,
        "finish_reason": _get(c0, "finish_reason"), "usage": d.get("usage", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "object": "chat.completion",
  "created": created_at ? $floor($toMillis(created_at) / 1000) : $floor($millis() / 1000),
  "model": model,
  "choices": [{
    "index": 0,
    "message": message,
    "finish_reason": finish_reason ? finish_reason : "stop"
  }],
  "usage": usage
}""")
def openai_chat_response_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG chat response → openai."""
    d = _root(doc)
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "object": "chat.completion",
        "created": _created(d), "model": d.get("model", U),
        "choices": [_obj({"index": 0, "message": d.get("message", U),
                          "finish_reason": _or(d.get("finish_reason", U), "stop")})],
        "usage": d.get("usage", U),
    })


@_twin("""{
  "id": id,
  "model": model,
  "created_at": $fromMillis(created * 1000),
  "message": {
    "role": "assistant",
    "content": choices[0].delta.content,
    "tool_calls": choices[0].delta.tool_calls
  },
  "finished": choices[0].finish_reason ? true : $exists(usage),
  "finish_reason": choices[0].finish_reason,
  "usage": usage
}""")
def openai_chat_stream_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai chat stream chunk → AOG (the hottest expression of all)."""
    d = _root(doc)
    c0 = _first(d.get("choices", U))
    delta = _get(c0, "delta")
    reason = _get(c0, "finish_reason")
    return _obj({
        "id": d.get("id", U), "model": d.get("model", U),
        "created_at": _from_ms(_mul(d.get("created", U), 1000.0)),
        "message": _obj({"role": "assistant", "content": _get(delta, "content"),
                         "tool_calls": _get(delta, "tool_calls")}),
        "finished": True if _truthy(reason) else "usage" in d,
        "finish_reason": reason, "usage": d.get("usage", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "object": "chat.completion.chunk",
  "created": created_at ? $floor($toMillis(created_at) / 1000) : $floor($millis() / 1000),
  "model": model,
  "choices": [{
    "index": 0,
    "delta": message,
    "finish_reason": finished ? (finish_reason ? finish_reason : "stop") : null
  }],
  "usage": usage
}""")
def openai_chat_stream_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG stream chunk → openai chat chunk."""
    d = _root(doc)
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "object": "chat.completion.chunk",
        "created": _created(d), "model": d.get("model", U),
        "choices": [_obj({
            "index": 0, "delta": d.get("message", U),
            "finish_reason": _or(d.get("finish_reason", U), "stop")
            if _truthy(d.get("finished", U)) else None,
        })],
        "usage": d.get("usage", U),
    })


@_twin("""{
  "model": $model,
  "stream": $stream,
  "prompt": prompt,
  "seed": seed,
  "temperature": temperature,
  "top_p": top_p,
  "stop": stop,
  "max_tokens": max_tokens
}""")
def openai_generate_request(doc: Any, b: dict[str, Any]) -> Any:
    """openai generate request ↔ AOG (both directions share the text)."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "stream": _var(b, "stream"), "prompt": d.get("prompt", U),
        "seed": d.get("seed", U), "temperature": d.get("temperature", U),
        "top_p": d.get("top_p", U), "stop": d.get("stop", U),
        "max_tokens": d.get("max_tokens", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "model": model,
  "created_at": $exists(created) ? $fromMillis(created * 1000),
  "response": choices[0].text,
  "finished": true,
  "finish_reason": choices[0].finish_reason,
  "usage": usage
}""")
def openai_generate_response_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai completion response → AOG."""
    d = _root(doc)
    c0 = _first(d.get("choices", U))
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "model": d.get("model", U),
        "created_at": _from_ms(_mul(d["created"], 1000.0)) if "created" in d else U,
        "response": _get(c0, "text"), "finished": True,
        "finish_reason": _get(c0, "finish_reason"), "usage": d.get("usage", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "object": "text_completion",
  "created": created_at ? $floor($toMillis(created_at) / 1000) : $floor($millis() / 1000),
  "model": model,
  "choices": [{
    "index": 0,
    "text": response,
    "finish_reason": finish_reason ? finish_reason : "stop"
  }],
  "usage": usage
}""")
def openai_generate_response_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG generate response → openai completion."""
    d = _root(doc)
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "object": "text_completion",
        "created": _created(d), "model": d.get("model", U),
        "choices": [_obj({"index": 0, "text": d.get("response", U),
                          "finish_reason": _or(d.get("finish_reason", U), "stop")})],
        "usage": d.get("usage", U),
    })


@_twin("""{
  "id": id ? id : $id,
  "model": model,
  "created_at": $exists(created) ? $fromMillis(created * 1000),
  "response": choices[0].text ? choices[0].text : "",
  "finished": choices[0].finish_reason ? true : false,
  "finish_reason": choices[0].finish_reason
}""")
def openai_generate_stream_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai completion stream chunk → AOG."""
    d = _root(doc)
    c0 = _first(d.get("choices", U))
    reason = _get(c0, "finish_reason")
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "model": d.get("model", U),
        "created_at": _from_ms(_mul(d["created"], 1000.0)) if "created" in d else U,
        "response": _or(_get(c0, "text"), ""), "finished": _truthy(reason),
        "finish_reason": reason,
    })


@_twin("""{
  "id": id ? id : $id,
  "object": "text_completion",
  "created": created_at ? $floor($toMillis(created_at) / 1000) : $floor($millis() / 1000),
  "model": model,
  "choices": [{
    "index": 0,
    "text": response ? response : "",
    "finish_reason": finished ? (finish_reason ? finish_reason : "stop") : null
  }]
}""")
def openai_generate_stream_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG generate stream chunk → openai completion chunk."""
    d = _root(doc)
    return _obj({
        "id": _or(d.get("id", U), _var(b, "id")), "object": "text_completion",
        "created": _created(d), "model": d.get("model", U),
        "choices": [{
            "index": 0, "text": _or(d.get("response", U), ""),
            "finish_reason": _or(d.get("finish_reason", U), "stop")
            if _truthy(d.get("finished", U)) else None,
        }],
    })


@_twin("""{
  "model": $model,
  "input": input,
  "dimensions": dimensions,
  "encoding_format": encoding_format
}""")
def openai_embed_request(doc: Any, b: dict[str, Any]) -> Any:
    """openai embeddings request ↔ AOG (both directions share the text)."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "input": d.get("input", U),
        "dimensions": d.get("dimensions", U), "encoding_format": d.get("encoding_format", U),
    })


def _map_objects(value: Any, make: Callable[[dict[str, Any]], dict[str, Any]]) -> list[Any]:
    """`[xs.{...}]` over an array of objects (anything else falls back)."""
    if value is U:
        return []
    if type(value) is not list:
        raise Fallback
    out = []
    for item in value:
        if type(item) is not dict:
            raise Fallback
        out.append(make(item))
    return out


@_twin("""{
  "id": $id,
  "model": model,
  "data": [data.{"index": index, "embedding": embedding}],
  "usage": usage
}""")
def openai_embed_response_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """openai embeddings response → AOG."""
    d = _root(doc)
    return _obj({
        "id": _var(b, "id"), "model": d.get("model", U),
        "data": _map_objects(d.get("data", U), lambda x: _obj({
            "index": x.get("index", U), "embedding": x.get("embedding", U)})),
        "usage": d.get("usage", U),
    })


@_twin("""{
  "object": "list",
  "model": model,
  "data": [data.{"object": "embedding", "index": index, "embedding": embedding}],
  "usage": usage ? usage : {"prompt_tokens": 0, "total_tokens": 0}
}""")
def openai_embed_response_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG embeddings response → openai."""
    d = _root(doc)
    return _obj({
        "object": "list", "model": d.get("model", U),
        "data": _map_objects(d.get("data", U), lambda x: _obj({
            "object": "embedding", "index": x.get("index", U),
            "embedding": x.get("embedding", U)})),
        "usage": _or(d.get("usage", U), {"prompt_tokens": 0, "total_tokens": 0}),
    })


# ------------------------------------------------------------------ ollama


def _ollama_options(d: dict[str, Any]) -> tuple[Any, ...]:
    """options.seed, .temperature, .top_p, .top_k, .stop, .num_predict."""
    opts = d.get("options", U)
    return tuple(_get(opts, k)
                 for k in ("seed", "temperature", "top_p", "top_k", "stop", "num_predict"))


def _stream_default_true(b: dict[str, Any]) -> Any:
    """`$exists($stream) ? $stream : true`."""
    value = _var(b, "stream")
    return True if value is U else value


@_twin("""{
  "model": $model,
  "stream": $exists($stream) ? $stream : true,
  "messages": messages,
  "tools": tools,
  "keep_alive": keep_alive,
  "seed": options.seed,
  "temperature": options.temperature,
  "top_p": options.top_p,
  "top_k": options.top_k,
  "stop": options.stop,
  "max_tokens": options.num_predict
}""")
def ollama_chat_request_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """ollama chat request → AOG."""
    d = _root(doc)
    seed, temperature, top_p, top_k, stop, num_predict = _ollama_options(d)
    return _obj({
        "model": _var(b, "model"), "stream": _stream_default_true(b),
        "messages": d.get("messages", U), "tools": d.get("tools", U),
        "keep_alive": d.get("keep_alive", U), "seed": seed, "temperature": temperature,
        "top_p": top_p, "top_k": top_k, "stop": stop, "max_tokens": num_predict,
    })


def _options_from_aog(d: dict[str, Any]) -> dict[str, Any]:
    """The `options` object of an ollama request built from an AOG one."""
    return _obj({
        "seed": d.get("seed", U), "temperature": d.get("temperature", U),
        "top_p": d.get("top_p", U), "top_k": d.get("top_k", U), "stop": d.get("stop", U),
        "num_predict": d.get("max_tokens", U),
    })


@_twin("""{
  "model": $model,
  "stream": $stream ? true : false,
  "messages": messages,
  "tools": tools,
  "keep_alive": keep_alive,
  "options": {
    "seed": seed,
    "temperature": temperature,
    "top_p": top_p,
    "top_k": top_k,
    "stop": stop,
    "num_predict": max_tokens
  }
}""")
def ollama_chat_request_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG chat request → ollama."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "stream": _truthy(_var(b, "stream")),
        "messages": d.get("messages", U), "tools": d.get("tools", U),
        "keep_alive": d.get("keep_alive", U), "options": _options_from_aog(d),
    })


def _ollama_usage(d: dict[str, Any]) -> Any:
    """The `usage` object built from ollama's eval counts (undefined without eval_count)."""
    if "eval_count" not in d:
        return U
    prompt = _or(d.get("prompt_eval_count", U), 0)
    completion = d["eval_count"]
    return _obj({"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": _add(prompt, completion)})


@_twin("""{
  "id": $id,
  "model": model,
  "created_at": created_at,
  "message": message,
  "finished": done ? true : false,
  "finish_reason": done_reason,
  "usage": $exists(eval_count) ? {
    "prompt_tokens": prompt_eval_count ? prompt_eval_count : 0,
    "completion_tokens": eval_count,
    "total_tokens": (prompt_eval_count ? prompt_eval_count : 0) + eval_count
  }
}""")
def ollama_chat_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """ollama chat response or stream chunk → AOG."""
    d = _root(doc)
    return _obj({
        "id": _var(b, "id"), "model": d.get("model", U), "created_at": d.get("created_at", U),
        "message": d.get("message", U), "finished": _truthy(d.get("done", U)),
        "finish_reason": d.get("done_reason", U), "usage": _ollama_usage(d),
    })


def _done_reason(d: dict[str, Any]) -> Any:
    """`finished ? (finish_reason ? finish_reason : "stop")` (undefined when not finished)."""
    if _truthy(d.get("finished", U)):
        return _or(d.get("finish_reason", U), "stop")
    return U


@_twin("""{
  "model": model,
  "created_at": created_at,
  "message": message ? message : {"role": "assistant", "content": ""},
  "done": finished ? true : false,
  "done_reason": finished ? (finish_reason ? finish_reason : "stop"),
  "prompt_eval_count": usage.prompt_tokens,
  "eval_count": usage.completion_tokens
}""")
def ollama_chat_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG chat response or stream chunk → ollama."""
    d = _root(doc)
    usage = d.get("usage", U)
    return _obj({
        "model": d.get("model", U), "created_at": d.get("created_at", U),
        "message": _or(d.get("message", U), {"role": "assistant", "content": ""}),
        "done": _truthy(d.get("finished", U)), "done_reason": _done_reason(d),
        "prompt_eval_count": _get(usage, "prompt_tokens"),
        "eval_count": _get(usage, "completion_tokens"),
    })


@_twin("""{
  "model": $model,
  "stream": $exists($stream) ? $stream : true,
  "prompt": prompt,
  "system": system,
  "images": images,
  "keep_alive": keep_alive,
  "seed": options.seed,
  "temperature": options.temperature,
  "top_p": options.top_p,
  "top_k": options.top_k,
  "stop": options.stop,
  "max_tokens": options.num_predict
}""")
def ollama_generate_request_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """ollama generate request → AOG."""
    d = _root(doc)
    seed, temperature, top_p, top_k, stop, num_predict = _ollama_options(d)
    return _obj({
        "model": _var(b, "model"), "stream": _stream_default_true(b),
        "prompt": d.get("prompt", U), "system": d.get("system", U),
        "images": d.get("images", U), "keep_alive": d.get("keep_alive", U),
        "seed": seed, "temperature": temperature, "top_p": top_p, "top_k": top_k,
        "stop": stop, "max_tokens": num_predict,
    })


@_twin("""{
  "model": $model,
  "stream": $stream ? true : false,
  "prompt": prompt,
  "system": system,
  "images": images,
  "keep_alive": keep_alive,
  "options": {
    "seed": seed,
    "temperature": temperature,
    "top_p": top_p,
    "top_k": top_k,
    "stop": stop,
    "num_predict": max_tokens
  }
}""")
def ollama_generate_request_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG generate request → ollama."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "stream": _truthy(_var(b, "stream")),
        "prompt": d.get("prompt", U), "system": d.get("system", U),
        "images": d.get("images", U), "keep_alive": d.get("keep_alive", U),
        "options": _options_from_aog(d),
    })


@_twin("""{
  "id": $id,
  "model": model,
  "created_at": created_at,
  "response": response,
  "finished": done ? true : false,
  "finish_reason": done_reason
}""")
def ollama_generate_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """ollama generate response or stream chunk → AOG."""
    d = _root(doc)
    return _obj({
        "id": _var(b, "id"), "model": d.get("model", U), "created_at": d.get("created_at", U),
        "response": d.get("response", U), "finished": _truthy(d.get("done", U)),
        "finish_reason": d.get("done_reason", U),
    })


@_twin("""{
  "model": model,
  "created_at": created_at,
  "response": response ? response : "",
  "done": finished ? true : false,
  "done_reason": finished ? (finish_reason ? finish_reason : "stop")
}""")
def ollama_generate_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG generate response or stream chunk → ollama."""
    d = _root(doc)
    return _obj({
        "model": d.get("model", U), "created_at": d.get("created_at", U),
        "response": _or(d.get("response", U), ""), "done": _truthy(d.get("finished", U)),
        "done_reason": _done_reason(d),
    })


@_twin("""{
  "model": $model,
  "input": input,
  "dimensions": dimensions,
  "keep_alive": keep_alive,
  "truncate": truncate
}""")
def ollama_embed_request(doc: Any, b: dict[str, Any]) -> Any:
    """ollama embed request ↔ AOG (both directions share the text)."""
    d = _root(doc)
    return _obj({
        "model": _var(b, "model"), "input": d.get("input", U),
        "dimensions": d.get("dimensions", U), "keep_alive": d.get("keep_alive", U),
        "truncate": d.get("truncate", U),
    })


def _indexed_embeddings(value: Any) -> Any:
    """`$map(embeddings, function($v, $i) { {"index": $i, "embedding": $v} })[]`."""
    if value is U or value is None:
        return U
    if type(value) is not list:
        raise Fallback
    if not value:
        return U
    out = []
    for i, vec in enumerate(value):
        if type(vec) is not list:
            raise Fallback
        out.append({"index": i, "embedding": vec})
    return out


@_twin("""{
  "id": $id,
  "model": model,
  "data": $map(embeddings, function($v, $i) { {"index": $i, "embedding": $v} })[],
  "usage": $exists(prompt_eval_count) ? {
    "prompt_tokens": prompt_eval_count,
    "total_tokens": prompt_eval_count
  }
}""")
def ollama_embed_response_to_aog(doc: Any, b: dict[str, Any]) -> Any:
    """ollama embed response → AOG."""
    d = _root(doc)
    count = d.get("prompt_eval_count", U)
    return _obj({
        "id": _var(b, "id"), "model": d.get("model", U),
        "data": _indexed_embeddings(d.get("embeddings", U)),
        "usage": U if count is U else _obj({"prompt_tokens": count, "total_tokens": count}),
    })


def _collect_embeddings(value: Any) -> Any:
    """`$reduce(data, function($acc, $d) { $append($acc, [[$d.embedding]]) }, [])`."""
    if value is U or value is None:
        return U
    if type(value) is not list:
        raise Fallback
    out = []
    for item in value:
        if type(item) is not dict:
            raise Fallback
        vec = item.get("embedding", U)
        if type(vec) is list:
            out.append(list(vec))
        elif vec is U:
            out.append([])
        else:
            raise Fallback
    return out


@_twin("""{
  "model": model,
  "embeddings": $reduce(data, function($acc, $d) { $append($acc, [[$d.embedding]]) }, []),
  "prompt_eval_count": usage.prompt_tokens
}""")
def ollama_embed_response_from_aog(doc: Any, b: dict[str, Any]) -> Any:
    """AOG embeddings response → ollama."""
    d = _root(doc)
    return _obj({
        "model": d.get("model", U), "embeddings": _collect_embeddings(d.get("data", U)),
        "prompt_eval_count": _get(d.get("usage", U), "prompt_tokens"),
    })


__all__ = ["TWINS", "Fallback", "Twin", "U", "lookup", "normalise"]
