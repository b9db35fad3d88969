"""Two gateway hosts on one PostgreSQL database.

Real: a PostgreSQL server (tests/pgcluster.py: a throwaway cluster, one database for
the run), two `aogstream server start` processes on different ports and data
directories (so two host ids), each with two serving processes (a primary and a
worker sharing its port), the echo and remote-echo plugin processes of each, and httpx
over loopback. remote-echo-plugin stands in for a cloud: it answers with a fingerprint
(sha256) of the credentials the call carried, never the key itself.

Proven: a provider created on A routes on B within a second (B's routing follows A's
write without a restart, on whichever of B's processes serves); a key set on A reaches
B's plugin with B's calls, and shows up in no response, no gateway log and no database
row; a hybrid policy set on B holds on A; a plugin disabled on A stays enabled and
serving on B (plugin switches are per host); a gateway without the secret refuses to
start against the database and says which variable to set; kill -9 of A (its whole
process tree) while it acknowledges writes loses none of them, B keeps serving
meanwhile, and A comes back with all of them; `aogstream db migrate` and `db
copy-sqlite` move an SQLite store (its keys encrypted on the way) into PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from conftest import PLUGIN_DIR, REPO, Gateway, free_port, new_id
from pgcluster import TestDatabase

from aogstream.store import ProviderRow, SQLiteStore
from aogstream.store.postgres import PostgresStore

HYBRID_DIR = REPO / "tests" / "plugins-hybrid"
API = "/aog/v0.2"
REMOTE = "remote-echo-plugin"
REMOTE_CHAT = "remote_remote-echo-plugin_chat"
SECRET = f"secret-{uuid.uuid4().hex}"
KEY = f"sk-shared-{uuid.uuid4().hex}"  # fresh per run: grepping for it is meaningful
PROPAGATION_S = 1.0  # the promise: a write on one host reaches every other within it
SEEN: list[str] = []  # every response this module received, for the leak check


def record(r: httpx.Response) -> httpx.Response:
    SEEN.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    return r


def host_env(pgdb: TestDatabase) -> dict[str, str]:
    return {"AOGSTREAM_DATABASE_URL": pgdb.url, "AOGSTREAM_SECRET_KEY": SECRET,
            "AOGSTREAM_WORKERS": "2"}


@pytest.fixture(scope="module")
def pgdb(postgres_db: TestDatabase) -> TestDatabase:
    postgres_db.reset()
    return postgres_db


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, pgdb: TestDatabase
          ) -> Iterator[tuple[Gateway, Gateway]]:
    a = Gateway(tmp_path_factory.mktemp("host-a"), host_env(pgdb),
                plugin_dir=[PLUGIN_DIR, HYBRID_DIR])
    b = Gateway(tmp_path_factory.mktemp("host-b"), host_env(pgdb),
                plugin_dir=[PLUGIN_DIR, HYBRID_DIR])
    try:
        a.start()
        b.start()
        for g in (a, b):
            g.wait_plugin_running(name=REMOTE)
            g.wait_plugin_running(name="echo-plugin")
        yield a, b
    finally:
        a.stop()
        b.stop()


def chat(g: Gateway, **body: Any) -> tuple[httpx.Response, str]:
    tag = new_id("pg")
    r = record(httpx.post(g.service_url("chat"), timeout=30.0, json={
        "id": tag, "messages": [{"role": "user", "content": "hi"}], **body}))
    return r, tag


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Poll `check()` until it is true; the seconds it took (fails after `timeout`)."""
    t0 = time.monotonic()
    last: Any = None
    while True:
        last = check()
        if last:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")
        time.sleep(0.02)


def served_by(r: httpx.Response) -> str | None:
    return r.headers.get("x-aogstream-provider") if r.status_code == 200 else None


def plugin_of(r: httpx.Response) -> str | None:
    return r.headers.get("x-aogstream-plugin") if r.status_code == 200 else None


def sha(auth_key: dict[str, str]) -> str:
    # the gateway stores auth_key as canonical JSON text and hands that text to plugins
    return hashlib.sha256(json.dumps(auth_key, ensure_ascii=False).encode()).hexdigest()


def settled(wrote: float) -> None:
    """Wait out the promise's second from a write's acknowledgement: from then on every
    serving process of the other host routes by it. (Within that second the processes
    follow one after the other, so one may already route by the write while another is
    still rebuilding: the promise is a bound, not that they switch at the same instant.)"""
    rest = wrote + PROPAGATION_S - time.monotonic()
    if rest > 0:
        time.sleep(rest)


def test_a_provider_created_on_a_routes_on_b_within_a_second(
        hosts: tuple[Gateway, Gateway]) -> None:
    a, b = hosts
    name, model = "remote_shared_chat", f"shared-model-{uuid.uuid4().hex[:6]}"
    own_key = {"api_key": f"sk-own-{uuid.uuid4().hex}"}
    r, _ = chat(b, model=model)
    assert r.status_code in (400, 404), r.text  # B does not know the model yet
    r = record(httpx.post(f"{a.url}{API}/service_provider", timeout=10.0, json={
        "service_name": "chat", "service_source": "remote", "api_flavor": REMOTE,
        "provider_name": name, "auth_type": "apikey", "models": [model],
        "auth_key": json.dumps(own_key)}))
    assert r.status_code == 200, r.text
    wrote = time.monotonic()

    took = wait_until("B routes the provider created on A",
                      lambda: served_by(chat(b, model=model)[0]) == name, PROPAGATION_S)
    print(f"provider created on A routed on B after {took * 1000:.0f} ms")
    settled(wrote)
    # every request from then on, on whichever of B's processes, routes the same way,
    # with the new provider's own key reaching B's plugin
    for _ in range(6):
        r, tag = chat(b, model=model)
        assert served_by(r) == name, r.text
        assert r.json()["auth"]["sha256"] == sha(own_key)
        assert b.wait_event("unary", timeout=5.0, id=tag, plugin=REMOTE) is not None


def test_a_key_set_on_a_is_used_by_bs_plugin_and_leaks_nowhere(
        hosts: tuple[Gateway, Gateway], pgdb: TestDatabase) -> None:
    a, b = hosts
    key = {"api_key": KEY}
    r, _ = chat(b, model="cloud-chat-1")
    assert r.status_code != 200 or r.json()["auth"]["sha256"] != sha(key)
    r = record(httpx.put(f"{a.url}{API}/service_provider", timeout=10.0,
                         json={"provider_name": REMOTE_CHAT, "auth_key": key}))
    assert r.status_code == 200, r.text
    wrote = time.monotonic()

    def b_uses_the_key() -> bool:
        r, _ = chat(b, model="cloud-chat-1")
        return r.status_code == 200 and r.json()["auth"]["sha256"] == sha(key)

    took = wait_until("B's plugin gets the key set on A", b_uses_the_key, PROPAGATION_S)
    print(f"key set on A used by B's plugin after {took * 1000:.0f} ms")
    settled(wrote)
    r, tag = chat(b, model="cloud-chat-1", stream=True)
    assert r.status_code == 200 and served_by(r) == REMOTE_CHAT
    ev = b.wait_event("stream-start", timeout=5.0, id=tag, plugin=REMOTE)
    assert ev is not None and ev["auth"]["sha256"] == sha(key)
    # the listings of both hosts say a key is set, and never show it
    for g in (a, b):
        r = record(httpx.get(f"{g.url}{API}/service_provider", timeout=10.0,
                             params={"provider_name": REMOTE_CHAT}))
        assert r.status_code == 200 and '"has_auth_key": true' in r.text.replace(
            '"has_auth_key":true', '"has_auth_key": true')
    # nowhere in plain text: responses, either gateway's log, the database
    for text in SEEN:
        assert KEY not in text
    for g in (a, b):
        assert KEY not in g.log_file.read_text(errors="replace")
    with psycopg.connect(pgdb.url) as conn:
        dump = repr(conn.execute("SELECT * FROM aog_service_provider").fetchall())
    assert KEY not in dump and "aogenc1:" in dump


def test_a_hybrid_policy_changed_on_b_holds_on_a(hosts: tuple[Gateway, Gateway]) -> None:
    a, b = hosts
    r = record(httpx.put(f"{a.url}{API}/service_provider", timeout=10.0,
                         json={"provider_name": REMOTE_CHAT, "auth_key": {"api_key": KEY}}))
    assert r.status_code == 200, r.text
    r, _ = chat(a)
    assert served_by(r) == "local_echo-plugin_chat", r.text  # `default`: local first
    r = record(httpx.put(f"{b.url}{API}/service", timeout=10.0,
                         json={"service_name": "chat", "hybrid_policy": "always_remote"}))
    assert r.status_code == 200, r.text
    wrote = time.monotonic()
    try:
        took = wait_until("A follows B's policy",
                          lambda: plugin_of(chat(a)[0]) == REMOTE, PROPAGATION_S)
        print(f"policy set on B held on A after {took * 1000:.0f} ms")
        settled(wrote)
        r = record(httpx.get(f"{a.url}{API}/service", timeout=10.0,
                             params={"service_name": "chat"}))
        assert "always_remote" in r.text, r.text
        for _ in range(6):  # a remote provider first now, on both of A's processes
            assert plugin_of(chat(a)[0]) == REMOTE
    finally:
        r = record(httpx.put(f"{b.url}{API}/service", timeout=10.0,
                             json={"service_name": "chat", "hybrid_policy": "default"}))
        assert r.status_code == 200, r.text
    wait_until("A follows B back", lambda: served_by(chat(a)[0]) == "local_echo-plugin_chat",
               PROPAGATION_S)


def test_plugin_switches_stay_per_host(hosts: tuple[Gateway, Gateway]) -> None:
    """Disabling a plugin on A is A's business: B's copy keeps running and serving, also
    after B has followed A's later writes."""
    a, b = hosts
    r = record(httpx.post(f"{a.url}{API}/plugin/disable", timeout=30.0,
                          json={"name": "echo-plugin"}))
    assert r.status_code == 200, r.text
    try:
        assert a.plugin("echo-plugin")["enabled"] is False
        r = record(httpx.put(f"{a.url}{API}/service", timeout=10.0,
                             json={"service_name": "embed", "hybrid_policy": "default"}))
        assert r.status_code == 200, r.text
        gen_b = b.plugin("echo-plugin")
        assert gen_b["enabled"] is True and gen_b["state"] == "running", gen_b
        r, _ = chat(b)
        assert served_by(r) == "local_echo-plugin_chat", r.text
    finally:
        r = record(httpx.post(f"{a.url}{API}/plugin/enable", timeout=30.0,
                              json={"name": "echo-plugin"}))
        assert r.status_code == 200, r.text
    a.wait_plugin_running(name="echo-plugin")


def test_without_the_secret_a_gateway_refuses_to_start(
        hosts: tuple[Gateway, Gateway], pgdb: TestDatabase, tmp_path: Path) -> None:
    """The database holds encrypted keys (set by the tests above): a host without
    AOGSTREAM_SECRET_KEY stops at once and says which variable to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
    env.update({"AOG_DATA_DIR": str(tmp_path / "data"), "AOGSTREAM_DATABASE_URL": pgdb.url})
    proc = subprocess.run(
        [sys.executable, "-m", "aogstream", "server", "start", "--port", str(free_port()),
         "--plugin-dir", str(PLUGIN_DIR)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "holds encrypted provider credentials; set AOGSTREAM_SECRET_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr


def kill_tree(g: Gateway) -> None:
    """kill -9 of the host: its primary, its worker and its plugin processes."""
    assert g.proc is not None
    top = psutil.Process(g.proc.pid)
    procs = [top, *top.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    g.proc.wait(timeout=5)
    g.proc = None


def test_kill_9_of_a_during_writes_loses_nothing_and_b_keeps_serving(
        hosts: tuple[Gateway, Gateway]) -> None:
    a, b = hosts
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(timeout=10.0) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = client.post(f"{a.url}{API}/service_provider", json={
                        "service_name": "chat", "service_source": "remote",
                        "api_flavor": REMOTE, "provider_name": f"remote_kill{i}_chat",
                        "auth_type": "apikey", "models": [f"kill-model-{i}"],
                        "auth_key": json.dumps({"api_key": f"sk-kill-{i}"})})
                except httpx.HTTPError:
                    return  # A is gone
                if r.status_code != 200:
                    return
                acked.append(i)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until("A acknowledges writes", lambda: len(acked) >= 15, 60.0)
        kill_tree(a)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    done = list(acked)
    assert len(done) >= 15

    # B keeps serving (both of its processes), and writes on B still work
    for _ in range(10):
        r, _ = chat(b)
        assert r.status_code == 200, r.text
    r = record(httpx.put(f"{b.url}{API}/service", timeout=10.0,
                         json={"service_name": "embed", "hybrid_policy": "always_local"}))
    assert r.status_code == 200, r.text

    # every write A acknowledged is in the database, and B routes by it
    r = record(httpx.get(f"{b.url}{API}/service_provider", timeout=10.0))
    have = {p["provider_name"] for p in r.json()["data"]}
    missing = [i for i in done if f"remote_kill{i}_chat" not in have]
    assert missing == [], f"acknowledged but lost: {missing}"
    last = done[-1]
    wait_until("B routes A's last acknowledged write",
               lambda: served_by(chat(b, model=f"kill-model-{last}")[0]) ==
               f"remote_kill{last}_chat", PROPAGATION_S * 5)

    # A comes back (same data dir: the same host) with everything, B's write included
    a.start()
    a.wait_plugin_running(name=REMOTE)
    r = record(httpx.get(f"{a.url}{API}/service_provider", timeout=10.0))
    have_a = {p["provider_name"] for p in r.json()["data"]}
    assert all(f"remote_kill{i}_chat" in have_a for i in done)
    r = record(httpx.get(f"{a.url}{API}/service", timeout=10.0,
                         params={"service_name": "embed"}))
    assert "always_local" in r.text, r.text


def test_db_migrate_and_copy_from_sqlite(postgres_db: TestDatabase, tmp_path: Path) -> None:
    """A host's SQLite store (a plain key, as written without a secret) moves into a new
    PostgreSQL database: migrate creates the schema, copy-sqlite copies every row with the
    key encrypted, and a second copy is refused."""
    target = TestDatabase(postgres_db.admin_url)
    try:
        data = tmp_path / "data"
        src = SQLiteStore(data / "aogstream.db", secret="")
        src.put_provider(ProviderRow("remote_old_chat", "chat", "remote", REMOTE,
                                     auth_type="apikey", auth_key='{"api_key": "sk-old"}',
                                     models=["old-model"]))
        svc = src.get_service("chat")
        assert svc is not None
        svc.hybrid_policy = "always_remote"
        src.put_service(svc)
        src.set_plugin_enabled("echo-plugin", False)
        src.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AOGSTREAM_")}
        env.update({"AOG_DATA_DIR": str(data), "AOGSTREAM_DATABASE_URL": target.url,
                    "AOGSTREAM_SECRET_KEY": SECRET})

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "aogstream", "db", *args], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=60)

        p = run("migrate")
        assert p.returncode == 0 and "schema version 1" in p.stdout, p.stdout + p.stderr
        p = run("copy-sqlite")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "1 providers (1 with credentials" in p.stdout and "sk-old" not in p.stdout
        p = run("copy-sqlite")
        assert p.returncode == 2 and "already has providers" in p.stderr

        host = (data / "host.id").read_text().strip()
        store = PostgresStore(target.url, host, SECRET)
        try:
            row = store.get_provider("remote_old_chat")
            assert row is not None and row.auth_key == '{"api_key": "sk-old"}'
            assert row.models == ["old-model"]
            assert store.get_service("chat").hybrid_policy == "always_remote"  # type: ignore[union-attr]
            assert store.plugin_enabled("echo-plugin") is False
        finally:
            store.close()
        with psycopg.connect(target.url) as conn:
            dump = repr(conn.execute("SELECT * FROM aog_service_provider").fetchall())
        assert "sk-old" not in dump
    finally:
        target.drop()


def test_a_database_outage_answers_503_and_routing_goes_on(tmp_path: Path,
                                                          postgres_db: TestDatabase) -> None:
    """While the shared database refuses connections, a management write answers a 503
    that says the database cannot be used now (no password, no 500), chat keeps being
    served from the in-memory routing, and writes work again once the database is back."""
    own = TestDatabase(postgres_db.admin_url)
    g = Gateway(tmp_path / "gw", host_env(own), plugin_dir=[PLUGIN_DIR, HYBRID_DIR])
    admin = psycopg.connect(postgres_db.admin_url, autocommit=True)
    try:
        g.start()
        g.wait_plugin_running(name=REMOTE)
        put = {"provider_name": REMOTE_CHAT, "auth_key": json.dumps({"api_key": "k-1"})}
        assert httpx.put(f"{g.url}{API}/service_provider", json=put,
                         timeout=30.0).status_code == 200
        admin.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (own.name,))
        r = httpx.put(f"{g.url}{API}/service_provider", timeout=60.0,
                      json={**put, "auth_key": json.dumps({"api_key": "k-2"})})
        assert r.status_code == 503, r.text
        assert "database cannot be used now" in r.json()["message"], r.text
        password = urllib.parse.urlsplit(own.url).password
        assert not password or password not in r.text, r.text
        ok, _ = chat(g)
        assert ok.status_code == 200, ok.text
        admin.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS true')
        # every serving process stayed up (a worker whose routing rebuild failed once
        # died, dropping the connections it held): each write is answered
        for i in range(10):
            r = httpx.put(f"{g.url}{API}/service_provider", timeout=30.0,
                          json={**put, "auth_key": json.dumps({"api_key": f"k-back-{i}"})})
            assert r.status_code in (200, 503), r.text
        wait_until("a write after the database is back", lambda: httpx.put(
            f"{g.url}{API}/service_provider", json=put, timeout=30.0).status_code == 200, 30.0)
        ok, _ = chat(g)
        assert ok.status_code == 200, ok.text
        assert "Traceback" not in g.log_file.read_text(errors="replace"), g.log_tail(80)
    finally:
        admin.execute(f'ALTER DATABASE "{own.name}" ALLOW_CONNECTIONS true')
        admin.close()
        g.stop()
        own.drop()


def test_a_host_keeps_the_native_rows_of_other_hosts(postgres_db: TestDatabase,
                                                     tmp_path: Path) -> None:
    """A host starting without a native plugin that another host serves (the provider
    row a native plugin's manifest made) leaves that row on a shared store, where on its
    own SQLite file the same stale row is pruned."""
    from types import SimpleNamespace

    from aogstream.config import Config
    from aogstream.host.native.loader import NativePlugins
    from aogstream.host.native.plugin import NATIVE_DESC

    row = ProviderRow("remote_c-relay_chat", "chat", "remote", "c-relay",
                      desc=f"{NATIVE_DESC}c-relay", models=["relay-1"])
    own = TestDatabase(postgres_db.admin_url)
    shared = PostgresStore(own.url, "host-b", SECRET)
    local = SQLiteStore(tmp_path / "local.db")
    try:
        for store in (shared, local):
            store.put_provider(row)
            gateway: Any = SimpleNamespace(store=store, providers={},
                                           config=Config(data_dir=tmp_path / "data"))
            NativePlugins(gateway).prune_store()
        assert shared.get_provider(row.provider_name) is not None
        assert local.get_provider(row.provider_name) is None
    finally:
        shared.close()
        local.close()
        own.drop()
