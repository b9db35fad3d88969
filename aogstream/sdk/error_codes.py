"""Plugin exceptions as AOG's business codes: the one place that decides them.

An AOG host reads a plugin's failure from `code`/`message` in the answer, never from a
gRPC status, so every call shape (unary, stream, bidi, engine and model management)
must turn an exception into the same `(code, message)` pair. Kept apart from the
servicer and the stream relay because both use it and neither owns it.
"""

from __future__ import annotations

import json

from aogstream import manifest as m


def error_code(exc: BaseException) -> tuple[int, str]:
    """Map an exception to AOG's (code, message)."""
    if isinstance(exc, m.PluginError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return m.ERR_CODE_UNIMPLEMENTED, str(exc) or "not implemented"
    if isinstance(exc, (ValueError, json.JSONDecodeError)):
        return m.ERR_CODE_INVALID_ARGUMENT, str(exc)
    return m.ERR_CODE_INTERNAL, f"{type(exc).__name__}: {exc}"

