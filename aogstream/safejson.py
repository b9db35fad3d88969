"""JSON from clients, decoded so that hostile input is a clear error and never a crash.

Every place that parses JSON a client sent (the hot routes and front doors, the
management routes, the realtime speech socket) goes through `loads`, so one function
decides what the gateway accepts. `json.loads` alone lets through, or fails with the
wrong exception on, input that later crashes the gateway with a 500:

- nesting 10,000 levels deep raises RecursionError, and a few thousand levels parse
  but then overflow the stack of the converters (jsonata, the Python twins);
- an integer of more than 4,300 digits raises a plain ValueError (Python's limit on
  int/str conversion), and `1e999` parses to infinity, which re-serialises as the
  non-JSON `Infinity`;
- a lone surrogate (`"\\ud800"`, or the bytes ED A0 80, which `json.loads` decodes
  with `surrogatepass`) parses to a str that cannot be encoded back to UTF-8, so the
  first `.encode()` downstream raises UnicodeEncodeError;
- `NaN` and `Infinity` are Python extensions that no other JSON parser accepts.

All of these become a `JSONInputError` whose message names the problem (and, where
there is one, the field). The checks cost little on ordinary bodies: numbers are
checked as they are parsed (`parse_float`, only for literals with a fraction or an
exponent), and the walk over the parsed containers runs only when a C-speed test over
the text says it might find something (more brackets than the depth limit, a
`\\ud8..`-`\\udf..` escape).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Deeper than any real request (chat with tool schemas nests ~20 levels) and shallow
# enough that every recursive consumer downstream (jsonata, the converters, the plugins'
# own parsers) stays far from its stack limit.
MAX_DEPTH = 128
# Python's default limit on converting digit strings to int.
MAX_INT_DIGITS = 4300

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONInputError(ValueError):
    """JSON a client sent that the gateway refuses; the message says why and where."""


def _reject_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not valid JSON; send numbers as finite decimals")


def _finite_float(text: str) -> float:
    """`1e999` would parse to infinity and leave as the non-JSON `Infinity`."""
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _where(path: tuple[str | int, ...]) -> str:
    """`messages[0].content`: the field, written so that it is safe to echo back."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            safe = part.encode("utf-8", "backslashreplace").decode("utf-8")
            out += f".{safe}" if safe.isidentifier() else f"[{safe!r}]"
    out = out.lstrip(".") or "the top level"
    return out if len(out) <= 80 else out[:77] + "..."


def _walk(value: Any, what: str, depth: bool, text: bool) -> None:
    """One iterative pass over the containers (no recursion: this is what must not
    overflow) checking the properties the cheap pre-tests flagged."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, level, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            if text:
                _text(node, path, what)
            continue
        if depth and level > MAX_DEPTH:
            raise JSONInputError(f"{what} is JSON nested deeper than {MAX_DEPTH} levels "
                                 f"(at {_where(path)}); flatten it")
        for key, child in items:
            where = (*path, key)
            if text:
                _text(key, where, what)
            if isinstance(child, dict | list):
                stack.append((child, level + 1, where))
            elif text:
                _text(child, where, what)


def _text(value: Any, path: tuple[str | int, ...], what: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONInputError(
                f"{what} has a lone UTF-16 surrogate (e.g. \\ud800 without its pair) in "
                f"{_where(path)}; send valid Unicode text") from None


# one decoder for every call (json.loads with options would build one per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(data: bytes | bytearray | memoryview | str, what: str = "request body") -> Any:
    """Decode JSON a client sent, or raise JSONInputError saying what is wrong.

    `data` must be UTF-8 (RFC 8259; a leading BOM is tolerated); `what` names the input
    in messages ("request body", "text frame")."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"{what} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}"
                                 f" at position {exc.start}); send JSON encoded as UTF-8"
                                 ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"{what} is not valid JSON at line {exc.lineno} column "
                             f"{exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise JSONInputError(f"{what} is JSON nested deeper than {MAX_DEPTH} levels; "
                             "flatten it") from None
    except JSONInputError:
        raise
    except ValueError as exc:  # int digits over sys.get_int_max_str_digits()
        if "digits" in str(exc):
            raise JSONInputError(f"{what} has an integer of more than {MAX_INT_DIGITS} "
                                 "digits; send big numbers as strings") from None
        raise JSONInputError(f"{what} is not valid JSON: {exc}") from None
    depth = text.count("[") + text.count("{") > MAX_DEPTH
    surrogates = ("\\ud" in text or "\\uD" in text) and \
        _SURROGATE_ESCAPE.search(text) is not None
    if depth or surrogates:
        _walk(value, what, depth, surrogates)
    return value


def loads_object(data: bytes | bytearray | memoryview | str,
                 what: str = "request body") -> dict[str, Any]:
    """`loads`, and the value must be a JSON object."""
    value = loads(data, what)
    if not isinstance(value, dict):
        raise JSONInputError(f"{what} must be a JSON object, not {type_name(value)}")
    return value


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def short(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, for echoing a client's value back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
