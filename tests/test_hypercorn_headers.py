"""The headers hypercorn adds to every answer, as the gateway's configuration makes them
(`serving.hypercorn_serve.HypercornConfig`, once a second instead of per answer).

Real parts: hypercorn's own `Config` (pinned), compared with the gateway's subclass.
An end-to-end check of the headers on a real answer is in tests/test_http_api.py.

Proven: the cached headers are hypercorn's own, byte for byte, for each protocol and
with the Server header off; a new second gives a new Date; with alt-svc headers (or
no Date header) hypercorn's own method answers.
"""

from __future__ import annotations

import time

import hypercorn.config
import pytest

from aogstream.serving import hypercorn_serve
from aogstream.serving.hypercorn_serve import HypercornConfig


def _both(ours: HypercornConfig, theirs: hypercorn.config.Config, protocol: str
          ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """Both configs' headers, taken within one second (retried across a boundary)."""
    while True:
        second = int(time.time())
        pair = ours.response_headers(protocol), theirs.response_headers(protocol)
        if int(time.time()) == second:
            return pair


@pytest.mark.parametrize("protocol", ["h11", "h2", "h3"])
@pytest.mark.parametrize("server_header", [True, False])
def test_the_cached_headers_are_hypercorns_own(protocol: str, server_header: bool):
    ours, theirs = HypercornConfig(), hypercorn.config.Config()
    ours.include_server_header = theirs.include_server_header = server_header
    for _ in range(3):  # the first call formats, the next ones reuse
        mine, expected = _both(ours, theirs, protocol)
        assert mine == expected


def test_a_new_second_gives_a_new_date(monkeypatch: pytest.MonkeyPatch):
    ours = HypercornConfig()
    now = [1_796_552_030.2]
    monkeypatch.setattr(hypercorn_serve.time, "time", lambda: now[0])
    first = dict(ours.response_headers("h11"))[b"date"]
    now[0] += 0.5
    assert dict(ours.response_headers("h11"))[b"date"] == first
    now[0] += 1.0
    later = dict(ours.response_headers("h11"))[b"date"]
    assert later != first and later == b"Sun, 06 Dec 2026 10:13:51 GMT"


def test_alt_svc_and_no_date_are_left_to_hypercorn():
    ours, theirs = HypercornConfig(), hypercorn.config.Config()
    ours.alt_svc_headers = theirs.alt_svc_headers = ['h3=":443"; ma=3600']
    assert _both(ours, theirs, "h11")[0] == _both(ours, theirs, "h11")[1]
    ours, theirs = HypercornConfig(), hypercorn.config.Config()
    ours.include_date_header = theirs.include_date_header = False
    assert ours.response_headers("h11") == theirs.response_headers("h11")
