"""The store on both backends, and plugin re-discovery against it.

The tests taking `backend` run twice: on SQLiteStore with a real file in a tmp folder,
and on PostgresStore against a real PostgreSQL server (tests/pgcluster.py: a throwaway
cluster, one database for the run, emptied before each test). "Reopening" closes the
store and opens a new one on the same database, as a gateway restart does. The tests
without it prove what only one backend has (SQLite's PRAGMAs, PostgreSQL's settings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PLUGIN_DIR, REPO
from pgcluster import TestDatabase

from aogstream.config import Config
from aogstream.gateway import Gateway
from aogstream.manifest import load_manifest
from aogstream.store import SERVICES, ModelRow, ProviderRow, Service, SQLiteStore, Store
from aogstream.store import postgres as pg
from aogstream.store.sqlite import MIGRATIONS, StoreError

HYBRID_DIR = REPO / "tests" / "plugins-hybrid"
REMOTE_CHAT = "remote_remote-echo-plugin_chat"
AUTH_KEY = '{"api_key": "sk-store-test"}'


PG_SECRET = "store-test-secret"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "aogstream.db"


class Backend:
    """Opens the store under test: the same database on every `open()`."""

    def __init__(self, kind: str, db: Path, pgdb: TestDatabase | None) -> None:
        self.kind, self.db, self.pgdb = kind, db, pgdb

    def open(self, host_id: str = "host-a") -> Any:
        if self.pgdb is not None:
            return pg.PostgresStore(self.pgdb.url, host_id, PG_SECRET)
        return SQLiteStore(self.db)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        pgdb: TestDatabase = request.getfixturevalue("postgres_db")
        pgdb.reset()
        yield Backend("postgres", db, pgdb)
    else:
        yield Backend("sqlite", db, None)


def reopen(store: Any) -> Any:
    store.close()
    if isinstance(store, pg.PostgresStore):
        return pg.PostgresStore(store.url, store.host_id, PG_SECRET)
    return SQLiteStore(store.path)


def test_first_open_seeds_aogs_services(backend: Backend) -> None:
    store = backend.open()
    try:
        got = {s.service_name: s for s in store.services()}
        assert {n: s.hybrid_policy for n, s in got.items()} == SERVICES
        assert all(s.status == -1 for s in got.values())  # not installed yet
        # a policy the user changed is not re-seeded on the next open
        svc = got["chat"]
        svc.hybrid_policy = "always_remote"
        store.put_service(svc)
        store = reopen(store)
        chat = store.get_service("chat")
        assert chat is not None and chat.hybrid_policy == "always_remote"
        assert chat.created_at == svc.created_at
        assert store.get_service("no-such-service") is None
    finally:
        store.close()


def test_durability_settings(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        assert store._query("PRAGMA journal_mode")[0][0] == "wal"
        assert store._query("PRAGMA synchronous")[0][0] == 2  # FULL
    finally:
        store.close()


def test_provider_upsert_keeps_created_at_and_public_hides_the_key(backend: Backend) -> None:
    store = backend.open()
    try:
        first = ProviderRow("remote_openai_chat", "chat", "remote", "openai", auth_type="apikey",
                         auth_key='{"api_key": "sk-secret"}', models=["gpt-x"],
                         created_at="2020-01-01T00:00:00Z", updated_at="2020-01-01T00:00:00Z")
        store.put_provider(first)
        again = ProviderRow("remote_openai_chat", "chat", "remote", "openai", desc="edited",
                         auth_type="apikey", auth_key='{"api_key": "sk-other"}',
                         models=["gpt-x", "gpt-y"])
        store.put_provider(again)
        row = store.get_provider("remote_openai_chat")
        assert row is not None
        assert row.created_at == "2020-01-01T00:00:00Z"
        assert row.updated_at != "2020-01-01T00:00:00Z"
        assert (row.desc, row.auth_key, row.models) == (
            "edited", '{"api_key": "sk-other"}', ["gpt-x", "gpt-y"])
        assert len(store.providers()) == 1

        public = row.public()
        assert "auth_key" not in public and public["has_auth_key"] is True
        assert "sk-other" not in repr(public)
        assert ProviderRow("x", "chat").public()["has_auth_key"] is False

        # filters
        store.put_provider(ProviderRow("local_ollama_embed", "embed", "local", "ollama"))
        assert [p.provider_name for p in store.providers(service_name="embed")] == [
            "local_ollama_embed"]
        assert [p.provider_name for p in store.providers(service_source="remote")] == [
            "remote_openai_chat"]
        assert [p.provider_name for p in store.providers(flavor="ollama",
                                                         service_name="chat")] == []
    finally:
        store.close()


def test_delete_provider_removes_its_models(backend: Backend) -> None:
    store = backend.open()
    try:
        store.put_provider(ProviderRow("local_ollama_chat", "chat"))
        store.put_provider(ProviderRow("local_other_chat", "chat"))
        store.put_model(ModelRow("qwen", "local_ollama_chat", "chat"))
        store.put_model(ModelRow("llama", "local_ollama_chat", "chat"))
        store.put_model(ModelRow("qwen", "local_other_chat", "chat"))
        assert store.delete_provider("local_ollama_chat") is True
        assert store.get_provider("local_ollama_chat") is None
        assert store.models(provider_name="local_ollama_chat") == []
        assert [(m.provider_name, m.model_name) for m in store.models()] == [
            ("local_other_chat", "qwen")]
        assert store.delete_provider("local_ollama_chat") is False
        assert store.delete_model("local_other_chat", "qwen") is True
        assert store.delete_model("local_other_chat", "qwen") is False
    finally:
        store.close()


def test_one_default_model_per_service(backend: Backend) -> None:
    store = backend.open()
    try:
        store.put_model(ModelRow("a", "p1", "chat", is_default=True))
        store.put_model(ModelRow("e", "p1", "embed", is_default=True))
        store.put_model(ModelRow("b", "p2", "chat", is_default=True))
        defaults = {(m.service_name, m.model_name) for m in store.models() if m.is_default}
        assert defaults == {("chat", "b"), ("embed", "e")}
        # a non-default write leaves the default alone; the same model stays one row
        store.put_model(ModelRow("a", "p1", "chat", status="downloading"))
        store.put_model(ModelRow("b", "p2", "chat", is_default=True, size=7))
        rows = {(m.provider_name, m.model_name): m for m in store.models(service_name="chat")}
        assert len(rows) == 2
        assert rows["p2", "b"].is_default and rows["p2", "b"].size == 7
        assert not rows["p1", "a"].is_default and rows["p1", "a"].status == "downloading"
    finally:
        store.close()


def test_migrations_are_recorded(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        rows = store._query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        assert all(r[1] for r in rows)
        tables = {r[0] for r in store._query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"aog_service", "aog_service_provider", "aog_model", "aogstream_plugin",
                "schema_migrations"} <= tables
        # reopening applies nothing twice
        store = reopen(store)
        assert len(store._query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)
    finally:
        store.close()


def test_a_database_from_a_newer_aogstream_is_refused(db: Path) -> None:
    SQLiteStore(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("INSERT INTO schema_migrations VALUES (?, '2099-01-01T00:00:00Z')",
                    (len(MIGRATIONS) + 1,))
    raw.close()
    with pytest.raises(StoreError) as info:
        SQLiteStore(db)
    msg = str(info.value)
    assert str(db) in msg and "newer" in msg and "AOG_DATA_DIR" in msg
    assert f"schema {len(MIGRATIONS) + 1}" in msg


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(StoreError) as info:
        SQLiteStore(db)
    assert str(db) in str(info.value)


def test_reopening_keeps_everything(backend: Backend) -> None:
    store = backend.open()
    try:
        store.put_service(Service("chat", "always_local", 1, "avatar.png"))
        store.put_provider(ProviderRow("remote_openai_chat", "chat", "remote", "openai",
                                    auth_type="apikey", auth_key='{"api_key": "k"}',
                                    extra_headers='{"x": "1"}', properties='{"max": 2}',
                                    models=["m1"], status=0))
        store.put_model(ModelRow("m1", "remote_openai_chat", "chat", "remote",
                                 is_default=True, size=12))
        store.set_plugin_enabled("echo-plugin", False)
        store.set_plugin_enabled("other-plugin", True)
        before = (store.services(), store.providers(), store.models())
        store = reopen(store)
        assert (store.services(), store.providers(), store.models()) == before
        assert store.plugin_enabled("echo-plugin") is False
        assert store.plugin_enabled("other-plugin") is True
        assert store.plugin_enabled("never-seen") is True  # enabled unless switched off
    finally:
        store.close()


def test_a_failed_write_changes_nothing(backend: Backend) -> None:
    """Every public write is one transaction: a statement failing inside it rolls the
    earlier statements back (here the default flag reset of put_model)."""
    store = backend.open()
    try:
        store.put_model(ModelRow("a", "p1", "chat", is_default=True))
        bad = ModelRow("b", "p1", "chat", is_default=True)
        bad.size = None  # type: ignore[assignment]  # NOT NULL column: the insert fails
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            store.put_model(bad)
        assert [(m.model_name, m.is_default) for m in store.models()] == [("a", True)]
        store.put_model(ModelRow("c", "p1", "chat"))  # the store is still usable
    finally:
        store.close()


# ---- re-discovery -----------------------------------------------------------------------


def make_gateway(tmp_path: Path, store: Store) -> Gateway:
    cfg = Config(data_dir=tmp_path, plugin_dirs=[PLUGIN_DIR, HYBRID_DIR])
    gw = Gateway(cfg, None, store)  # type: ignore[arg-type]  # no plugin is started
    gw.add_plugin(load_manifest(PLUGIN_DIR / "echo-plugin"))
    gw.add_plugin(load_manifest(HYBRID_DIR / "remote-echo-plugin"))
    return gw


def test_rediscovery_never_wipes_what_the_user_set(tmp_path: Path, backend: Backend) -> None:
    store = backend.open()
    try:
        gw = make_gateway(tmp_path, store)
        gw._register_all()
        names = {p.provider_name for p in store.providers()}
        assert {"local_echo-plugin_chat", REMOTE_CHAT, "remote_remote-echo-plugin_embed",
                "local_echo-plugin_echo-ws"} <= names
        row = store.get_provider(REMOTE_CHAT)
        assert row is not None and row.scope == "plugin" and row.auth_type == "apikey"
        assert row.flavor == "remote-echo-plugin" and row.models == ["cloud-chat-1"]
        created = row.created_at
        # the user sets credentials, a status and properties; and picks a default model
        row.auth_key, row.status, row.properties = AUTH_KEY, 0, '{"max_tokens": 5}'
        # and the manifest-owned fields drift (an older plugin version wrote them)
        row.desc, row.models = "stale", ["old-model"]
        store.put_provider(row)
        cloud = store.models(provider_name=REMOTE_CHAT)
        # a local plugin (echo) offers chat too: the default is left for a local model
        assert [(m.model_name, m.status, m.is_default) for m in cloud] == [
            ("cloud-chat-1", "downloaded", False)]
        store.put_model(ModelRow("echo", "local_echo-plugin_chat", "chat", is_default=True))

        gw._register(load_manifest(HYBRID_DIR / "remote-echo-plugin"))
        gw._register_all()
        # and once more after a restart: a new store on the same file, a new gateway
        store = reopen(store)
        gw = make_gateway(tmp_path, store)
        gw._register_all()

        row = store.get_provider(REMOTE_CHAT)
        assert row is not None
        assert (row.auth_key, row.status, row.properties) == (AUTH_KEY, 0, '{"max_tokens": 5}')
        assert row.models == ["cloud-chat-1"] and row.desc != "stale"
        assert row.created_at == created
        assert len(store.providers(provider_name=REMOTE_CHAT)) == 1
        # the cloud model is not duplicated and does not take the default back
        chat = {(m.provider_name, m.model_name): m.is_default
                for m in store.models(service_name="chat")}
        assert chat == {(REMOTE_CHAT, "cloud-chat-1"): False,
                        ("local_echo-plugin_chat", "echo"): True}
        # routing sees the stored key on the remote route only
        gw._rebuild()
        assert {rt.provider_name: rt.auth_info for rt in gw.routes("chat")} == {
            "local_echo-plugin_chat": "", REMOTE_CHAT: AUTH_KEY}
    finally:
        store.close()


# ---- what only the PostgreSQL store has -------------------------------------------------


@pytest.fixture
def pgdb(postgres_db: TestDatabase) -> TestDatabase:
    postgres_db.reset()
    return postgres_db


def raw_rows(pgdb: TestDatabase, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pgdb.url) as conn:
        return conn.execute(sql).fetchall()


def test_postgres_commits_durably_and_migrates_once(pgdb: TestDatabase) -> None:
    """Every pooled connection commits with synchronous_commit on; two hosts opening
    the same empty database together apply each migration once."""
    import threading

    stores: list[pg.PostgresStore] = []
    threads = [threading.Thread(target=lambda h=h: stores.append(pg.PostgresStore(
        pgdb.url, h, PG_SECRET))) for h in ("host-a", "host-b", "host-c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert len(stores) == 3
        assert stores[0]._query("SHOW synchronous_commit")[0]["synchronous_commit"] == "on"
        assert stores[0].schema_version() == len(pg.MIGRATIONS) == len(MIGRATIONS)
        versions = raw_rows(pgdb, "SELECT version FROM schema_migrations ORDER BY version")
        assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))
        assert len(stores[1].services()) == len(SERVICES)  # seeded once, not thrice
    finally:
        for s in stores:
            s.close()


def test_postgres_from_a_newer_aogstream_is_refused(pgdb: TestDatabase) -> None:
    pg.PostgresStore(pgdb.url, "host-a", PG_SECRET).close()
    with psycopg.connect(pgdb.url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, '2099-01-01T00:00:00Z')",
                     (len(pg.MIGRATIONS) + 1,))
    with pytest.raises(StoreError) as info:
        pg.PostgresStore(pgdb.url, "host-a", PG_SECRET)
    assert "newer" in str(info.value) and f"schema {len(pg.MIGRATIONS) + 1}" in str(info.value)


def test_postgres_keys_are_encrypted_and_the_secret_is_required(pgdb: TestDatabase) -> None:
    """A dump of the database holds no key; without the secret, or with another one, a
    store refuses to open and says which variable to set."""
    with pytest.raises(StoreError) as info:
        pg.PostgresStore(pgdb.url, "host-a", "")
    assert "AOGSTREAM_SECRET_KEY is required with PostgreSQL" in str(info.value)
    store = pg.PostgresStore(pgdb.url, "host-a", PG_SECRET)
    try:
        store.put_provider(ProviderRow("remote_openai_chat", "chat", "remote", "openai",
                                       auth_type="apikey", auth_key=AUTH_KEY))
        assert store.get_provider("remote_openai_chat").auth_key == AUTH_KEY  # type: ignore[union-attr]
    finally:
        store.close()
    dump = repr(raw_rows(pgdb, "SELECT * FROM aog_service_provider"))
    assert "sk-store-test" not in dump and "aogenc1:" in dump
    with pytest.raises(StoreError) as info:
        pg.PostgresStore(pgdb.url, "host-b", "")
    assert "holds encrypted provider credentials; set AOGSTREAM_SECRET_KEY" in str(info.value)
    with pytest.raises(StoreError) as info:
        pg.PostgresStore(pgdb.url, "host-b", "not-the-secret")
    assert "AOGSTREAM_SECRET_KEY is not the secret" in str(info.value)


def test_postgres_shares_services_and_providers_but_not_local_models(
        pgdb: TestDatabase) -> None:
    a = pg.PostgresStore(pgdb.url, "host-a", PG_SECRET)
    b = pg.PostgresStore(pgdb.url, "host-b", PG_SECRET)
    try:
        chat = a.get_service("chat")
        assert chat is not None
        chat.hybrid_policy = "always_remote"
        a.put_service(chat)
        a.put_provider(ProviderRow("remote_openai_chat", "chat", "remote", "openai",
                                   auth_key=AUTH_KEY, models=["gpt-x"]))
        a.put_provider(ProviderRow("local_llama_chat", "chat", "local", "llama"))
        a.put_model(ModelRow("gpt-x", "remote_openai_chat", "chat", "remote"))
        a.put_model(ModelRow("qwen", "local_llama_chat", "chat", "local", is_default=True))
        b.put_model(ModelRow("smol", "local_llama_chat", "chat", "local", is_default=True))
        a.set_plugin_enabled("echo-plugin", False)
        # shared: services, providers (with keys), remote models
        assert b.get_service("chat").hybrid_policy == "always_remote"  # type: ignore[union-attr]
        assert b.get_provider("remote_openai_chat").auth_key == AUTH_KEY  # type: ignore[union-attr]
        # per host: what each host's local plugin has, and its plugin switches
        assert {m.model_name for m in a.models()} == {"gpt-x", "qwen"}
        assert {m.model_name for m in b.models()} == {"gpt-x", "smol"}
        assert [m.model_name for m in a.models() if m.is_default] == ["qwen"]
        assert [m.model_name for m in b.models() if m.is_default] == ["smol"]
        assert a.plugin_enabled("echo-plugin") is False
        assert b.plugin_enabled("echo-plugin") is True
        # deleting on one host leaves the other host's local model alone
        assert a.delete_model("local_llama_chat", "qwen") is True
        assert [m.model_name for m in b.models(provider_name="local_llama_chat")] == ["smol"]
    finally:
        a.close()
        b.close()


def test_postgres_announces_another_hosts_writes(pgdb: TestDatabase) -> None:
    """A write on one host wakes the other's `wait_change` at once (NOTIFY); a host is
    not woken by its own writes; and a change whose notification was lost is found by
    the generation check."""
    import time

    a = pg.PostgresStore(pgdb.url, "host-a", PG_SECRET)
    b = pg.PostgresStore(pgdb.url, "host-b", PG_SECRET)
    try:
        a.wait_change(0.01)  # start the listeners
        b.wait_change(0.01)
        while b.wait_change(0.2) or a.wait_change(0.01):
            pass  # settle: nothing pending on either side
        t0 = time.monotonic()
        a.put_provider(ProviderRow("remote_x_chat", "chat", "remote", "openai"))
        assert b.wait_change(1.0) is True
        assert time.monotonic() - t0 < 1.0
        assert a.wait_change(0.3) is False  # its own write
        # the safety net: a generation bump that sends no notification
        with psycopg.connect(pgdb.url) as conn:
            conn.execute("UPDATE aogstream_generation SET gen = gen + 1")
        assert b.wait_change(pg.POLL_INTERVAL_S + 2.0) is True
    finally:
        a.close()
        b.close()


def test_postgres_unreachable_is_a_clear_error_without_the_password() -> None:
    from pgcluster import free_port

    url = f"postgresql://aog:hunter2secret@127.0.0.1:{free_port()}/aog"
    with pytest.raises(StoreError) as info:
        pg.PostgresStore(url, "host-a", PG_SECRET, connect_timeout=2)
    assert "cannot connect to PostgreSQL" in str(info.value)
    assert "hunter2secret" not in str(info.value)
