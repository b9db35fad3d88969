"""jsonata's time functions as the templates use them, fast.

Every chunk of a converted stream stamps a time (`$fromMillis`, `$toMillis`, `$millis`),
and the jsonata library's generic versions cost ~200 µs each. These are registered on
every compiled expression (`flavor`) and called directly by the compiled twins of the
common expressions (`fast`), so both evaluate a template to the same value. They live
apart from both so neither reaches into the other's private names.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jsonata.functions import Functions as _JFunctions

_FRACTION = re.compile(r"(\.\d{6})\d+")


@lru_cache(maxsize=256)
def _iso_millis(ms: int | float) -> str:
    """RFC 3339 UTC text of a unix-millisecond time; cached: a stream repeats it per chunk."""
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def from_millis(ms: Any, picture: Any = None, tz: Any = None) -> Any:
    """$fromMillis without picture: the library's generic formatter costs ~200 µs a chunk."""
    if ms is None:
        return None
    if picture is not None or tz is not None or not isinstance(ms, int | float):
        return _JFunctions.datetime_from_millis(ms, picture, tz)
    return _iso_millis(ms)


@lru_cache(maxsize=256)
def _iso_to_millis(text: str) -> int | None:
    """Unix milliseconds of plain ISO 8601 text (None if it is not); cached like _iso_millis."""
    try:
        stamp = datetime.fromisoformat(_FRACTION.sub(r"\1", text))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(stamp.timestamp() * 1000)


def to_millis(text: Any, picture: Any = None) -> Any:
    """$toMillis for plain ISO 8601 (incl. Go's nanoseconds); anything else to the library."""
    if text is None:
        return None
    if picture is None and isinstance(text, str):
        ms = _iso_to_millis(text)
        if ms is not None:
            return ms
    return _JFunctions.datetime_to_millis(text, picture)


def millis() -> int:
    """$millis(): the time now (as the jsonata library's clock: rounded milliseconds)."""
    return round(time.time() * 1000)
