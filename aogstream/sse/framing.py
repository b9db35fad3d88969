"""Byte-level framing for the two streaming formats the gateway relays: SSE and NDJSON.

These helpers sit on the hot path of every streamed token, so they work on ``bytes`` directly
(no str round trip, no regex) and do as little copying as the formats allow. The encoders are
pure functions; the decoders are small incremental state machines because upstream engines
hand us arbitrary network chunks, and an event or line may be cut at any byte.

The SSE decoder follows the WHATWG event-stream rules (any of CRLF, CR or LF ends a line,
``:`` starts a comment, one space after the field colon is dropped, several ``data`` lines of
one event are joined with LF) with one deliberate extension copied from how AOG's host treats
engines: a blank-line-separated block that carries no SSE field at all, e.g. a bare JSON
document, is passed through unchanged instead of being silently dropped. Engines that claim
``text/event-stream`` but write plain JSON lines are common enough that dropping them would
lose whole responses.
"""

from __future__ import annotations

__all__ = ["NdjsonDecoder", "SseDecoder", "SseEvents", "encode_ndjson", "encode_sse"]

_DATA_PREFIX = b"data: "
_DATA_JOINER = b"\ndata: "
_EVENT_END = b"\n\n"
_LF = b"\n"
_CR = b"\r"
_CRLF = b"\r\n"
_BOM = b"\xef\xbb\xbf"
# Field names the SSE spec defines. A line whose name is none of these and that is not a
# comment is what marks a block as "raw" for the AOG-style tolerance.
_SSE_FIELDS = frozenset((b"data", b"event", b"id", b"retry"))


def encode_sse(payload: bytes) -> bytes:
    """Frame one payload as an SSE event.

    The usual payload is a single-line JSON document, which takes the one-concatenation fast
    path. A payload containing line breaks must become several ``data:`` lines, otherwise a
    client would read the text after the break as a new (unknown) field and lose it.
    """
    if _LF not in payload and _CR not in payload:
        return _DATA_PREFIX + payload + _EVENT_END
    if _CR in payload:
        payload = payload.replace(_CRLF, _LF).replace(_CR, _LF)
    return _DATA_PREFIX + payload.replace(_LF, _DATA_JOINER) + _EVENT_END


def encode_ndjson(payload: bytes) -> bytes:
    """Frame one payload as an NDJSON line (the caller guarantees it has no newline)."""
    return payload + _LF


class SseEvents(list[bytes]):
    """Event payloads that also carry their exact SSE encoding when it is known.

    A relay that writes SSE without converting anything can send `sse` as it is
    instead of framing each payload again (`sse` is None when the events did not
    arrive as plain single-line `data:` events, e.g. after a comment or a CRLF).
    """

    __slots__ = ("sse",)

    def __init__(self, events: list[bytes] | None = None, sse: bytes | None = None) -> None:
        super().__init__(events or ())
        self.sse = sse


class _LineSplitter:
    """Turns arbitrary chunks into complete lines, accepting CRLF, CR and LF endings.

    Shared by both decoders so CR handling lives in one place. Each chunk is normalised to LF
    on arrival; the only ending that can straddle two chunks is CRLF with the CR last in one
    chunk, which ``_pending_cr`` remembers so the next chunk's leading LF is not read as a
    second (empty) line - for SSE that would wrongly end an event.
    """

    __slots__ = ("_buf", "_pending_cr")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data`` (without their terminators)."""
        if not data:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if data[:1] == _LF:
                data = data[1:]
                if not data:
                    return []
        if _CR in data:
            self._pending_cr = data[-1:] == _CR
            data = data.replace(_CRLF, _LF).replace(_CR, _LF)
        end = data.rfind(_LF)
        if end < 0:
            self._buf += data
            return []
        if self._buf:
            self._buf += data[:end]
            lines = bytes(self._buf).split(_LF)
            self._buf.clear()
        else:
            lines = data[:end].split(_LF)
        self._buf += data[end + 1 :]
        return lines

    def idle(self) -> bool:
        """True when no partial line is pending (the next chunk starts a line)."""
        return not self._buf and not self._pending_cr

    def take_rest(self) -> bytes | None:
        """Return the unterminated tail (or None) and reset, for end-of-stream handling."""
        self._pending_cr = False
        if not self._buf:
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class SseDecoder:
    """Incremental SSE parser that yields each event's data as bytes.

    Only ``data`` matters to the gateway (event names, ids and retry hints of upstream
    engines are not forwarded), so the other fields are recognised and dropped.
    """

    __slots__ = ("_data", "_head", "_lines", "_raw", "_started", "verbatim")

    def __init__(self) -> None:
        self._lines = _LineSplitter()
        self._head = b""
        self._data: list[bytes] = []
        self._raw: list[bytes] = []
        self._started = False
        # whether the last `feed` was whole plain `data:` events, so that
        # `encode_sse` of its result gives back exactly the chunk fed
        self.verbatim = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume a chunk and return the data of every event it completes, in order."""
        if not self._started:
            self.verbatim = False
            data = self._strip_bom(data)
            if not data:
                return []
        elif (
            data[:6] == _DATA_PREFIX
            and data[-2:] == _EVENT_END
            and not self._data
            and not self._raw
            and self._lines.idle()
            and _CR not in data
        ):
            # The usual chunk from a plugin: whole single-line `data:` events and
            # nothing pending here. Splitting with bytes methods gives exactly what the
            # line-by-line path would, at a fraction of the cost per event.
            events = data[:-2].split(_EVENT_END)
            for event in events:
                if event[:6] != _DATA_PREFIX or _LF in event:
                    break
            else:
                self.verbatim = True
                return [event[6:] for event in events]
        self.verbatim = False
        out: list[bytes] = []
        for line in self._lines.feed(data):
            self._line(line, out)
        return out

    def flush(self) -> list[bytes]:
        """Return the last event if the stream ended without its blank line.

        Unlike a browser, which discards such an event, the gateway prefers to deliver it:
        a final chunk from an engine that closed the connection early is still useful.
        """
        out: list[bytes] = []
        rest = self._lines.take_rest()
        if rest is not None:
            self._line(rest, out)
        self._dispatch(out)
        # A lone partial BOM is not content; forget it and allow the decoder to be reused.
        self._head = b""
        self._started = False
        return out

    def _strip_bom(self, data: bytes) -> bytes:
        """Drop a UTF-8 BOM at the very start of the stream, as the SSE spec requires.

        A chunk that is still a proper prefix of the BOM is held back, since a BOM split
        across chunks would otherwise leak into the first field name.
        """
        if self._head:
            data = self._head + data
            self._head = b""
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._head = data
            return b""
        self._started = True
        return data[len(_BOM) :] if data.startswith(_BOM) else data

    def _line(self, line: bytes, out: list[bytes]) -> None:
        """Apply one complete line to the event being built."""
        if not line:
            self._dispatch(out)
            return
        if line[0] == 0x3A:  # ":" - comment / keep-alive
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name not in _SSE_FIELDS:
            self._raw.append(line)

    def _dispatch(self, out: list[bytes]) -> None:
        """End the current event: emit its data, or the raw block if it had no SSE field."""
        if self._data:
            data = self._data
            out.append(data[0] if len(data) == 1 else _LF.join(data))
            self._data = []
        elif self._raw:
            raw = self._raw
            out.append(raw[0] if len(raw) == 1 else _LF.join(raw))
        if self._raw:
            self._raw = []


class NdjsonDecoder:
    """Incremental NDJSON parser: one bytes object per non-blank line.

    Blank lines are skipped rather than reported because some engines emit them as
    keep-alives between JSON objects; CRLF endings are tolerated for the same reason.
    """

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines = _LineSplitter()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume a chunk and return every complete non-blank line it finishes."""
        return [line for line in self._lines.feed(data) if line and not line.isspace()]

    def flush(self) -> list[bytes]:
        """Return a final line that had no trailing newline, if any."""
        rest = self._lines.take_rest()
        if rest is None or rest.isspace():
            return []
        return [rest]
