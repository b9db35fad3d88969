"""Unit tests of the native auth store's pure parts and of `scheduler.pick`'s request.

Real parts: `host.native.auths.AuthStore` over a temporary folder, `gojson`. The one
fake is the scheduler plugin of the last test (an object with `call_raw`), which
captures the request so its bytes can be compared with what Go writes.

Proven: Go times are read with nanoseconds and offsets, the zero time is "never";
an update keeps what the plugin left empty and the host's keys, and an unchanged one
writes nothing; a log message loses every value of the record; fill-first takes the
highest priority, then the first name; a cooled-down record serves again once its file
changes; the `scheduler.pick` request is Go-shaped (field order, sorted maps, base64-free
metadata) and its answer picks, delegates, falls back or rejects as the spec says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aogstream import errors
from aogstream.host.native import gojson as gj
from aogstream.host.native import scheduler
from aogstream.host.native.auths import AuthStore, parse_time, redact


def test_go_times_are_read_to_the_second_and_the_zero_time_is_never() -> None:
    assert parse_time("2000-01-01T00:00:00Z") == 946684800.0
    assert parse_time("2000-01-01T01:00:00.123456789+01:00") == pytest.approx(946684800.123456)
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("yesterday") is None


def test_an_update_keeps_what_the_plugin_left_empty(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    rec = store.save("a.json", {"type": "p", "api_key": "k-old", "label": "mine",
                                "priority": 3})
    new = {"Provider": "", "ID": "", "FileName": "", "Label": "", "StorageJSON":
           gj.b64(b'{"api_key":"k-new"}'), "Metadata": None,
           "NextRefreshAfter": "0001-01-01T00:00:00Z"}
    saved = store.update_auth(rec, new, "2999-01-01T00:00:00Z", refreshed=True)
    assert saved is not None
    assert saved.data["api_key"] == "k-new" and saved.data["label"] == "mine"
    assert saved.data["priority"] == 3 and saved.data["type"] == "p"
    assert saved.data["next_refresh_after"] == "2999-01-01T00:00:00Z"
    assert "last_refresh" in saved.data
    assert saved.next_refresh == parse_time("2999-01-01T00:00:00Z")
    # nothing at all: the old record, unchanged, is not written again
    assert store.update_auth(saved, {}, "2999-01-01T00:00:00Z") is None


def test_a_log_message_loses_the_records_values(tmp_path: Path) -> None:
    rec = AuthStore(tmp_path).save("a.json", {"type": "p", "token": {"access": "sk-123456"},
                                              "key": "abcdefgh"})
    assert redact("bad sk-123456 and abcdefgh for p", rec) == \
        "bad [redacted] and [redacted] for p"


def test_fill_first_and_a_cool_down_that_ends_when_the_file_changes(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    b = store.save("b.json", {"type": "p", "priority": 2})
    store.save("a.json", {"type": "p"})
    store.save("c.json", {"type": "p", "priority": 2})
    assert store.fill_first(store.usable("p")) == b
    store.cool_down(b, 401)
    assert [r.name for r in store.usable("p")] == ["a.json", "c.json"]
    store.save("b.json", {"type": "p", "priority": 2, "renewed": True})
    assert [r.name for r in store.usable("p")] == ["a.json", "b.json", "c.json"]


class _Sched:
    """A scheduler plugin that answers `answer` and keeps the request it got."""

    def __init__(self, answer: Any) -> None:
        self.id, self.state, self.priority = "s", "running", 5
        self.capabilities = {"scheduler": True}
        self.metadata = {"Name": "s", "Version": "1", "Author": "a",
                         "GitHubRepository": "g"}
        self.answer = answer
        self.sent: bytes = b""

    async def call_raw(self, method: str, request: dict[str, Any]) -> Any:
        assert method == "scheduler.pick"
        self.sent = gj.dumps(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class _Owner:
    auth_key = "p"


async def test_the_scheduler_gets_go_shaped_candidates_and_its_answer_counts(
        tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.save("a.json", {"type": "p", "k": "<&>"})
    store.save("b.json", {"type": "p", "priority": 4})
    sched = _Sched({"AuthID": "b", "Handled": True})
    got = await scheduler.pick(store, _Owner(), [sched], "m", True,
                               {"X-A": ["1"]})
    assert got is not None and got.name == "b.json"
    path = str(tmp_path / "native-auths")
    expected = (
        '{"Plugin":{"Name":"s","Version":"1","Author":"a","GitHubRepository":"g","Logo":"",'
        '"ConfigFields":null},"Provider":"p","Providers":["p"],"Model":"m","Stream":true,'
        '"Options":{"Headers":{"X-A":["1"]},"Metadata":null},"Candidates":['
        '{"ID":"a","Provider":"p","Priority":0,"Status":"active","Attributes":{"path":'
        + json.dumps(path + "/a.json") + '},"Metadata":{"k":"\\u003c\\u0026\\u003e",'
        '"type":"p"}},'
        '{"ID":"b","Provider":"p","Priority":4,"Status":"active","Attributes":{"path":'
        + json.dumps(path + "/b.json") + '},"Metadata":{"priority":4,"type":"p"}}]}')
    assert sched.sent.decode() == expected
    sched.answer = {"AuthID": "", "DelegateBuiltin": "fill-first", "Handled": True}
    got = await scheduler.pick(store, _Owner(), [sched], "m", False, {})
    assert got is not None and got.name == "b.json"
    sched.answer = {"AuthID": "ghost", "Handled": True}
    assert await scheduler.pick(store, _Owner(), [sched], "m", False, {})
    sched.answer = gj.EnvelopeError("no", "scheduler_denied", 403)
    with pytest.raises(errors.GatewayError) as info:
        await scheduler.pick(store, _Owner(), [sched], "m", False, {})
    assert info.value.status == 403 and "rejected" in info.value.message
    sched.answer = RuntimeError("boom")
    with pytest.raises(errors.GatewayError) as info:
        await scheduler.pick(store, _Owner(), [sched], "m", False, {})
    assert info.value.status == 502
