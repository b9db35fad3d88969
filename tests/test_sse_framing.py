"""Tests for the SSE/NDJSON framing helpers.

The decoders see network chunks cut at arbitrary places, so most tests re-feed the same byte
string split at every possible index and require the same result as a single feed.
"""

from __future__ import annotations

import json

import pytest

from aogstream.sse import NdjsonDecoder, SseDecoder, encode_ndjson, encode_sse

PAYLOADS = [
    json.dumps({"id": 1, "choices": [{"delta": {"content": "Hel"}}]}).encode(),
    json.dumps({"id": 2, "choices": [{"delta": {"content": "lo ü"}}]}, ensure_ascii=False).encode(),
    b"[DONE]",
]


def sse_all(data: bytes, *cuts: int) -> list[bytes]:
    """Feed ``data`` cut at the given indexes, then flush; return every event."""
    dec = SseDecoder()
    out: list[bytes] = []
    prev = 0
    for cut in (*cuts, len(data)):
        out += dec.feed(data[prev:cut])
        prev = cut
    return out + dec.flush()


def ndjson_all(data: bytes, *cuts: int) -> list[bytes]:
    dec = NdjsonDecoder()
    out: list[bytes] = []
    prev = 0
    for cut in (*cuts, len(data)):
        out += dec.feed(data[prev:cut])
        prev = cut
    return out + dec.flush()


# --- encoders -------------------------------------------------------------------------------


def test_encode_sse_single_line():
    assert encode_sse(b'{"a":1}') == b'data: {"a":1}\n\n'


def test_encode_sse_multiline_emits_one_data_line_per_line():
    assert encode_sse(b"a\nb\n\nc") == b"data: a\ndata: b\ndata: \ndata: c\n\n"
    assert encode_sse(b"a\r\nb\rc") == b"data: a\ndata: b\ndata: c\n\n"


def test_encode_ndjson():
    assert encode_ndjson(b'{"a":1}') == b'{"a":1}\n'


@pytest.mark.parametrize("payload", [*PAYLOADS, b"", b"x\ny", b" leading space", b"a: b"])
def test_sse_round_trip(payload):
    assert sse_all(encode_sse(payload)) == [payload]


def test_ndjson_round_trip():
    stream = b"".join(encode_ndjson(p) for p in PAYLOADS)
    assert ndjson_all(stream) == PAYLOADS


# --- SSE decoder ----------------------------------------------------------------------------

MIXED_STREAM = (
    b": keep-alive comment\n"
    b"event: message\nid: 7\nretry: 1000\n"
    + encode_sse(PAYLOADS[0])
    + b"data: line one\r\ndata:line two\r\n\r\n"
    + b"event: ping\n\n"  # no data field: skipped
    + b'{"raw": true}\n\n'  # AOG-style tolerance
    + b"data: x\rdata: y\r\r"
    + encode_sse(PAYLOADS[1])
    + encode_sse(b"[DONE]")
)
MIXED_EXPECTED = [
    PAYLOADS[0],
    b"line one\nline two",
    b'{"raw": true}',
    b"x\ny",
    PAYLOADS[1],
    b"[DONE]",
]


def test_sse_mixed_stream_in_one_feed():
    assert sse_all(MIXED_STREAM) == MIXED_EXPECTED


def test_sse_every_single_split_point():
    for i in range(len(MIXED_STREAM) + 1):
        assert sse_all(MIXED_STREAM, i) == MIXED_EXPECTED, f"split at {i}"


def test_sse_every_pair_of_split_points_around_crlf():
    # Two cuts catch a CR and LF landing in different chunks with an empty chunk between.
    for i in range(len(MIXED_STREAM) + 1):
        for j in (i, i + 1, i + 2):
            if j <= len(MIXED_STREAM):
                assert sse_all(MIXED_STREAM, i, j) == MIXED_EXPECTED, f"splits {i},{j}"


def test_sse_byte_by_byte():
    assert sse_all(MIXED_STREAM, *range(1, len(MIXED_STREAM))) == MIXED_EXPECTED


def test_sse_only_complete_events_are_returned_by_feed():
    dec = SseDecoder()
    assert dec.feed(b"data: a\n") == []
    assert dec.feed(b"data: b\n") == []
    assert dec.feed(b"\n") == [b"a\nb"]


def test_sse_crlf_split_does_not_end_event_early():
    dec = SseDecoder()
    assert dec.feed(b"data: a\r") == []
    # If the LF were taken as a blank line, "a" would be dispatched here.
    assert dec.feed(b"\ndata: b\r\n") == []
    assert dec.feed(b"\r\n") == [b"a\nb"]


def test_sse_comments_and_other_fields_ignored():
    stream = b":c1\n: c2\nevent: x\nid: 3\nretry: 5\ndata: v\n:c3\n\n"
    assert sse_all(stream) == [b"v"]


def test_sse_only_one_space_stripped():
    assert sse_all(b"data:  two spaces\n\ndata:none\n\n") == [b" two spaces", b"none"]


def test_sse_field_without_colon_and_empty_data():
    # "data" alone is a data field with an empty value; the event is still dispatched.
    assert sse_all(b"data\n\ndata:\n\n") == [b"", b""]


def test_sse_event_without_data_is_skipped():
    assert sse_all(b"event: end\nid: 9\n\n:only a comment\n\n") == []


def test_sse_raw_json_block_passes_through():
    raw = b'{"model":"m","response":"hi","done":false}'
    assert sse_all(raw + b"\n\n" + encode_sse(b"[DONE]")) == [raw, b"[DONE]"]


def test_sse_raw_block_multiline_kept_as_is():
    assert sse_all(b"{\n  \"a\": 1\n}\n\n") == [b'{\n  "a": 1\n}']


def test_sse_done_sentinel_is_plain_data():
    assert sse_all(b"data: [DONE]\n\n") == [b"[DONE]"]


def test_sse_flush_returns_unterminated_event():
    dec = SseDecoder()
    assert dec.feed(b"data: first\n\ndata: tail") == [b"first"]
    assert dec.flush() == [b"tail"]
    assert dec.flush() == []


def test_sse_flush_with_terminated_line_but_no_blank_line():
    dec = SseDecoder()
    assert dec.feed(b"data: a\ndata: b\n") == []
    assert dec.flush() == [b"a\nb"]


def test_sse_flush_on_empty_decoder():
    assert SseDecoder().flush() == []


def test_sse_bom_is_stripped_even_when_split():
    stream = b"\xef\xbb\xbfdata: x\n\n"
    for i in range(len(stream) + 1):
        assert sse_all(stream, i) == [b"x"], f"split at {i}"
    assert sse_all(stream, 1, 2, 3) == [b"x"]


def test_sse_decoder_reusable_after_flush():
    dec = SseDecoder()
    dec.feed(b"data: a")
    assert dec.flush() == [b"a"]
    assert dec.feed(b"data: b\n\n") == [b"b"]


# --- NDJSON decoder -------------------------------------------------------------------------

NDJSON_STREAM = b'{"a":1}\n\n{"b":2}\r\n  \n{"c":3}\n[DONE]'
NDJSON_EXPECTED = [b'{"a":1}', b'{"b":2}', b'{"c":3}', b"[DONE]"]


def test_ndjson_every_split_point():
    for i in range(len(NDJSON_STREAM) + 1):
        assert ndjson_all(NDJSON_STREAM, i) == NDJSON_EXPECTED, f"split at {i}"


def test_ndjson_byte_by_byte():
    assert ndjson_all(NDJSON_STREAM, *range(1, len(NDJSON_STREAM))) == NDJSON_EXPECTED


def test_ndjson_feed_returns_only_complete_lines():
    dec = NdjsonDecoder()
    assert dec.feed(b'{"a"') == []
    assert dec.feed(b':1}\n{"b"') == [b'{"a":1}']
    assert dec.flush() == [b'{"b"']
    assert dec.flush() == []
