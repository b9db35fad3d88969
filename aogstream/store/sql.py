"""The body both SQL stores share: the statements, the row mappers, the credential rules
and the `Store` methods, written once.

Why one body: SQLite (`store.sqlite`) and PostgreSQL (`store.postgres`) hold the same
tables with the same columns, and the gateway must not be able to tell them apart; two
copies of every statement would drift (a column added to one, a filter to the other).
A backend gives this body what truly differs and nothing else:

* `_query(sql, params)` and `_tx(ops)`: run statements on its connection(s), a write
  always as one transaction. Statements are written here with `?` placeholders; a
  backend whose driver wants another style translates them in those two primitives.
* host-scoped rows (`_host_columns`, `_host_of`, `_model_scope`): nothing in a store of
  one host; where hosts share a database, the model rows of local providers and the
  plugin switches carry the host's id (see `store.postgres`).
* `_require_secret` and `_after_sealing`: whether credentials may be stored in plain
  text, and what must happen once plain ones were sealed (SQLite drops the plain copies
  from its WAL).

Credentials are sealed on every write (`_seal`) and opened on every read
(`_open_credential`) through this body alone, so no backend can store or return them
another way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from aogstream.store.base import SERVICES, ModelRow, ProviderRow, Service, now
from aogstream.store.secrets import SecretBox, SecretError, is_sealed, open_value

# What a statement's placeholders take (bools go to SQLite as ints, to PostgreSQL as bools).
type SqlValue = str | int | float | bool | bytes | None
type Op = tuple[str, tuple[SqlValue, ...]]

PROVIDER_COLUMNS = ("provider_name", "service_name", "service_source", "desc", "method", "url",
                    "auth_type", "auth_key", "flavor", "protocol", "extra_headers",
                    "extra_json_body", "properties", "models", "status", "scope", "created_at",
                    "updated_at")
MODEL_COLUMNS = ("model_name", "provider_name", "service_name", "service_source", "status",
                 "is_default", "size", "avatar", "created_at", "updated_at")


# Version 1 of the tables whose shape both dialects share (services and providers): one
# text, so the columns cannot differ between them. ROW_ID is the dialect's auto-numbered
# row id; `desc` is quoted, a keyword in both. Frozen as every applied migration is: a
# later change to these tables is a new migration in each backend.
V1_SHARED_TABLES = """
    CREATE TABLE aog_service (
        name TEXT PRIMARY KEY,
        hybrid_policy TEXT NOT NULL DEFAULT 'default',
        status INTEGER NOT NULL DEFAULT -1,
        avatar TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE aog_service_provider (
        id ROW_ID,
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
"""


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database, unwritable, down)."""


class Row(Protocol):
    """A result row as either driver gives it (`sqlite3.Row`, psycopg's dict rows):
    read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def _q(column: str) -> str:
    """`desc` is a keyword in both dialects; both accept it double-quoted."""
    return f'"{column}"' if column == "desc" else column


def _upsert(table: str, columns: Sequence[str], key: Sequence[str],
            keep: Sequence[str] = ("created_at",)) -> str:
    """INSERT of `columns` that, on a row with the same `key`, updates every column but
    the key and `keep` (a row's creation time survives its updates)."""
    cols = ", ".join(_q(c) for c in columns)
    marks = ", ".join("?" * len(columns))
    updates = ", ".join(f"{_q(c)}=excluded.{_q(c)}" for c in columns
                        if c not in key and c not in keep)
    return (f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _filters(**kw: str) -> tuple[list[str], tuple[str, ...]]:
    """The conditions for the filters given (empty ones do not filter)."""
    parts = [(k, v) for k, v in kw.items() if v]
    return [f"{k}=?" for k, _ in parts], tuple(v for _, v in parts)


def _where(conditions: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def _service(r: Row) -> Service:
    return Service(r["name"], r["hybrid_policy"], r["status"], r["avatar"], r["created_at"],
                   r["updated_at"])


def _provider(r: Row) -> ProviderRow:
    """The row as stored; its `auth_key` still sealed (`SQLStore.providers` opens it)."""
    d = {c: r[c] for c in PROVIDER_COLUMNS}
    d["models"] = json.loads(d["models"] or "[]")
    return ProviderRow(**d)


def _model(r: Row) -> ModelRow:
    return ModelRow(r["model_name"], r["provider_name"], r["service_name"],
                    r["service_source"], r["status"], bool(r["is_default"]), int(r["size"]),
                    r["avatar"], r["created_at"], r["updated_at"])


class SQLStore:
    """The `Store` over a backend's `_query`/`_tx` (see the module doc).

    A backend sets `where` (its database, for messages: never a password) and `_box`
    (the credentials' secret, or None) before calling `_open_body`."""

    where: str
    _box: SecretBox | None

    # ---- what a backend provides ----

    def _query(self, sql: str, params: tuple[SqlValue, ...] = ()) -> Sequence[Row]:
        raise NotImplementedError

    def _tx(self, ops: Sequence[Op]) -> Sequence[Row]:
        """Run `ops` as one transaction; the last statement's rows (RETURNING), if any."""
        raise NotImplementedError

    def _host_columns(self) -> tuple[str, ...]:
        """The key columns that tell hosts' own rows apart: none with one host."""
        return ()

    def _host_of(self, model: ModelRow | None) -> tuple[SqlValue, ...]:
        """The values of `_host_columns` for a model row (None: for a plugin switch)."""
        return ()

    def _model_scope(self) -> tuple[list[str], tuple[SqlValue, ...]]:
        """The conditions that keep to the model rows this store's host sees."""
        return [], ()

    def _require_secret(self, sealed: bool) -> None:
        """Called when the store opens, before any credential is read: raise StoreError
        if the store may not be used without a secret (`sealed`: some are encrypted)."""

    def _after_sealing(self) -> None:
        """Called once plain credentials found at open were sealed."""

    # ---- opening ----

    def _open_body(self) -> None:
        """What every store does once its tables exist: check and seal the credentials
        (first, so that a store that refuses to open has written nothing), then seed the
        services."""
        self._seal_credentials()
        self._seed()

    def schema_version(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
        return int(rows[0]["v"])

    def _seed(self) -> None:
        existing = {s.service_name for s in self.services()}
        ops: list[Op] = [
            ("INSERT INTO aog_service (name, hybrid_policy, status, avatar, created_at, "
             "updated_at) VALUES (?, ?, -1, '', ?, ?) ON CONFLICT (name) DO NOTHING",
             (name, policy, now(), now()))
            for name, policy in SERVICES.items() if name not in existing]
        if ops:  # another process may seed at the same moment: DO NOTHING keeps its rows
            self._tx(ops)

    def _seal_credentials(self) -> None:
        """Check that every sealed credential opens with this secret (refusing to open
        otherwise), then seal the plain ones when there is a secret."""
        rows = self._query("SELECT id, provider_name, auth_key FROM aog_service_provider "
                           "WHERE auth_key != '' ORDER BY id")
        sealed = [r for r in rows if is_sealed(r["auth_key"])]
        self._require_secret(bool(sealed))
        for r in sealed:
            try:
                open_value(self._box, r["auth_key"], r["provider_name"])
            except SecretError as exc:
                raise StoreError(f"{self.where}: {exc} (provider {r['provider_name']}); "
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
            self._after_sealing()

    def _seal(self, provider: ProviderRow) -> str:
        """The credential as it is written: sealed when there is a secret."""
        if self._box is None:
            return provider.auth_key
        return self._box.seal(provider.auth_key, provider.provider_name)

    def _open_credential(self, value: str, provider_name: str) -> str:
        try:
            return open_value(self._box, value, provider_name)
        except SecretError as exc:  # written by a process with another secret
            raise StoreError(f"{self.where}: {exc} (provider {provider_name})") from None

    # ---- the statements a write is made of ----

    def _service_op(self, s: Service) -> Op:
        return (_upsert("aog_service", ("name", "hybrid_policy", "status", "avatar",
                                        "created_at", "updated_at"), ("name",)),
                (s.service_name, s.hybrid_policy, s.status, s.avatar, s.created_at,
                 s.updated_at))

    def _provider_op(self, p: ProviderRow) -> Op:
        values: list[SqlValue] = [getattr(p, c) for c in PROVIDER_COLUMNS]
        values[PROVIDER_COLUMNS.index("models")] = json.dumps(p.models)
        values[PROVIDER_COLUMNS.index("auth_key")] = self._seal(p)
        return (_upsert("aog_service_provider", PROVIDER_COLUMNS, ("provider_name",)),
                tuple(values))

    def _model_op(self, m: ModelRow) -> Op:
        host = self._host_columns()
        values: list[SqlValue] = [getattr(m, c) for c in MODEL_COLUMNS]
        values[MODEL_COLUMNS.index("is_default")] = bool(m.is_default)
        values[MODEL_COLUMNS.index("status")] = str(m.status)  # an enum's value
        return (_upsert("aog_model", (*host, *MODEL_COLUMNS),
                        (*host, "provider_name", "model_name")),
                (*self._host_of(m), *values))

    def _plugin_op(self, name: str, enabled: bool) -> Op:
        host = self._host_columns()
        return (_upsert("aogstream_plugin", (*host, "name", "enabled", "updated_at"),
                        (*host, "name"), keep=()),
                (*self._host_of(None), name, bool(enabled), now()))

    # ---- services ----

    def services(self) -> list[Service]:
        return [_service(r) for r in self._query("SELECT * FROM aog_service ORDER BY name")]

    def get_service(self, name: str) -> Service | None:
        rows = self._query("SELECT * FROM aog_service WHERE name=?", (name,))
        return _service(rows[0]) if rows else None

    def put_service(self, service: Service) -> None:
        service.updated_at = now()
        self._tx([self._service_op(service)])

    # ---- providers ----

    def providers(self, *, service_name: str = "", service_source: str = "",
                  provider_name: str = "", flavor: str = "") -> list[ProviderRow]:
        conds, params = _filters(service_name=service_name, service_source=service_source,
                                 provider_name=provider_name, flavor=flavor)
        rows = self._query(f"SELECT * FROM aog_service_provider{_where(conds)} ORDER BY id",
                           params)
        out = [_provider(r) for r in rows]
        for p in out:
            p.auth_key = self._open_credential(p.auth_key, p.provider_name)
        return out

    def get_provider(self, provider_name: str) -> ProviderRow | None:
        found = self.providers(provider_name=provider_name)
        return found[0] if found else None

    def put_provider(self, provider: ProviderRow) -> None:
        provider.updated_at = now()
        self._tx([self._provider_op(provider)])

    def delete_provider(self, provider_name: str) -> bool:
        """Deletes the provider and its model rows (every host's)."""
        rows = self._tx([
            ("DELETE FROM aog_model WHERE provider_name=?", (provider_name,)),
            ("DELETE FROM aog_service_provider WHERE provider_name=? RETURNING id",
             (provider_name,))])
        return bool(rows)

    # ---- models ----

    def models(self, *, provider_name: str = "", model_name: str = "",
               service_name: str = "") -> list[ModelRow]:
        conds, params = _filters(provider_name=provider_name, model_name=model_name,
                                 service_name=service_name)
        scope, scope_params = self._model_scope()
        rows = self._query(f"SELECT * FROM aog_model{_where([*conds, *scope])} ORDER BY id",
                           (*params, *scope_params))
        return [_model(r) for r in rows]

    def put_model(self, model: ModelRow) -> None:
        model.updated_at = now()
        ops: list[Op] = []
        if model.is_default:  # one default per service, among the rows this host sees
            scope, scope_params = self._model_scope()
            mine = " AND ".join([*(f"{c}=?" for c in self._host_columns()),
                                 "provider_name=?", "model_name=?"])
            ops.append((f"UPDATE aog_model SET is_default=?"
                        f"{_where(['service_name=?', *scope, f'NOT ({mine})'])}",
                        (False, model.service_name, *scope_params, *self._host_of(model),
                         model.provider_name, model.model_name)))
        ops.append(self._model_op(model))
        self._tx(ops)

    def delete_model(self, provider_name: str, model_name: str) -> bool:
        scope, scope_params = self._model_scope()
        rows = self._tx([(f"DELETE FROM aog_model"
                          f"{_where(['provider_name=?', 'model_name=?', *scope])} RETURNING id",
                          (provider_name, model_name, *scope_params))])
        return bool(rows)

    # ---- plugin switches ----

    def plugin_enabled(self, name: str) -> bool:
        conds = [*(f"{c}=?" for c in self._host_columns()), "name=?"]
        rows = self._query(f"SELECT enabled FROM aogstream_plugin{_where(conds)}",
                           (*self._host_of(None), name))
        return bool(rows[0]["enabled"]) if rows else True

    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        self._tx([self._plugin_op(name, enabled)])
