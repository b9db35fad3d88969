"""kill -9 in the middle of writes loses nothing that was committed.

1. A writer subprocess (SQLiteStore, nothing else) loops: each step stores a provider
   with credentials, a model state and an overwrite of one shared credential, then
   prints the step number. The test SIGKILLs it at a random moment, several rounds on
   the same file, and checks that every printed step is in the database, the shared
   credential is at least as new as the last printed step, and `PRAGMA integrity_check`
   says ok.
2. A real gateway is SIGKILLed while a client keeps changing a provider's credentials
   through `PUT /aog/v0.2/service_provider`; after a restart on the same data dir the
   credential is the last acknowledged one (or the one in flight), never older.

A SIGKILL keeps what reached the OS, so this proves the commit protocol (nothing
acknowledged before its transaction commits, no torn transaction), not power-loss
safety, which `synchronous=FULL` is there for.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import PLUGIN_DIR, REPO, Gateway

from aogstream.store import SQLiteStore

HYBRID_DIR = REPO / "tests" / "plugins-hybrid"
REMOTE_CHAT = "remote_remote-echo-plugin_chat"
ROUNDS = 5

WRITER = r"""
import json, sys
from pathlib import Path
from aogstream.store import ModelRow, ProviderRow, SQLiteStore

store = SQLiteStore(Path(sys.argv[1]))
step = int(sys.argv[2])
print("ready", flush=True)
while True:
    name = f"remote_crash{step}_chat"
    store.put_provider(ProviderRow(name, "chat", "remote", "crash", auth_type="apikey",
                                auth_key=json.dumps({"api_key": f"k-{step}"}),
                                models=[f"m-{step}"]))
    store.put_model(ModelRow(f"m-{step}", name, "chat", "remote", "downloading"))
    store.put_model(ModelRow(f"m-{step}", name, "chat", "remote", "downloaded",
                             is_default=True, size=step))
    store.put_provider(ProviderRow("remote_shared_chat", "chat", "remote", "crash",
                                auth_key=json.dumps({"api_key": f"k-{step}"})))
    print(step, flush=True)
    step += 1
"""


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def run_writer(db: Path, start: int, kill_after: float) -> list[int]:
    """Start a writer at step `start`, SIGKILL it `kill_after` s after it is ready;
    return the steps it reported as committed."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(start)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)
        assert ready, "the writer did not open the store within 30 s"
        first = proc.stdout.readline()
        assert first == b"ready\n", (first, proc.stderr.read() if proc.poll() else b"")
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # read through the same buffered readers as `readline` above: it may have read
        # ahead past "ready" (steps printed before this process got to it), and
        # `communicate` reads the raw pipes, so those steps would look lost
        out = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    # a line cut by the kill has no newline: it was not reported
    return [int(line) for line in out.split(b"\n")[:-1] if line.strip()]


def test_killed_writer_loses_no_committed_step(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    db = tmp_path / "data" / "aogstream.db"
    committed: list[int] = []
    step = 0
    for rnd in range(ROUNDS):
        delay = rng.uniform(0.05, 0.3)
        steps = run_writer(db, step, delay)
        where = f"(seed {seed}, round {rnd}, killed after {delay:.3f} s)"
        assert steps == list(range(step, step + len(steps))), where
        committed += steps
        assert integrity(db) == "ok", where

        store = SQLiteStore(db)
        try:
            providers = {p.provider_name: p for p in store.providers(flavor="crash")}
            models = {m.model_name: m for m in store.models()}
            for i in committed:
                p = providers.get(f"remote_crash{i}_chat")
                assert p is not None, f"step {i} provider lost {where}"
                assert json.loads(p.auth_key) == {"api_key": f"k-{i}"}, where
                m = models.get(f"m-{i}")
                assert m is not None and m.status == "downloaded" and m.size == i, \
                    f"step {i} model lost {where}"
            if committed:
                shared = json.loads(providers["remote_shared_chat"].auth_key)["api_key"]
                # the last printed step, or the one after it (committed, not yet printed)
                assert int(shared.removeprefix("k-")) >= committed[-1], where
            # one default model for the service, whatever the moment of the kill
            assert sum(m.is_default for m in models.values()) <= 1, where
            # the next round starts after everything that may have been written
            step = 1 + max([committed[-1] if committed else -1,
                            *(int(n.removeprefix("remote_crash").removesuffix("_chat"))
                              for n in providers if n.startswith("remote_crash"))])
        finally:
            store.close()
    assert committed, f"the writer never committed a step (seed {seed})"


def test_killed_gateway_keeps_acknowledged_credentials(tmp_path: Path) -> None:
    gw = Gateway(tmp_path / "gw", plugin_dir=[PLUGIN_DIR, HYBRID_DIR]).start()
    plugin_pids: list[int] = []
    try:
        # the credentials go through the management API, as a user sets them: a gateway
        # without it fails here (a skip would hide a missing API as a pass)
        probe = httpx.get(f"{gw.url}/aog/v0.2/service_provider", timeout=5.0)
        assert probe.status_code == 200, (
            f"GET /aog/v0.2/service_provider answered {probe.status_code}: the management "
            f"API this test writes credentials through is missing; log:\n{gw.log_tail()}")
        plugin_pids = [p["pid"] for p in gw.plugin_list() if p["pid"]]
        acked: list[int] = []
        sent: list[int] = []
        stop = threading.Event()

        def writer() -> None:
            with httpx.Client(base_url=gw.url, timeout=5.0) as client:
                i = 0
                while not stop.is_set():
                    sent.append(i)
                    try:
                        r = client.put("/aog/v0.2/service_provider", json={
                            "provider_name": REMOTE_CHAT,
                            "auth_key": json.dumps({"api_key": f"k-{i}"})})
                    except httpx.HTTPError:
                        return  # the gateway died under us
                    if r.status_code != 200:
                        return
                    acked.append(i)
                    i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        deadline = time.monotonic() + 10.0
        while not acked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acked, f"no PUT /service_provider succeeded; log:\n{gw.log_tail()}"
        time.sleep(random.uniform(0.05, 0.3))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(timeout=10)
        stop.set()
        t.join(timeout=10)
        last_acked = acked[-1]
        gw.proc = None
    finally:
        for pid in plugin_pids:  # plugins run in their own sessions: they outlive a kill -9
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if gw.proc is not None:
            gw.stop()

    db = gw.workdir / "data" / "aogstream.db"
    assert integrity(db) == "ok"
    gw.start()
    try:
        store = SQLiteStore(db)
        try:
            row = store.get_provider(REMOTE_CHAT)
        finally:
            store.close()
        assert row is not None
        got = int(json.loads(row.auth_key)["api_key"].removeprefix("k-"))
        assert last_acked <= got <= sent[-1], (last_acked, got, sent[-1])
        # and the restarted gateway sends it: the remote plugin answers with its hash
        r = httpx.post(gw.service_url("chat"), timeout=30.0,
                       json={"hybrid_policy": "always_remote", "messages": []})
        assert r.status_code == 200, r.text
        assert r.headers["x-aogstream-provider"] == REMOTE_CHAT
        assert r.json()["auth"]["sha256"] == hashlib.sha256(row.auth_key.encode()).hexdigest()
    finally:
        gw.stop()
