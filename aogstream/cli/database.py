"""`aogstream db migrate` and `aogstream db copy-sqlite`: the store's schema and the
one-time move of a host's SQLite store into a shared PostgreSQL database.

Both run in this process against the database itself (no gateway needs to run).
`migrate` opens the configured store, which applies the numbered migrations (under a
lock in PostgreSQL, so hosts starting meanwhile wait) and checks that the secret opens
the stored credentials. `copy-sqlite` reads every row of an SQLite store and writes them
to PostgreSQL in one transaction: services, providers with their credentials (sealed
with AOGSTREAM_SECRET_KEY), model records (local ones become this host's), and this
host's plugin switches. It is meant once per database: it refuses a database that
already has providers unless told `--replace` (rows of the same name are overwritten).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aogstream.config import Config
from aogstream.store import SQLiteStore, StoreError, open_store
from aogstream.store.secrets import ENV as SECRET_ENV


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="the store's schema, and copying SQLite to PostgreSQL")
    dsub = db.add_subparsers(dest="action", required=True)
    mig = dsub.add_parser("migrate", help="create or upgrade the store's tables (what a "
                          "gateway does when it starts), then say the schema version")
    copy = dsub.add_parser("copy-sqlite", help="copy an SQLite store into the PostgreSQL "
                           "database (once, before the gateways use it)")
    copy.add_argument("sqlite", nargs="?", type=Path, default=None,
                      help="the SQLite file (default: <data dir>/aogstream.db)")
    copy.add_argument("--replace", action="store_true",
                      help="copy even when the database already has providers (rows of "
                      "the same name are overwritten)")
    for p in (mig, copy):
        p.add_argument("--database-url", default=None, metavar="URL",
                       help="postgresql://... (default AOGSTREAM_DATABASE_URL; for migrate, "
                       "none means the SQLite store in the data directory)")
        p.add_argument("--data-dir", type=Path, default=None,
                       help="data directory (this host's id, and the default SQLite file)")


def cmd_db(args: argparse.Namespace) -> int:
    cfg = Config.from_env(data_dir=args.data_dir, database_url=args.database_url)
    try:
        if args.action == "migrate":
            return migrate(cfg)
        return copy_sqlite(cfg, args.sqlite or cfg.db_path, replace=args.replace)
    except StoreError as exc:
        print(f"aogstream db: {exc}", file=sys.stderr)
        return 2


def migrate(cfg: Config) -> int:
    store = open_store(cfg)
    try:
        version = store.schema_version()  # type: ignore[attr-defined]
        where = getattr(store, "where", None) or str(cfg.db_path)
        print(f"{where}: schema version {version}")
    finally:
        store.close()
    return 0


def copy_sqlite(cfg: Config, source: Path, *, replace: bool) -> int:
    from aogstream.store.postgres import PostgresStore

    if not cfg.database_url:
        raise StoreError("copy-sqlite needs the PostgreSQL database: --database-url or "
                         "AOGSTREAM_DATABASE_URL")
    if not source.is_file():
        raise StoreError(f"{source}: no SQLite store there (give its path, or --data-dir)")
    src = SQLiteStore(source)  # opens sealed keys with AOGSTREAM_SECRET_KEY, if any
    try:
        services, providers, models = src.services(), src.providers(), src.models()
        plugins = {str(r[0]): bool(r[1]) for r in
                   src._query("SELECT name, enabled FROM aogstream_plugin")}
    finally:
        src.close()
    dest = open_store(cfg)
    assert isinstance(dest, PostgresStore)
    try:
        if dest.providers() and not replace:
            raise StoreError(f"{dest.where} already has providers: the copy is meant for a "
                             f"new database (add --replace to overwrite rows of the same name)")
        dest.import_rows(services, providers, models, plugins)
        keyed = sum(1 for p in providers if p.auth_key)
        print(f"copied {len(services)} services, {len(providers)} providers ({keyed} with "
              f"credentials, encrypted with {SECRET_ENV}), {len(models)} models and "
              f"{len(plugins)} plugin switches from {source} to {dest.where} "
              f"(host {dest.host_id})")
    finally:
        dest.close()
    return 0
