"""The embedded store: one SQLite file (`<data dir>/aogstream.db`), WAL, durable writes.

Durability: WAL with `synchronous=FULL` means a write is on disk when its transaction
commits, so a gateway killed with -9 (or a power cut) at any moment loses nothing that was
committed, and a write that was interrupted is rolled back as a whole. Every public
write is one transaction.

Migrations are numbered from the first release and recorded in `schema_migrations`; a
database from a newer aogstream is refused with a clear message instead of being
guessed at. Tables keep AOG's names and columns where AOG has them.

One connection, serialised by a lock: writes are rare (management calls) and reads are
served from the gateway's in-memory routing table, so the database is never on the
streaming hot path. Call it from a worker thread when on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from aogstream.store.base import (
    SERVICES,
    ModelRow,
    ProviderRow,
    Service,
    now,
)
from aogstream.store.secrets import SecretBox, SecretError, is_sealed, open_value

# What a statement's `?` placeholders take (sqlite3's own types; bools go in as ints).
type SqlValue = str | int | float | bytes | None

MIGRATIONS: list[str] = [
    # 1: the first release
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
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider_name TEXT NOT NULL UNIQUE,
        service_name TEXT NOT NULL,
        service_source TEXT NOT NULL DEFAULT 'local',
        desc TEXT NOT NULL DEFAULT '',
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
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_name TEXT NOT NULL,
        provider_name TEXT NOT NULL,
        service_name TEXT NOT NULL,
        service_source TEXT NOT NULL DEFAULT 'local',
        status TEXT NOT NULL DEFAULT 'downloaded',
        is_default INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0,
        avatar TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (provider_name, model_name)
    );
    CREATE TABLE aogstream_plugin (
        name TEXT PRIMARY KEY,
        enabled INTEGER NOT NULL DEFAULT 1,
        updated_at TEXT NOT NULL
    );
    """,
]

PROVIDER_COLUMNS = ("provider_name", "service_name", "service_source", "desc", "method", "url",
                    "auth_type", "auth_key", "flavor", "protocol", "extra_headers",
                    "extra_json_body", "properties", "models", "status", "scope", "created_at",
                    "updated_at")
MODEL_COLUMNS = ("model_name", "provider_name", "service_name", "service_source", "status",
                 "is_default", "size", "avatar", "created_at", "updated_at")


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database, unwritable)."""


def _private_files(path: Path) -> None:
    """The database holds provider keys: create it 0600 before SQLite opens it (SQLite
    gives its -wal and -shm files the database's mode), and tighten the modes of files
    an older version left readable to others."""
    if sys.platform == "win32" or str(path) == ":memory:":  # no file behind it
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
              path.with_name(path.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                p.chmod(0o600)


class SQLiteStore:
    def __init__(self, path: Path, secret: str | None = None) -> None:
        """Open (creating or migrating) the store at `path`.

        `secret` encrypts provider credentials at rest (`store.secrets`); None takes it
        from AOGSTREAM_SECRET_KEY, "" means none. Sealed credentials that this secret
        cannot open make the store refuse to open (StoreError naming the variable)."""
        self.path = path
        if str(path) != ":memory:":
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_files(path)
        self._lock = threading.Lock()
        self._box = SecretBox.from_env() if secret is None else (
            SecretBox(secret) if secret else None)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # overwrite deleted and replaced content: an old plain credential must not
            # linger in a free page after it was sealed or changed
            self._db.execute("PRAGMA secure_delete=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        self._seed()
        self._seal_credentials()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- plumbing ----

    def _tx(self, sql_params: Sequence[tuple[str, tuple[SqlValue, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in sql_params:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[SqlValue, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def schema_version(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        have = self.schema_version()
        if have > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} was written by a newer aogstream (schema {have}, this one knows "
                f"{len(MIGRATIONS)}); upgrade aogstream or point AOG_DATA_DIR elsewhere")
        for version in range(have + 1, len(MIGRATIONS) + 1):
            script = MIGRATIONS[version - 1]
            # executescript commits first; wrap the migration and its record in one
            # transaction so a crash mid-migration leaves the previous version intact
            self._db.executescript(
                "BEGIN IMMEDIATE;\n" + script +
                f"\nINSERT INTO schema_migrations VALUES ({version}, '{now()}');\nCOMMIT;")

    def _seal_credentials(self) -> None:
        """Check that every sealed credential opens with this secret (refusing to open
        otherwise), then seal the plain ones when there is a secret, leaving no plain
        copy in the WAL."""
        rows = self._query("SELECT id, provider_name, auth_key FROM aog_service_provider "
                           "WHERE auth_key != '' ORDER BY id")
        sealed = [r for r in rows if is_sealed(r["auth_key"])]
        for r in sealed:
            try:
                open_value(self._box, r["auth_key"], r["provider_name"])
            except SecretError as exc:
                self.close()
                raise StoreError(f"{self.path}: {exc} (provider {r['provider_name']}); "
                                 f"refusing to start without them") from None
        if self._box is None:
            return
        if sealed:
            self._box.adopt_salt(sealed[0]["auth_key"])
        plain = [r for r in rows if not is_sealed(r["auth_key"])]
        if plain:
            self._tx([("UPDATE aog_service_provider SET auth_key=? WHERE id=?",
                       (self._box.seal(r["auth_key"], r["provider_name"]), r["id"]))
                      for r in plain])
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _open_credential(self, value: str, provider_name: str) -> str:
        try:
            return open_value(self._box, value, provider_name)
        except SecretError as exc:  # written by a process with another secret
            raise StoreError(f"{self.path}: {exc} (provider {provider_name})") from None

    def _seed(self) -> None:
        existing = {s.service_name for s in self.services()}
        ops = []
        for name, policy in SERVICES.items():
            if name not in existing:
                ops.append(("INSERT INTO aog_service (name, hybrid_policy, status, avatar, "
                            "created_at, updated_at) VALUES (?, ?, -1, '', ?, ?)",
                            (name, policy, now(), now())))
        if ops:
            self._tx(ops)

    # ---- services ----

    def services(self) -> list[Service]:
        return [Service(r["name"], r["hybrid_policy"], r["status"], r["avatar"],
                        r["created_at"], r["updated_at"])
                for r in self._query("SELECT * FROM aog_service ORDER BY name")]

    def get_service(self, name: str) -> Service | None:
        return next((s for s in self.services() if s.service_name == name), None)

    def put_service(self, service: Service) -> None:
        service.updated_at = now()
        self._tx([(
            "INSERT INTO aog_service (name, hybrid_policy, status, avatar, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
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
        values = [getattr(provider, c) for c in PROVIDER_COLUMNS]
        values[PROVIDER_COLUMNS.index("models")] = json.dumps(provider.models)
        if self._box is not None:
            values[PROVIDER_COLUMNS.index("auth_key")] = self._box.seal(
                provider.auth_key, provider.provider_name)
        cols = ", ".join(PROVIDER_COLUMNS)
        marks = ", ".join("?" * len(PROVIDER_COLUMNS))
        updates = ", ".join(f"{c}=excluded.{c}" for c in PROVIDER_COLUMNS
                            if c not in ("provider_name", "created_at"))
        self._tx([(f"INSERT INTO aog_service_provider ({cols}) VALUES ({marks}) "
                   f"ON CONFLICT(provider_name) DO UPDATE SET {updates}", tuple(values))])

    def delete_provider(self, provider_name: str) -> bool:
        if self.get_provider(provider_name) is None:
            return False
        self._tx([("DELETE FROM aog_model WHERE provider_name=?", (provider_name,)),
                  ("DELETE FROM aog_service_provider WHERE provider_name=?", (provider_name,))])
        return True

    # ---- models ----

    def models(self, *, provider_name: str = "", model_name: str = "",
               service_name: str = "") -> list[ModelRow]:
        where, params = _filters(provider_name=provider_name, model_name=model_name,
                                 service_name=service_name)
        rows = self._query(f"SELECT * FROM aog_model{where} ORDER BY id", params)
        return [ModelRow(r["model_name"], r["provider_name"], r["service_name"],
                         r["service_source"], r["status"], bool(r["is_default"]), r["size"],
                         r["avatar"], r["created_at"], r["updated_at"]) for r in rows]

    def put_model(self, model: ModelRow) -> None:
        model.updated_at = now()
        values = [getattr(model, c) for c in MODEL_COLUMNS]
        values[MODEL_COLUMNS.index("is_default")] = int(model.is_default)
        cols = ", ".join(MODEL_COLUMNS)
        marks = ", ".join("?" * len(MODEL_COLUMNS))
        updates = ", ".join(f"{c}=excluded.{c}" for c in MODEL_COLUMNS
                            if c not in ("model_name", "provider_name", "created_at"))
        ops: list[tuple[str, tuple[SqlValue, ...]]] = []
        if model.is_default:  # one default per service
            ops.append(("UPDATE aog_model SET is_default=0 WHERE service_name=? AND NOT "
                        "(provider_name=? AND model_name=?)",
                        (model.service_name, model.provider_name, model.model_name)))
        ops.append((f"INSERT INTO aog_model ({cols}) VALUES ({marks}) ON CONFLICT"
                    f"(provider_name, model_name) DO UPDATE SET {updates}", tuple(values)))
        self._tx(ops)

    def delete_model(self, provider_name: str, model_name: str) -> bool:
        if not self.models(provider_name=provider_name, model_name=model_name):
            return False
        self._tx([("DELETE FROM aog_model WHERE provider_name=? AND model_name=?",
                   (provider_name, model_name))])
        return True

    # ---- plugin switches ----

    def plugin_enabled(self, name: str) -> bool:
        rows = self._query("SELECT enabled FROM aogstream_plugin WHERE name=?", (name,))
        return bool(rows[0][0]) if rows else True

    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        self._tx([("INSERT INTO aogstream_plugin (name, enabled, updated_at) VALUES (?, ?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET enabled=excluded.enabled, "
                   "updated_at=excluded.updated_at", (name, int(enabled), now()))])


def _filters(**kw: str) -> tuple[str, tuple[str, ...]]:
    parts = [(k, v) for k, v in kw.items() if v]
    if not parts:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k, _ in parts), tuple(v for _, v in parts)


def _provider(r: sqlite3.Row) -> ProviderRow:
    d = {c: r[c] for c in PROVIDER_COLUMNS}
    d["models"] = json.loads(d["models"] or "[]")
    return ProviderRow(**d)
