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
there is one, the field). The checks cost little: numbers are checked as they are
parsed (`parse_float`, only literals with a fraction or an exponent), and one iterative
walk over the parsed values checks depth and text, a few steps per value rather than a
scan per byte (scanning the text for brackets and escapes cost more than the parse).
"""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper than any real request (chat with tool schemas nests ~20 levels) and shallow
# enough that every recursive consumer downstream (jsonata, the converters, the plugins'
# own parsers) stays far from its stack limit.
MAX_DEPTH = 128
# Python's default limit on converting digit strings to int.
MAX_INT_DIGITS = 4300



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


_SCALARS = frozenset({int, float, bool, type(None)})


def _walk(value: Any, what: str) -> None:
    """One iterative pass over the parsed containers (no recursion: this is what must
    not overflow) checking depth and the text of keys and strings. It costs a few
    Python steps per value, not per byte: an ASCII str is known to be ASCII without
    looking at it, and only other strings are encoded to find a lone surrogate."""
    if isinstance(value, str):
        _text(value, (), what)
        return
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    containers = (dict, list)
    while stack:
        node, level, path = stack.pop()
        if level > MAX_DEPTH:
            raise JSONInputError(f"{what} is JSON nested deeper than {MAX_DEPTH} levels "
                                 f"(at {_where(path)}); flatten it")
        if isinstance(node, dict):
            items: Any = node.items()
        elif _SCALARS.issuperset(map(type, node)):
            continue  # numbers, booleans, nulls only (checked in C): nothing to check
        else:
            items = enumerate(node)
        for key, child in items:
            if isinstance(key, str) and not key.isascii():
                _text(key, (*path, key), what)
            if isinstance(child, str):
                if not child.isascii():
                    _text(child, (*path, key), what)
            elif isinstance(child, containers):
                stack.append((child, level + 1, (*path, key)))


def _text(value: str, path: tuple[str | int, ...], what: str) -> None:
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
    if isinstance(value, dict | list | str):
        _walk(value, what)
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
