"""The lane's codec (aogstream/rpc/lane.py), alone: pure functions, no sockets.

Proven: frames survive any split of the byte stream (one byte at a time, many frames in
one piece); an OPEN, END or HEADERS payload reads back as written; bytes that are not a
lane frame raise LaneProtocolError instead of being misread; the lane's socket is beside
a unix plugin socket and absent for TCP. The two ends (host and SDK) over real sockets
are proven in tests/test_lane_host.py, tests/test_lane_sdk.py and tests/test_plugin_lane.py.
"""

from __future__ import annotations

import pytest

from aogstream.rpc import lane


def _all_frames(decoder: lane.FrameDecoder) -> list[tuple[int, bytes]]:
    out = []
    while (f := decoder.next()) is not None:
        out.append(f)
    return out


def test_frames_survive_any_split_of_the_stream() -> None:
    stream = (lane.open_frame("InvokeServiceBidi", [("k", "v")], None)
              + lane.frame(lane.MSG, b"\x00" * 70_000) + lane.frame(lane.MSG, b"")
              + lane.frame(lane.HALF_CLOSE) + lane.END_OK)
    want = _all_frames(_fed(stream))
    assert [k for k, _ in want] == [lane.OPEN, lane.MSG, lane.MSG, lane.HALF_CLOSE, lane.END]
    for step in (1, 3, 4096, 65_536):
        d = lane.FrameDecoder()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), step):
            d.feed(stream[i:i + step])
            got += _all_frames(d)
        assert got == want
        assert d.pending == 0


def _fed(data: bytes) -> lane.FrameDecoder:
    d = lane.FrameDecoder()
    d.feed(data)
    return d


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    d = _fed(lane.frame(lane.MSG, b"abcdef")[:-1])
    assert d.next() is None
    d.feed(b"f")
    assert d.next() == (lane.MSG, b"abcdef")


def test_control_payloads_read_back_as_written() -> None:
    (_, payload), = _all_frames(_fed(lane.open_frame("InvokeService", [("a", "1")], 2.5)))
    assert lane.parse_open(payload) == ("InvokeService", [("a", "1")], 2.5)
    (_, payload), = _all_frames(_fed(lane.end_frame("DEADLINE_EXCEEDED", "too slow")))
    assert lane.parse_end(payload) == ("DEADLINE_EXCEEDED", "too slow")
    (_, payload), = _all_frames(_fed(lane.headers_frame([("x-aogstream-batch-frames", "64")])))
    assert lane.parse_headers(payload) == [("x-aogstream-batch-frames", "64")]


def test_bytes_that_are_not_lane_frames_are_refused() -> None:
    with pytest.raises(lane.LaneProtocolError, match="unknown lane frame kind"):
        _fed(b"PRI * HTTP/2.0\r\n").next()
    for bad in (b"not json", b'{"metadata": []}', b'{"method": 1}',
                b'{"method": "InvokeService", "timeout": "soon"}'):
        with pytest.raises(lane.LaneProtocolError, match="bad OPEN"):
            lane.parse_open(bad)
    with pytest.raises(lane.LaneProtocolError, match="bad END"):
        lane.parse_end(b"[]")


def test_the_lane_lives_beside_a_unix_socket_only() -> None:
    assert lane.lane_path("unix", "/run/x/plugin1/plugin.sock") == "/run/x/plugin1/lane.sock"
    assert lane.lane_path("tcp", "127.0.0.1:5000") is None
