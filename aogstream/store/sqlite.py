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
import os
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from aogstream.store.base import now
from aogstream.store.secrets import SecretBox
from aogstream.store.sql import V1_SHARED_TABLES, Op, SQLStore, SqlValue, StoreError

MIGRATIONS: list[str] = [
    # 1: the first release
    V1_SHARED_TABLES.replace("ROW_ID", "INTEGER PRIMARY KEY AUTOINCREMENT") + """
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


class SQLiteStore(SQLStore):
    """The `Store` on one SQLite file: the statements are `store.sql`'s; this class keeps
    the connection, its durability settings, the migrations and the file's privacy."""

    def __init__(self, path: Path, secret: str | None = None) -> None:
        """Open (creating or migrating) the store at `path`.

        `secret` encrypts provider credentials at rest (`store.secrets`); None takes it
        from AOGSTREAM_SECRET_KEY, "" means none. Sealed credentials that this secret
        cannot open make the store refuse to open (StoreError naming the variable)."""
        self.path = path
        self.where = str(path)
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
        try:
            self._open_body()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- plumbing ----

    def _tx(self, ops: Sequence[Op]) -> list[sqlite3.Row]:
        last: list[sqlite3.Row] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in ops:
                    cur = self._db.execute(sql, params)
                    last = cur.fetchall() if cur.description else []
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return last

    def _query(self, sql: str, params: tuple[SqlValue, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

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

    def _after_sealing(self) -> None:
        """Leave no plain copy of the credentials just sealed in the WAL."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


__all__ = ["MIGRATIONS", "SQLiteStore", "StoreError"]
