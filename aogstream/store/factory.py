"""Which store a gateway opens: SQLite in the data directory (the default), or the
PostgreSQL database that `AOGSTREAM_DATABASE_URL` / `--database-url` names.

A host's id tells its per-host rows apart in a shared database (see `store.postgres`).
It is kept in the data directory (`host.id`), so the workers of one host (one data
directory) are one host, and a host keeps its id across restarts; `AOGSTREAM_HOST_ID`
sets it explicitly (e.g. for hosts rebuilt from an image with an empty data dir).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aogstream.store.sqlite import SQLiteStore, StoreError

if TYPE_CHECKING:
    from aogstream.config import Config
    from aogstream.store.base import Store

HOST_ID_ENV = "AOGSTREAM_HOST_ID"
HOST_ID_FILE = "host.id"
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def host_id(data_dir: Path) -> str:
    """This host's id: `AOGSTREAM_HOST_ID`, else the one in `<data dir>/host.id` (made
    on first use)."""
    given = os.environ.get(HOST_ID_ENV, "").strip()
    if given:
        if not _HOST_ID.match(given):
            raise StoreError(f"{HOST_ID_ENV} must be 1-128 letters, digits or ._:@- "
                             f"(got {given!r})")
        return given
    path = data_dir / HOST_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if _HOST_ID.match(text):
            return text
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    tmp = path.with_name(f"{HOST_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n")
    try:  # two processes of one host starting together agree on the first one written
        os.link(tmp, path)
    except FileExistsError:
        new = path.read_text().strip()
    finally:
        tmp.unlink()
    return new


def open_store(config: Config, secret: str | None = None) -> Store:
    """The store `config` names (PostgreSQL when `database_url` is set)."""
    url = config.database_url
    if not url:
        return SQLiteStore(config.db_path, secret)
    from aogstream.store.postgres import PostgresStore, is_postgres_url

    if not is_postgres_url(url):
        raise StoreError("the database URL must start with postgresql:// (or postgres://); "
                         "leave it unset for the embedded SQLite store")
    return PostgresStore(url, host_id(config.data_dir), secret)
