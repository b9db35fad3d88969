"""Several serving processes on one port share one set of plugin processes.

A real gateway with `AOGSTREAM_WORKERS=2` (the primary and one worker): both serve
service calls (the kernel spreads fresh connections over them), there is one echo
plugin process and every call reaches it, a plugin restart is re-dialled by the
worker, a management change holds on every process the moment it is answered, a
worker that dies is replaced, and a primary that dies takes its worker with it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import EventReader, Gateway, new_id

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(gw: Gateway) -> list[int]:
    assert gw.proc is not None
    return [p for p in children(gw.proc.pid) if "aogstream.serving.worker" in cmdline(p)]


def wait_workers(gw: Gateway, n: int = 1, not_pid: int | None = None,
                 timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in worker_pids(gw) if p != not_pid]
        if len(pids) >= n and f"worker 1 serving (pid {pids[0]})" in gw.log_tail(400):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"no worker serving within {timeout} s; log:\n{gw.log_tail()}")


def calls(gw: Gateway, n: int) -> list[httpx.Response]:
    """`n` chat calls, each on a fresh connection (so the kernel picks a process)."""
    out = []
    for _ in range(n):
        out.append(httpx.post(gw.service_url("chat"), json={**CHAT, "id": new_id("mw")},
                              timeout=10))
    return out


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    gw = gateway_factory("gw-workers", AOGSTREAM_WORKERS="2",
                         AOGSTREAM_RESTART_BACKOFF="0.2")
    wait_workers(gw)
    return gw


def test_both_processes_serve_and_share_one_plugin_process(gw: Gateway):
    assert gw.proc is not None
    primary, (worker,) = gw.proc.pid, wait_workers(gw)
    plugin_pid = gw.plugin()["pid"]
    plugins = [p for p in children(primary) if p != worker]
    assert plugins == [plugin_pid], "the worker must not launch plugins of its own"
    assert not [p for p in children(worker) if "python" in cmdline(p)], children(worker)

    before = {primary: cpu_ticks(primary), worker: cpu_ticks(worker)}
    responses = calls(gw, 80)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    used = {pid: cpu_ticks(pid) - t for pid, t in before.items()}
    assert all(v > 0 for v in used.values()), f"a process served nothing: {used}"
    # every call, whichever process took it, reached the one plugin process, and over
    # the lane (rpc/lane.py): a process dialling gRPC only would show in about half
    seen = [gw.events("unary", id=r.json()["id"])[0] for r in responses]
    assert {e["pid"] for e in seen} == {plugin_pid}
    assert {e["transport"] for e in seen} == {"lane"}


def test_streams_through_the_worker_stream_and_cancel(gw: Gateway):
    """SSE streams come token by token from either process, and a client that leaves
    cancels the plugin's work whichever process served it."""
    for _ in range(6):
        tag = new_id("mw-stream")
        with httpx.stream("POST", gw.service_url("chat"),
                          json={**CHAT, "id": tag, "stream": True, "tokens": 4},
                          timeout=10) as r:
            assert r.status_code == 200
            reader, events = EventReader(), []
            for chunk in r.iter_raw():
                events += reader.feed(chunk)
        assert events[-1]["finished"] is True and len(events) == 5, events
    for _ in range(6):
        tag = new_id("mw-cancel")
        with httpx.stream("POST", gw.service_url("chat"),
                          json={**CHAT, "id": tag, "stream": True, "tokens": 1000,
                                "interval": 0.05}, timeout=10) as r:
            assert r.status_code == 200
            next(r.iter_raw())
        assert gw.wait_event("cancelled", timeout=2.0, id=tag), f"{tag} not cancelled"


def test_a_plugin_restart_is_seen_by_every_process(gw: Gateway):
    old = gw.plugin()["pid"]
    os.kill(old, signal.SIGKILL)
    new = gw.wait_plugin_running(not_pid=old, timeout=15)["pid"]
    # /plugin/list answered "running": from then on every process dials the new one
    responses = calls(gw, 40)
    assert all(r.status_code == 200 for r in responses), \
        [(r.status_code, r.text) for r in responses if r.status_code != 200][:3]
    for r in responses:
        assert gw.events("unary", id=r.json()["id"])[0]["pid"] == new


def test_a_management_change_holds_on_every_process_when_answered(gw: Gateway):
    base = f"{gw.url}/aog/v0.2"
    r = httpx.post(f"{base}/plugin/disable", json={"name": "echo-plugin"}, timeout=30)
    assert r.status_code == 200, r.text
    assert {x.status_code for x in calls(gw, 20)} == {404}
    r = httpx.post(f"{base}/plugin/enable", json={"name": "echo-plugin"}, timeout=60)
    assert r.status_code == 200, r.text
    assert {x.status_code for x in calls(gw, 20)} == {200}


def test_management_calls_reach_the_primary_from_any_process(gw: Gateway):
    """Management answers are the primary's whichever process took the connection:
    the same plugin pid every time, including the proxied streamed kind."""
    pids = {httpx.get(f"{gw.url}/aog/v0.2/plugin/list", timeout=10).json()["data"][0]["pid"]
            for _ in range(20)}
    assert len(pids) == 1
    r = httpx.post(f"{gw.url}/aog/v0.2/services/chat", content=b"{not json", timeout=10)
    assert r.status_code == 400


def test_a_dead_worker_is_replaced(gw: Gateway):
    (old,) = wait_workers(gw)
    os.kill(old, signal.SIGKILL)
    (new,) = wait_workers(gw, not_pid=old)
    assert new != old
    time.sleep(0.2)
    assert {r.status_code for r in calls(gw, 20)} == {200}


def test_workers_and_plugins_go_when_the_primary_is_killed(gateway_factory):
    gw = gateway_factory("gw-workers-kill", AOGSTREAM_WORKERS="2")
    (worker,) = wait_workers(gw)
    plugin = gw.plugin()["pid"]
    assert gw.proc is not None
    gw.proc.kill()
    gw.proc.wait(timeout=5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (alive(worker) or alive(plugin)):
        time.sleep(0.1)
    left = [p for p in (worker, plugin) if alive(p)]
    assert not left, f"left behind after the primary was killed: {left}"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_the_default_is_one_serving_process_per_two_cores(monkeypatch, cores, expected):
    """`--workers 0` (the default) serves from one process per two cores, at least one:
    a second serving process costs CPU on every request, and on a 2-core machine it only
    competes with the plugin and its engine for the same cores (worker_pool.worker_count).
    An explicit count is taken as given. Unit test of one function: the core count is
    the only thing faked."""
    from aogstream.config import Config
    from aogstream.serving import worker_pool

    monkeypatch.setattr(worker_pool.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert worker_pool.worker_count(Config(workers=0)) == expected
    assert worker_pool.worker_count(Config(workers=3)) == 3
