"""JSON exactly as Go's `encoding/json` writes it, and replies read as Go reads them.

Native plugins written in C or Rust find request fields by plain text search for
`"Body"`, `"Model"`... and do not decode `\\u` escapes, so what they read depends on
the bytes: Go's field names and order, every field present (zero values included),
`[]byte` fields as padded standard base64, `&`, `<`, `>` (and U+2028/U+2029) escaped
as `\\u0026`, `\\u003c`, `\\u003e`, no spaces. A Python dict is written in insertion
order (a Go struct: build it in declaration order); a `GoMap` is written with sorted
keys (a Go map). Replies are decoded with the standard parser and read through
`field`, which matches keys as Go does: exact name first, then case-insensitively.

Pure module: no I/O, no ABI; unit-tested in tests/test_native_plugins.py.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from typing import Any

_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
    "\f": "\\f", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
    "\u2028": "\\u2028", "\u2029": "\\u2029",
}
for _c in range(0x20):
    _ESCAPES.setdefault(chr(_c), f"\\u{_c:04x}")
_TABLE = str.maketrans(_ESCAPES)
_TABLE_RAW = str.maketrans({"&": "\\u0026", "<": "\\u003c", ">": "\\u003e"})


class GoMap(dict[str, Any]):
    """A Go map: its keys are written sorted (a plain dict keeps insertion order,
    which is how Go writes a struct's fields)."""


class RawJSON(bytes):
    """A `json.RawMessage`: JSON text written as it is (compacted, as Go does)."""


def b64(data: bytes | None) -> str | None:
    """A `[]byte` field: standard padded base64, nil → null."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def _string(s: str) -> str:
    if not s.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        # lone surrogates are not UTF-8: Go writes invalid text as U+FFFD
        s = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)
    return '"' + s.translate(_TABLE) + '"'


def _float(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"json: unsupported value: {v}")  # as Go refuses them
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    r = repr(v)
    if "e" in r:  # Go: 1e-07 → 1e-7, 1e+21 → 1e+21
        mant, _, exp = r.partition("e")
        sign = exp[0] if exp[0] in "+-" else "+"
        digits = exp.lstrip("+-").lstrip("0") or "0"
        return f"{mant}e{sign if sign == '-' else '+'}{digits}"
    return r


_KEYS: dict[str, str] = {}  # object keys as written: mostly Go's few field names
_KEYS_MAX = 4096  # keys from plugins' data (header names...) must not grow it forever


def _key(k: Any) -> str:
    text = _KEYS.get(k) if type(k) is str else None
    if text is None:
        text = _string(str(k))
        if type(k) is str and len(_KEYS) < _KEYS_MAX:
            _KEYS[k] = text
    return text


def _encode(v: Any, out: list[str]) -> None:
    """Appends `v` as Go writes it. The exact built-in types a request is made of go
    through one type lookup (this runs on every native call, a few dozen values each);
    anything else (subclasses: `GoMap`, `RawJSON`, bool/int enums; floats) through
    `_encode_other`, whose branches write the same for the same value."""
    kind = type(v)
    if kind is str:
        out.append(_string(v))
    elif kind is dict:
        _encode_items(v.items(), out)
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif kind is int:
        out.append(str(v))
    elif kind is bytes:
        out.append('"' + base64.b64encode(v).decode("ascii") + '"')
    elif kind is list:
        _encode_array(v, out)
    else:
        _encode_other(v, out)


def _encode_array(items: Iterable[Any], out: list[str]) -> None:
    """A JSON array's elements, in order."""
    out.append("[")
    for i, item in enumerate(items):
        if i:
            out.append(",")
        _encode(item, out)
    out.append("]")


def _encode_items(items: Iterable[tuple[Any, Any]], out: list[str]) -> None:
    """A JSON object's members, in the order given."""
    out.append("{")
    first = True
    for k, item in items:
        if not first:
            out.append(",")
        first = False
        out.append(_key(k))
        out.append(":")
        _encode(item, out)
    out.append("}")


def _encode_other(v: Any, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        out.append(_string(v))
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        out.append(_float(v))
    elif isinstance(v, RawJSON):
        out.append(json.dumps(json.loads(v), separators=(",", ":"), ensure_ascii=False)
                   .translate(_TABLE_RAW))
    elif isinstance(v, bytes | bytearray | memoryview):
        out.append('"' + base64.b64encode(bytes(v)).decode("ascii") + '"')
    elif isinstance(v, dict):
        _encode_items(sorted(v.items()) if isinstance(v, GoMap) else v.items(), out)
    elif isinstance(v, list | tuple):
        _encode_array(v, out)
    else:
        raise TypeError(f"json: unsupported type {type(v).__name__}")


def dumps(value: Any) -> bytes:
    """`value` as Go's `json.Marshal` writes it (see the module docstring)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def go_value(v: Any) -> Any:
    """Decoded JSON (e.g. a header map, metadata) made Go-shaped: its objects become
    `GoMap`s, so they are written with sorted keys as Go writes a map."""
    if isinstance(v, dict):
        return GoMap({str(k): go_value(x) for k, x in v.items()})
    if isinstance(v, list):
        return [go_value(x) for x in v]
    return v


def header_map(headers: dict[str, str] | dict[str, list[str]] | None) -> GoMap | None:
    """An `http.Header`/`url.Values`: a map of string arrays, nil → null."""
    if not headers:
        return None
    return GoMap({k: list(v) if isinstance(v, list | tuple) else [str(v)]
                  for k, v in headers.items()})


# ---- reading replies ------------------------------------------------------------------

class ReplyError(ValueError):
    """A reply that is not the JSON the ABI promises."""


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplyError(f"invalid JSON ({exc})") from None


def field(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` as Go's decoder finds it: the exact key, else the first key equal
    to it ignoring case; `default` when absent, null, or `obj` is not an object."""
    if not isinstance(obj, dict):
        return default
    if name in obj:
        v = obj[name]
        return default if v is None else v
    low = name.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return default if v is None else v
    return default


def text(obj: Any, name: str) -> str:
    v = field(obj, name, "")
    return v if isinstance(v, str) else str(v)


def boolean(obj: Any, name: str) -> bool:
    return field(obj, name, False) is True


def integer(obj: Any, name: str) -> int:
    v = field(obj, name, 0)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def data(obj: Any, name: str) -> bytes:
    """A `[]byte` field of a reply (base64 text; null/absent → b"")."""
    v = field(obj, name)
    if v is None:
        return b""
    if not isinstance(v, str):
        raise ReplyError(f"{name} must be a base64 string, not {type(v).__name__}")
    try:
        return base64.b64decode(v, validate=True)
    except ValueError:
        raise ReplyError(f"{name} is not valid base64") from None


class EnvelopeError(Exception):
    """`{"ok": false, "error": {...}}` from a plugin: its message, code and HTTP status
    (0 when the plugin gave none)."""

    def __init__(self, message: str, code: str = "", http_status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


def envelope_result(raw: bytes) -> Any:
    """The `result` of an envelope; `EnvelopeError` for `ok: false`, `ReplyError` when
    it is no envelope at all. `ok: true` without a result is `{}` (Go's zero value)."""
    env = loads(raw)
    if not isinstance(env, dict):
        raise ReplyError(f"the reply is a JSON {type(env).__name__}, not an envelope object")
    if field(env, "ok") is True:
        result = field(env, "result")
        return {} if result is None else result
    err = field(env, "error")
    if field(env, "ok") is False or isinstance(err, dict):
        return _raise_envelope(err)
    raise ReplyError('the reply has no "ok" field')


def is_error_envelope(raw: bytes) -> bool:
    try:
        env = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(env, dict) and field(env, "ok") is False and \
        isinstance(field(env, "error"), dict)


def _raise_envelope(err: Any) -> Any:
    message = text(err, "message") or "plugin call failed"
    status = integer(err, "http_status")
    raise EnvelopeError(message, text(err, "code"), status if status > 0 else 0)


def ok(result: Any) -> bytes:
    """A host callback's success envelope."""
    return dumps({"ok": True, "result": result})


def failure(message: str, code: str = "host_call_failed") -> bytes:
    """A host callback's error envelope."""
    return dumps({"ok": False, "error": {"code": code, "message": message}})
