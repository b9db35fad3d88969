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

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from aogstream.store.base import SERVICES, ModelRow, ProviderRow, Service, now
from aogstream.store.secrets import ENV as SECRET_ENV
from aogstream.store.secrets import SecretBox, SecretError, is_sealed, open_value
from aogstream.store.sqlite import MODEL_COLUMNS, PROVIDER_COLUMNS, StoreError

log = logging.getLogger("aogstream.store")

type SqlValue = str | int | float | bool | bytes | None

CHANNEL = "aogstream_changes"
MIGRATION_LOCK = 0x616F6773  # pg_advisory_xact_lock key: "aogs"
POLL_INTERVAL_S = 2.0  # the safety net's generation check
WAKE_S = 0.25  # how often the listener looks up from LISTEN to see whether it should stop

MIGRATIONS: list[str] = [
    # 1: the first release (SQLite's version 1, plus what sharing needs)
    """
    CREATE TABLE aog_service (
        name TEXT PRIMARY KEY,
        hybrid_policy TEXT NOT NULL DEFAULT 'default',
        status INTEGER NOT NULL DEFAULT -1,
        avatar TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE aog_service_provider (
        id BIGSERIAL PRIMARY KEY,
        provider_name TEXT NOT NULL UNIQUE,
        service_name TEXT NOT NULL,
        service_source TEXT NOT NULL DEFAULT 'local',
        "desc" TEXT NOT NULL DEFAULT '',
        method TEXT NOT NULL DEFAULT 'POST',
        url TEXT NOT NULL DEFAULT '',
        auth_type TEXT NOT NULL DEFAULT 'none',
        auth_key TEXT NOT NULL DEFAULT '',
        flavor TEXT NOT NULL DEFAULT '',
        protocol TEXT NOT NULL DEFAULT 'HTTP',
        extra_headers TEXT NOT NULL DEFAULT '{}',
        extra_json_body TEXT NOT NULL DEFAULT '{}',
        properties TEXT NOT NULL DEFAULT '{}',
        models TEXT NOT NULL DEFAULT '[]',
        status INTEGER NOT NULL DEFAULT 1,
        scope TEXT NOT NULL DEFAULT 'custom',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX aog_service_provider_service ON aog_service_provider(service_name);
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

_PROVIDER_COLS_SQL = ", ".join(f'"{c}"' if c == "desc" else c for c in PROVIDER_COLUMNS)


def redact_url(url: str) -> str:
    """The URL for messages and logs: never its password."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


class PostgresStore:
    """The `Store` on PostgreSQL (psycopg 3, a small connection pool).

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
            self._check_credentials()
            self._seed()
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

    def _tx(self, ops: Sequence[tuple[str, tuple[SqlValue, ...]]]) -> list[Any]:
        """Run `ops` as one transaction that also bumps the generation and notifies the
        other hosts (on commit). Returns the last statement's rows (if any)."""
        last: list[Any] = []
        try:
            with self._pool.connection() as conn, conn.transaction():
                for sql, params in ops:
                    cur = conn.execute(sql, params)
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
                rows: list[dict[str, Any]] = conn.execute(sql, params).fetchall()
                return rows
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self.where}: {exc}") from None

    def generation(self) -> int:
        """How many writes the database has seen (any host's)."""
        rows = self._query("SELECT gen FROM aogstream_generation WHERE id = 1")
        return int(rows[0]["gen"]) if rows else 0

    def schema_version(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(rows[0]["v"])

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

    def _check_credentials(self) -> None:
        """Refuse to open without the secret, or with a secret that does not open the
        credentials already stored; seal any plain one (a row copied in by hand)."""
        rows = self._query("SELECT id, provider_name, auth_key FROM aog_service_provider "
                           "WHERE auth_key != '' ORDER BY id")
        sealed = [r for r in rows if is_sealed(r["auth_key"])]
        if self._box is None:
            if sealed:
                raise StoreError(
                    f"{self.where} holds encrypted provider credentials; set {SECRET_ENV} to "
                    f"the secret they were encrypted with (the same on every host)")
            raise StoreError(
                f"{SECRET_ENV} is required with PostgreSQL: provider credentials in a shared "
                f"database are always encrypted; set it to the same secret on every host")
        for r in sealed:
            try:
                open_value(self._box, r["auth_key"], r["provider_name"])
            except SecretError as exc:
                raise StoreError(f"{self.where}: {exc} (provider {r['provider_name']}); "
                                 f"refusing to start without them") from None
        if sealed:
            self._box.adopt_salt(sealed[0]["auth_key"])
        plain = [r for r in rows if not is_sealed(r["auth_key"])]
        if plain:
            self._tx([("UPDATE aog_service_provider SET auth_key=%s WHERE id=%s",
                       (self._box.seal(r["auth_key"], r["provider_name"]), r["id"]))
                      for r in plain])

    def _open_credential(self, value: str, provider_name: str) -> str:
        try:
            return open_value(self._box, value, provider_name)
        except SecretError as exc:  # written by a host with another secret
            raise StoreError(f"{self.where}: {exc} (provider {provider_name})") from None

    def _seed(self) -> None:
        existing = {s.service_name for s in self.services()}
        ops: list[tuple[str, tuple[SqlValue, ...]]] = [
            ("INSERT INTO aog_service (name, hybrid_policy, status, avatar, created_at, "
             "updated_at) VALUES (%s, %s, -1, '', %s, %s) ON CONFLICT (name) DO NOTHING",
             (name, policy, now(), now()))
            for name, policy in SERVICES.items() if name not in existing]
        if ops:  # another host may seed at the same moment: DO NOTHING keeps theirs
            self._tx(ops)

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

    # ---- services ----

    def services(self) -> list[Service]:
        return [Service(r["name"], r["hybrid_policy"], r["status"], r["avatar"],
                        r["created_at"], r["updated_at"])
                for r in self._query("SELECT * FROM aog_service ORDER BY name")]

    def get_service(self, name: str) -> Service | None:
        rows = self._query("SELECT * FROM aog_service WHERE name=%s", (name,))
        return Service(rows[0]["name"], rows[0]["hybrid_policy"], rows[0]["status"],
                       rows[0]["avatar"], rows[0]["created_at"],
                       rows[0]["updated_at"]) if rows else None

    def put_service(self, service: Service) -> None:
        service.updated_at = now()
        self._tx([(
            "INSERT INTO aog_service (name, hybrid_policy, status, avatar, created_at, "
            "updated_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "hybrid_policy=excluded.hybrid_policy, status=excluded.status, "
            "avatar=excluded.avatar, updated_at=excluded.updated_at",
            (service.service_name, service.hybrid_policy, service.status, service.avatar,
             service.created_at, service.updated_at))])

    # ---- providers ----

    def providers(self, *, service_name: str = "", service_source: str = "",
                  provider_name: str = "", flavor: str = "") -> list[ProviderRow]:
        where, params = _filters(service_name=service_name, service_source=service_source,
                                 provider_name=provider_name, flavor=flavor)
        rows = self._query(f"SELECT * FROM aog_service_provider{where} ORDER BY id", params)
        out = [_provider(r) for r in rows]
        for p in out:
            p.auth_key = self._open_credential(p.auth_key, p.provider_name)
        return out

    def get_provider(self, provider_name: str) -> ProviderRow | None:
        found = self.providers(provider_name=provider_name)
        return found[0] if found else None

    def put_provider(self, provider: ProviderRow) -> None:
        provider.updated_at = now()
        values: list[SqlValue] = [getattr(provider, c) for c in PROVIDER_COLUMNS]
        values[PROVIDER_COLUMNS.index("models")] = json.dumps(provider.models)
        assert self._box is not None  # required: __init__ refuses to open without it
        values[PROVIDER_COLUMNS.index("auth_key")] = self._box.seal(
            provider.auth_key, provider.provider_name)
        marks = ", ".join(["%s"] * len(PROVIDER_COLUMNS))
        updates = ", ".join(f"{_q(c)}=excluded.{_q(c)}" for c in PROVIDER_COLUMNS
                            if c not in ("provider_name", "created_at"))
        self._tx([(f"INSERT INTO aog_service_provider ({_PROVIDER_COLS_SQL}) VALUES ({marks}) "
                   f"ON CONFLICT (provider_name) DO UPDATE SET {updates}", tuple(values))])

    def delete_provider(self, provider_name: str) -> bool:
        rows = self._tx([
            ("DELETE FROM aog_model WHERE provider_name=%s", (provider_name,)),
            ("DELETE FROM aog_service_provider WHERE provider_name=%s RETURNING id",
             (provider_name,))])
        return bool(rows)

    # ---- models ----

    def models(self, *, provider_name: str = "", model_name: str = "",
               service_name: str = "") -> list[ModelRow]:
        where, params = _filters(provider_name=provider_name, model_name=model_name,
                                 service_name=service_name)
        mine = "host_id IN ('', %s)"
        where = f"{where} AND {mine}" if where else f" WHERE {mine}"
        rows = self._query(f"SELECT * FROM aog_model{where} ORDER BY id",
                           (*params, self.host_id))
        return [ModelRow(r["model_name"], r["provider_name"], r["service_name"],
                         r["service_source"], r["status"], bool(r["is_default"]), int(r["size"]),
                         r["avatar"], r["created_at"], r["updated_at"]) for r in rows]

    def _model_host(self, model: ModelRow) -> str:
        """Local models are what this host's plugins have: per host. Remote ones shared."""
        return self.host_id if model.service_source == "local" else ""

    def put_model(self, model: ModelRow) -> None:
        model.updated_at = now()
        host = self._model_host(model)
        values: list[SqlValue] = [host, *(getattr(model, c) for c in MODEL_COLUMNS)]
        values[1 + MODEL_COLUMNS.index("is_default")] = bool(model.is_default)
        values[1 + MODEL_COLUMNS.index("status")] = str(model.status)  # an enum's value
        cols = ", ".join(("host_id", *MODEL_COLUMNS))
        marks = ", ".join(["%s"] * len(values))
        updates = ", ".join(f"{c}=excluded.{c}" for c in MODEL_COLUMNS
                            if c not in ("model_name", "provider_name", "created_at"))
        ops: list[tuple[str, tuple[SqlValue, ...]]] = []
        if model.is_default:  # one default per service, among the rows this host sees
            ops.append(("UPDATE aog_model SET is_default=FALSE WHERE service_name=%s AND "
                        "host_id IN ('', %s) AND NOT (host_id=%s AND provider_name=%s AND "
                        "model_name=%s)", (model.service_name, self.host_id, host,
                                           model.provider_name, model.model_name)))
        ops.append((f"INSERT INTO aog_model ({cols}) VALUES ({marks}) ON CONFLICT "
                    f"(host_id, provider_name, model_name) DO UPDATE SET {updates}",
                    tuple(values)))
        self._tx(ops)

    def delete_model(self, provider_name: str, model_name: str) -> bool:
        rows = self._tx([("DELETE FROM aog_model WHERE provider_name=%s AND model_name=%s "
                          "AND host_id IN ('', %s) RETURNING id",
                          (provider_name, model_name, self.host_id))])
        return bool(rows)

    # ---- plugin switches (per host) ----

    def plugin_enabled(self, name: str) -> bool:
        rows = self._query("SELECT enabled FROM aogstream_plugin WHERE host_id=%s AND name=%s",
                           (self.host_id, name))
        return bool(rows[0]["enabled"]) if rows else True

    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        self._tx([("INSERT INTO aogstream_plugin (host_id, name, enabled, updated_at) "
                   "VALUES (%s, %s, %s, %s) ON CONFLICT (host_id, name) DO UPDATE SET "
                   "enabled=excluded.enabled, updated_at=excluded.updated_at",
                   (self.host_id, name, bool(enabled), now()))])

    # ---- copying from SQLite ----

    def import_rows(self, services: list[Service], providers: list[ProviderRow],
                    models: list[ModelRow], plugins: dict[str, bool]) -> None:
        """Write another store's rows in one transaction (the one-time copy from SQLite):
        every row or none. Rows already here with the same key are replaced."""
        ops: list[tuple[str, tuple[SqlValue, ...]]] = []
        for s in services:
            ops.append(("INSERT INTO aog_service (name, hybrid_policy, status, avatar, "
                        "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                        "(name) DO UPDATE SET hybrid_policy=excluded.hybrid_policy, "
                        "status=excluded.status, avatar=excluded.avatar, "
                        "updated_at=excluded.updated_at",
                        (s.service_name, s.hybrid_policy, s.status, s.avatar, s.created_at,
                         s.updated_at)))
        assert self._box is not None
        updates = ", ".join(f"{_q(c)}=excluded.{_q(c)}" for c in PROVIDER_COLUMNS
                            if c not in ("provider_name", "created_at"))
        for p in providers:
            values: list[SqlValue] = [getattr(p, c) for c in PROVIDER_COLUMNS]
            values[PROVIDER_COLUMNS.index("models")] = json.dumps(p.models)
            values[PROVIDER_COLUMNS.index("auth_key")] = self._box.seal(p.auth_key,
                                                                        p.provider_name)
            ops.append((f"INSERT INTO aog_service_provider ({_PROVIDER_COLS_SQL}) VALUES "
                        f"({', '.join(['%s'] * len(values))}) ON CONFLICT (provider_name) "
                        f"DO UPDATE SET {updates}", tuple(values)))
        mupdates = ", ".join(f"{c}=excluded.{c}" for c in MODEL_COLUMNS
                             if c not in ("model_name", "provider_name", "created_at"))
        for mr in models:
            mvalues: list[SqlValue] = [self._model_host(mr),
                                       *(getattr(mr, c) for c in MODEL_COLUMNS)]
            mvalues[1 + MODEL_COLUMNS.index("is_default")] = bool(mr.is_default)
            mvalues[1 + MODEL_COLUMNS.index("status")] = str(mr.status)
            ops.append((f"INSERT INTO aog_model ({', '.join(('host_id', *MODEL_COLUMNS))}) "
                        f"VALUES ({', '.join(['%s'] * len(mvalues))}) ON CONFLICT "
                        f"(host_id, provider_name, model_name) DO UPDATE SET {mupdates}",
                        tuple(mvalues)))
        for name, enabled in plugins.items():
            ops.append(("INSERT INTO aogstream_plugin (host_id, name, enabled, updated_at) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (host_id, name) DO UPDATE SET "
                        "enabled=excluded.enabled, updated_at=excluded.updated_at",
                        (self.host_id, name, enabled, now())))
        self._tx(ops)


def psycopg_pool_timeout() -> type[Exception]:
    from psycopg_pool import PoolTimeout

    return PoolTimeout


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Each pooled connection commits durably whatever the server's default says."""
    conn.execute("SET synchronous_commit = on")


def _q(column: str) -> str:
    return f'"{column}"' if column == "desc" else column


def _filters(**kw: str) -> tuple[str, tuple[str, ...]]:
    parts = [(k, v) for k, v in kw.items() if v]
    if not parts:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=%s" for k, _ in parts), tuple(v for _, v in parts)


def _provider(r: dict[str, Any]) -> ProviderRow:
    d = {c: r[c] for c in PROVIDER_COLUMNS}
    d["models"] = json.loads(d["models"] or "[]")
    return ProviderRow(**d)


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
