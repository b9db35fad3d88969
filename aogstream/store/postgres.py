"""The shared store: several gateway hosts on one PostgreSQL database.

Selected by `AOGSTREAM_DATABASE_URL` / `--database-url` (see `store.open_store`); SQLite
stays the embedded default. The interface and the rows are the SQLite store's, so the
gateway cannot tell them apart, with three additions that sharing needs:

* Shared and per-host facts. Services (and their hybrid policy), providers (with their
  credentials) and the model records of remote providers are shared by every host.
  What a host's own plugins have is per host: the model rows of local providers
  (`service_source = 'local'`) and the plugin switches carry the host's id, and a host
  reads the shared rows plus its own. Engines live on each host's disk, never here.
* Change propagation. Every write transaction bumps one generation counter and sends
  `NOTIFY aogstream_changes` in the same transaction (delivered only if it commits).
  `wait_change` returns when another host wrote: from the notification at once, or,
  should a notification be lost (a dropped connection), from a periodic generation
  check. The gateway's primary then rebuilds its in-memory routing table, and its
  workers follow it as they follow any local write: routing never reads the database
  per request.
* Credentials at rest are always encrypted here (`store.secrets`): a shared database is
  dumped, replicated and read by more people than one host's data directory, so the
  store refuses to open without `AOGSTREAM_SECRET_KEY`, and refuses a secret that does
  not open the credentials already stored.

Durability: every public write is one transaction, committed with
`synchronous_commit = on`, so a write that returned is in the server's WAL on disk and
survives the death of any gateway (and of the server itself); a gateway killed mid-write
leaves nothing half-done. Migrations are numbered as SQLite's (version 1 is the same
tables in PostgreSQL's dialect, plus the host columns and the generation counter) and
run under an advisory lock, so gateways starting together migrate once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from aogstream.store.base import ModelRow, ProviderRow, Service, now
from aogstream.store.secrets import ENV as SECRET_ENV
from aogstream.store.secrets import SecretBox
from aogstream.store.sql import V1_SHARED_TABLES, Op, SQLStore, SqlValue, StoreError

log = logging.getLogger("aogstream.store")

CHANNEL = "aogstream_changes"
MIGRATION_LOCK = 0x616F6773  # pg_advisory_xact_lock key: "aogs"
POLL_INTERVAL_S = 2.0  # the safety net's generation check
WAKE_S = 0.25  # how often the listener looks up from LISTEN to see whether it should stop

MIGRATIONS: list[str] = [
    # 1: the first release (SQLite's version 1, plus what sharing needs)
    V1_SHARED_TABLES.replace("ROW_ID", "BIGSERIAL PRIMARY KEY") + """
    CREATE TABLE aog_model (
        id BIGSERIAL PRIMARY KEY,
        host_id TEXT NOT NULL DEFAULT '',
        model_name TEXT NOT NULL,
        provider_name TEXT NOT NULL,
        service_name TEXT NOT NULL,
        service_source TEXT NOT NULL DEFAULT 'local',
        status TEXT NOT NULL DEFAULT 'downloaded',
        is_default BOOLEAN NOT NULL DEFAULT FALSE,
        size BIGINT NOT NULL DEFAULT 0,
        avatar TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (host_id, provider_name, model_name)
    );
    CREATE TABLE aogstream_plugin (
        host_id TEXT NOT NULL,
        name TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (host_id, name)
    );
    CREATE TABLE aogstream_generation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        gen BIGINT NOT NULL
    );
    INSERT INTO aogstream_generation VALUES (1, 0);
    """,
]


def redact_url(url: str) -> str:
    """The URL for messages and logs: never its password."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


class PostgresStore(SQLStore):
    """The `Store` on PostgreSQL (psycopg 3, a small connection pool): the statements are
    `store.sql`'s; this class keeps the pool, the migrations in PostgreSQL's dialect, the
    durable commits, the change announcements and the host-scoped rows.

    `host_id` names this host's per-host rows (see the module doc); `secret` as
    SQLiteStore's (None: from AOGSTREAM_SECRET_KEY), but required."""

    def __init__(self, url: str, host_id: str, secret: str | None = None, *,
                 pool_size: int = 4, connect_timeout: float = 10.0) -> None:
        if not host_id:
            raise ValueError("host_id is required")
        self.url = url
        self.where = redact_url(url)
        self.host_id = host_id
        self._box = SecretBox.from_env() if secret is None else (
            SecretBox(secret) if secret else None)
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout,
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout)),
                    "application_name": "aogstream"},
            configure=_configure, name="aogstream")
        self._gen_seen = 0
        self._gen_lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"{self.where}: cannot connect to PostgreSQL: {exc}") from None
        except psycopg_pool_timeout() as exc:
            self._pool.close()
            raise StoreError(f"{self.where}: cannot connect to PostgreSQL within "
                             f"{connect_timeout:g} s ({exc})") from None
        try:
            self._migrate()
            self._open_body()
            self._gen_seen = self.generation()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._watcher is not None:
            self._watcher.join(timeout=POLL_INTERVAL_S + 5)
        self._pool.close()

    # ---- plumbing ----

    def _tx(self, ops: Sequence[Op]) -> list[dict[str, Any]]:
        """Run `ops` as one transaction that also bumps the generation and notifies the
        other hosts (on commit). Returns the last statement's rows (if any)."""
        last: list[dict[str, Any]] = []
        try:
            with self._pool.connection() as conn, conn.transaction():
                for sql, params in ops:
                    cur = conn.execute(_pg(sql), params)
                    last = cur.fetchall() if cur.description else []
                row = conn.execute("UPDATE aogstream_generation SET gen = gen + 1 "
                                   "WHERE id = 1 RETURNING gen").fetchone()
                gen = int(row["gen"]) if row else 0
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{gen} {self.host_id}"))
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self.where}: {exc}") from None
        with self._gen_lock:
            self._gen_seen = max(self._gen_seen, gen)
        return last

    def _query(self, sql: str, params: tuple[SqlValue, ...] = ()) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn:
                rows: list[dict[str, Any]] = conn.execute(_pg(sql), params).fetchall()
                return rows
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self.where}: {exc}") from None

    def generation(self) -> int:
        """How many writes the database has seen (any host's)."""
        rows = self._query("SELECT gen FROM aogstream_generation WHERE id = 1")
        return int(rows[0]["gen"]) if rows else 0

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v "
                               "FROM schema_migrations").fetchone()
            have = int(row["v"]) if row else 0
            if have > len(MIGRATIONS):
                raise StoreError(
                    f"{self.where} was written by a newer aogstream (schema {have}, this one "
                    f"knows {len(MIGRATIONS)}); upgrade aogstream on every host")
            for version in range(have + 1, len(MIGRATIONS) + 1):
                conn.execute(MIGRATIONS[version - 1].encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)",
                             (version, now()))
                log.info("%s: applied migration %d", self.where, version)

    def _require_secret(self, sealed: bool) -> None:
        """Refuse to open without the secret: a shared database is dumped, replicated and
        read by more people than one host's data directory, so its credentials are always
        encrypted (a plain one, a row copied in by hand, is sealed at open)."""
        if self._box is not None:
            return
        if sealed:
            raise StoreError(
                f"{self.where} holds encrypted provider credentials; set {SECRET_ENV} to "
                f"the secret they were encrypted with (the same on every host)")
        raise StoreError(
            f"{SECRET_ENV} is required with PostgreSQL: provider credentials in a shared "
            f"database are always encrypted; set it to the same secret on every host")

    # ---- host-scoped rows ----

    def _host_columns(self) -> tuple[str, ...]:
        return ("host_id",)

    def _host_of(self, model: ModelRow | None) -> tuple[SqlValue, ...]:
        """Local models are what this host's plugins have, and plugin switches are this
        host's: per host. Remote models are shared ('')."""
        if model is None or model.service_source == "local":
            return (self.host_id,)
        return ("",)

    def _model_scope(self) -> tuple[list[str], tuple[SqlValue, ...]]:
        """The shared model rows and this host's own."""
        return ["host_id IN ('', ?)"], (self.host_id,)

    # ---- change propagation ----

    def wait_change(self, timeout: float) -> bool:
        """Block up to `timeout` s for a write by another host (True) or none (False).
        The first call starts the listener thread."""
        if self._stop.is_set():  # closed: nothing more will change
            time.sleep(timeout)
            return False
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="aogstream-pg-listen",
                                             daemon=True)
            self._watcher.start()
        if self._changed.wait(timeout) and not self._stop.is_set():
            self._changed.clear()
            return True
        return False

    def _watch(self) -> None:
        """LISTEN on a connection of its own; between notifications, check the generation
        (the safety net for notifications lost with a connection)."""
        while not self._stop.is_set():
            try:
                with psycopg.Connection.connect(self.url, autocommit=True,
                                                connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._check_generation(conn)
                    checked = time.monotonic()
                    while not self._stop.is_set():
                        # short waits, so that close() is never kept waiting long
                        for note in conn.notifies(timeout=WAKE_S, stop_after=1):
                            self._on_notify(note.payload)
                        if time.monotonic() - checked >= POLL_INTERVAL_S:
                            self._check_generation(conn)
                            checked = time.monotonic()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("%s: change listener lost its connection (%s); reconnecting",
                            self.where, exc)
                self._stop.wait(1.0)
                self._changed.set()  # changes may have been missed meanwhile

    def _on_notify(self, payload: str) -> None:
        gen_text, _, host = payload.partition(" ")
        with self._gen_lock:
            try:
                self._gen_seen = max(self._gen_seen, int(gen_text))
            except ValueError:
                pass
        if host != self.host_id:
            self._changed.set()

    def _check_generation(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT gen FROM aogstream_generation WHERE id = 1").fetchone()
        gen = int(row[0]) if row else 0
        with self._gen_lock:
            newer = gen > self._gen_seen
            self._gen_seen = max(self._gen_seen, gen)
        if newer:
            self._changed.set()

    # ---- copying from SQLite ----

    def import_rows(self, services: list[Service], providers: list[ProviderRow],
                    models: list[ModelRow], plugins: dict[str, bool]) -> None:
        """Write another store's rows in one transaction (the one-time copy from SQLite):
        every row or none. Rows already here with the same key are replaced."""
        ops: list[Op] = [
            *(self._service_op(s) for s in services),
            *(self._provider_op(p) for p in providers),
            *(self._model_op(m) for m in models),
            *(self._plugin_op(name, enabled) for name, enabled in plugins.items())]
        self._tx(ops)


def psycopg_pool_timeout() -> type[Exception]:
    from psycopg_pool import PoolTimeout

    return PoolTimeout


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Each pooled connection commits durably whatever the server's default says."""
    conn.execute("SET synchronous_commit = on")


def _pg(sql: str) -> str:
    """`store.sql`'s statements use `?` placeholders; psycopg's are `%s` (no statement
    holds a literal `?` or `%`)."""
    return sql.replace("?", "%s")


def wait_for(url: str, timeout: float) -> None:
    """Wait until PostgreSQL at `url` accepts connections (a server just started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.Connection.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
