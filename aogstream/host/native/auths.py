"""Auth records of native plugins (CPA's auth files), their login, and failed
credentials.

Records are JSON files in `<data dir>/native-auths/` (CPA's `auth-dir`), mode 0600,
one credential each, its provider in `type` (CPA's convention). Every serving process
reads the folder again when it changes, so a login the primary completes serves on
every worker at once. Like every credential of the gateway they are write-only to
clients: no route answers their contents; only the plugins (trusted in-process code,
as in CPA) read them, through `host.auth.*` and the `StorageJSON` of their calls.

An executor call carries a record of its plugin's provider key when one exists (the
records not cooling down, chosen by a scheduler plugin or the built-in round robin, see
`scheduler`; none: the call goes without, as before). When the plugin answers a call
with `http_status` 429 the record cools down for `COOLDOWN_429` s, with 401 or 403 for
`COOLDOWN_AUTH` s (counted per process), and the call is tried once more on another
record before any answer byte was sent. A cool-down ends early when the record's file
changes (a refresh or a new login wrote it).

A record may carry `next_refresh_after` (RFC 3339, from the plugin's `NextRefreshAfter`)
and `last_refresh`: the refresher (`refresh`) renews it through `auth.refresh` once that
time has passed.

Login (spec §5.2): `/v0/management/<provider>-auth-url` calls `auth.login.start` on the
plugin whose `auth.identifier` is that provider and answers its URL and state;
`/v0/management/get-auth-status?state=` calls `auth.login.poll` and, on `success`,
saves the record(s) it returns.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from aogstream.host.native import gojson as gj

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")

AUTH_DIR = "native-auths"
COOLDOWN_429 = 60.0
COOLDOWN_AUTH = 30 * 60.0
LOGIN_TTL = 15 * 60.0  # a login state not polled to an end is forgotten after this
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,120}\.json$")
ZERO_TIME = "0001-01-01T00:00:00Z"
FRESH_NS = 50_000_000  # a folder changed this recently (ns) is read again on the next look


class AuthError(ValueError):
    """A record that cannot be saved or found (the message says why)."""


@attrs.frozen
class AuthRecord:
    """One auth file."""

    name: str  # file name, e.g. "c-auth-1.json"; its stem is the record's ID
    provider: str
    raw: bytes  # the file's JSON, as stored
    data: dict[str, Any]
    size: int
    modtime: float

    @property
    def id(self) -> str:
        return self.name.removesuffix(".json")

    @property
    def disabled(self) -> bool:
        return self.data.get("disabled") is True

    @property
    def priority(self) -> int:
        value = self.data.get("priority", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def next_refresh(self) -> float | None:
        """When the record wants `auth.refresh` (wall clock), None: never."""
        value = self.data.get("next_refresh_after")
        return parse_time(value) if isinstance(value, str) else None


def parse_time(value: str) -> float | None:
    """A Go `time.Time` as JSON writes it (RFC 3339, up to nanoseconds) as a wall-clock
    timestamp; None for the zero time or text that is no time."""
    value = value.strip()
    if not value or value.startswith("0001-01-01"):
        return None
    m = _TIME_RE.match(value)
    if m is None:
        return None
    frac = (m["frac"] or "")[:6]
    zone = "+00:00" if m["zone"] in ("Z", "z") else m["zone"]
    try:
        dt = datetime.fromisoformat(f"{m['base']}{'.' + frac if frac else ''}{zone}")
    except ValueError:
        return None
    return dt.timestamp()


_TIME_RE = re.compile(r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?"
                      r"(?P<zone>[Zz]|[+-]\d\d:\d\d)$")


def auth_name(name: str) -> str:
    """A record's file name as CPA accepts it: a plain name ending in .json."""
    if not _NAME_RE.match(name) or ".." in name:
        raise AuthError(f"auth file name {name!r} must be a plain file name ending in "
                        f".json (letters, digits, . _ @ + -)")
    return name


class AuthStore:
    """The records of one data directory, re-read when the folder changes."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / AUTH_DIR
        self._lock = threading.Lock()
        self._stamp: int | None = -1
        self._records: dict[str, AuthRecord] = {}
        # record name → (monotonic time it serves again, the file it was refused with)
        self._cool: dict[str, tuple[float, bytes]] = {}
        self._turn = itertools.count()
        # the primary: it runs the scheduled refreshes and shares per-auth models
        self.primary = False
        # told of a record refused with 401 (the refresher renews it, module `refresh`)
        self.on_unauthorized: Callable[[AuthRecord], None] | None = None

    def records(self) -> dict[str, AuthRecord]:
        """Every record by file name (sorted by name, case-insensitively)."""
        try:
            stamp: int | None = self.dir.stat().st_mtime_ns
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return self._records
        found: dict[str, AuthRecord] = {}
        if stamp is not None:
            for path in sorted(self.dir.glob("*.json"), key=lambda p: p.name.lower()):
                try:
                    raw = path.read_bytes()
                    st = path.stat()
                    data = json.loads(raw)
                except (OSError, ValueError) as exc:
                    log.warning("native auth file %s is unreadable: %s", path.name, exc)
                    continue
                if isinstance(data, dict):
                    found[path.name] = AuthRecord(path.name, str(data.get("type") or ""),
                                                  raw, data, st.st_size, st.st_mtime)
        if stamp is not None and time.time_ns() - stamp < FRESH_NS:
            # a write in the same clock tick would not change the folder's mtime: a
            # stamp this fresh is not trusted, the next look reads the folder again
            stamp = -2
        with self._lock:
            self._stamp, self._records = stamp, found
        return found

    def get(self, index: str) -> AuthRecord:
        rec = self.records().get(index) or self.records().get(f"{index}.json")
        if rec is None:
            raise AuthError(f"no auth file {index!r}")
        return rec

    def save(self, name: str, data: dict[str, Any]) -> AuthRecord:
        """Write a record (0600, atomically: a reader never sees half a file)."""
        name = auth_name(name)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        raw = json.dumps(data, ensure_ascii=False, indent=2).encode()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".part")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, self.dir / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        rec = self.records().get(name)
        if rec is None:
            raise AuthError(f"auth file {name} was not saved")
        return rec

    # ---- choosing a credential ---------------------------------------------------------

    def usable(self, provider: str, tried: Collection[str] = (),
               allowed: Collection[str] | None = None) -> list[AuthRecord]:
        """The records of `provider` that are enabled, not cooling down, not in `tried`
        and (when given) in `allowed`, by name."""
        if not provider:
            return []
        return [r for r in self.records().values()
                if r.provider.lower() == provider and not r.disabled
                and r.name not in tried and (allowed is None or r.name in allowed)
                and not self.cooling(r)]

    def round_robin(self, candidates: list[AuthRecord]) -> AuthRecord | None:
        """The built-in `round-robin` policy."""
        return candidates[next(self._turn) % len(candidates)] if candidates else None

    @staticmethod
    def fill_first(candidates: list[AuthRecord]) -> AuthRecord | None:
        """The built-in `fill-first` policy: the highest `priority`, then the first
        name, until it is refused."""
        return min(candidates, key=lambda r: (-r.priority, r.name.lower()), default=None)

    def pick(self, provider: str, tried: Collection[str] = (),
             allowed: Collection[str] | None = None) -> AuthRecord | None:
        """The next usable record of `provider` (round robin); None when there is none."""
        return self.round_robin(self.usable(provider, tried, allowed))

    def has(self, provider: str, allowed: Collection[str] | None = None) -> bool:
        return any(r.provider.lower() == provider and (allowed is None or r.name in allowed)
                   for r in self.records().values())

    def cool_down(self, rec: AuthRecord, status: int) -> float:
        """A record its plugin refused with `status`: out of rotation for a while
        (0 when the status says nothing about the credential)."""
        seconds = COOLDOWN_429 if status == 429 else \
            COOLDOWN_AUTH if status in (401, 403) else 0.0
        if seconds:
            self._cool[rec.name] = (time.monotonic() + seconds, rec.raw)
            log.warning("native auth %s (%s) answered %d: out of rotation for %d s",
                        rec.id, rec.provider, status, seconds)
        if status == 401 and self.on_unauthorized is not None:
            self.on_unauthorized(rec)
        return seconds

    def cooling(self, rec: AuthRecord) -> float:
        """Seconds the record is still out of rotation (0 once its file changed)."""
        until, raw = self._cool.get(rec.name, (0.0, b""))
        if raw != rec.raw:
            return 0.0
        return max(0.0, until - time.monotonic())

    # ---- what plugins see -----------------------------------------------------------------

    def executor_fields(self, rec: AuthRecord | None) -> dict[str, Any]:
        """`AuthID`, `StorageJSON`, `AuthMetadata`, `AuthAttributes` of a call."""
        if rec is None:
            return {"AuthID": "", "StorageJSON": None, "AuthMetadata": None,
                    "AuthAttributes": None}
        # compact, as Go marshals a record (plugins read it by plain text search)
        return {"AuthID": rec.id, "StorageJSON": gj.dumps(gj.go_value(rec.data)),
                "AuthMetadata": gj.go_value(rec.data),
                "AuthAttributes": gj.GoMap({"path": str(self.dir / rec.name)})}

    def entry(self, rec: AuthRecord) -> dict[str, Any]:
        """`HostAuthFileEntry` (snake_case, every field)."""
        modtime = _time(rec.modtime)
        cool = self.cooling(rec)
        return {
            "id": rec.id, "auth_index": rec.id, "name": rec.name, "type": rec.provider,
            "provider": rec.provider, "label": str(rec.data.get("label") or ""),
            "status": "cooling" if cool else ("disabled" if rec.disabled else "active"),
            "status_message": "", "disabled": rec.disabled, "unavailable": bool(cool),
            "runtime_only": False, "source": "file", "path": str(self.dir / rec.name),
            "size": rec.size, "modtime": modtime, "updated_at": modtime,
            "created_at": modtime,
            "last_refresh": str(rec.data.get("last_refresh") or ZERO_TIME),
            "next_retry_after": _time(time.time() + cool) if cool else ZERO_TIME,
            "email": str(rec.data.get("email") or ""),
            "project_id": str(rec.data.get("project_id") or ""),
            "account_type": "", "account": "", "priority": 0, "note": "",
            "websockets": False, "success": 0, "failed": 0, "recent_requests": None}

    def callback(self, method: str, req: dict[str, Any]) -> dict[str, Any]:
        """`host.auth.list`, `get`, `get_runtime`, `save`."""
        if method == "host.auth.list":
            return {"files": [self.entry(r) for r in self.records().values()]}
        if method in ("host.auth.get", "host.auth.get_runtime"):
            rec = self.get(gj.text(req, "auth_index"))
            if method == "host.auth.get_runtime":
                return {"auth": self.entry(rec)}
            return {"auth_index": rec.id, "name": rec.name, "path": str(self.dir / rec.name),
                    "json": gj.RawJSON(rec.raw)}
        if method == "host.auth.save":
            data = gj.field(req, "json")
            if not isinstance(data, dict):
                raise AuthError("host.auth.save: json must be a JSON object")
            rec = self.save(gj.text(req, "name"), data)
            return {"name": rec.name, "path": str(self.dir / rec.name)}
        raise AuthError(f"unsupported host callback {method}")

    def save_auth(self, auth: Any, provider: str, default_name: str = "") -> AuthRecord:
        """A plugin's `AuthData` (from a login poll or `auth.parse`) as a record: its
        `StorageJSON` object (else its `Metadata`), with `type` set to the provider and
        its `NextRefreshAfter` kept; named by its `FileName`, else `default_name`, else
        its `ID`."""
        data = auth_data(auth, provider)
        name = gj.text(auth, "FileName") or default_name or \
            f"{gj.text(auth, 'ID') or f'{data['type']}-{int(time.time() * 1000)}'}.json"
        if not name.endswith(".json"):
            name += ".json"
        return self.save(Path(name).name, data)

    def update_auth(self, rec: AuthRecord, auth: Any, next_refresh: str = "",
                    refreshed: bool = False) -> AuthRecord | None:
        """`rec` with a plugin's new `AuthData` (an `AuthUpdate` or a refresh): the
        fields the plugin left empty are taken from the old record; saved under the
        same name. None when nothing changed (the file is not written again)."""
        data = auth_data(auth, rec.provider, rec.data)
        when = next_refresh if parse_time(next_refresh or "") is not None else \
            gj.text(auth, "NextRefreshAfter")
        if parse_time(when or "") is not None:
            data["next_refresh_after"] = when
        else:
            data.pop("next_refresh_after", None)
        if refreshed:
            data["last_refresh"] = _time(time.time())
        elif "last_refresh" in rec.data:
            data["last_refresh"] = rec.data["last_refresh"]
        if data == rec.data:
            return None
        return self.save(rec.name, data)


# keys of a record the host keeps when a plugin's new `StorageJSON` lacks them
_HOST_KEYS = ("type", "label", "disabled", "priority", "prefix", "proxy_url")


def auth_data(auth: Any, provider: str, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """An `AuthData` as the JSON of its record file: its `StorageJSON` object, else its
    `Metadata`, else (with `old`) the old record's; `type`, `label` and the host's keys
    from the plugin's fields when set, else from `old`."""
    storage = gj.data(auth, "StorageJSON")
    data: Any = None
    if storage:
        try:
            data = json.loads(storage)
        except ValueError:
            data = None
    if not isinstance(data, dict) or not data:
        meta = gj.field(auth, "Metadata")
        data = dict(meta) if isinstance(meta, dict) and meta else None
    out: dict[str, Any]
    if data is None:
        out = dict(old) if old is not None else {}
    else:
        out = dict(data)
        for key in _HOST_KEYS:
            if old is not None and key in old and key not in out:
                out[key] = old[key]
    out["type"] = (gj.text(auth, "Provider") or provider).lower()
    if gj.text(auth, "Label"):
        out["label"] = gj.text(auth, "Label")
    if gj.boolean(auth, "Disabled"):
        out["disabled"] = True
    when = gj.text(auth, "NextRefreshAfter")
    if old is None and parse_time(when) is not None:
        out["next_refresh_after"] = when
    return out


def redact(message: str, rec: AuthRecord) -> str:
    """`message` without any string value of the record (a plugin's error may quote
    the credential it was given; logs never carry one)."""
    secrets: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str) and len(v) >= 6:
            secrets.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk({k: v for k, v in rec.data.items() if k not in ("type", "label")})
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "[redacted]")
    return message


def _time(ts: float) -> str:
    from aogstream.host.native.hooks import rfc3339

    return rfc3339(ts)


@attrs.define
class Login:
    plugin: str
    provider: str
    metadata: Any
    expires: float


class AuthLogins:
    """Logins under way (in the process that serves the management API)."""

    def __init__(self) -> None:
        self._logins: dict[str, Login] = {}

    async def start(self, plugin: NativePlugin, provider: str, base_url: str,
                    host: dict[str, Any]) -> dict[str, Any]:
        scope = plugin.host.open_scope(plugin.id, "login")
        try:
            reply = await plugin.call("auth.login.start", {
                "Provider": provider, "BaseURL": base_url, "Host": host, "Metadata": None,
                "host_callback_id": scope.id})
        finally:
            plugin.host.close_scope(scope)
        state = gj.text(reply, "State")
        if not state:
            raise AuthError(f"native plugin {plugin.id} started a login without a state")
        now = time.monotonic()
        for key in [k for k, v in self._logins.items() if v.expires < now]:
            del self._logins[key]
        self._logins[state] = Login(plugin.id, provider, gj.field(reply, "Metadata"),
                                    now + LOGIN_TTL)
        return {"status": "ok", "url": gj.text(reply, "URL"), "state": state}

    def login(self, state: str) -> Login | None:
        found = self._logins.get(state)
        return found if found is not None and found.expires >= time.monotonic() else None

    async def poll(self, plugin: NativePlugin, state: str, host: dict[str, Any],
                   store: AuthStore) -> dict[str, Any]:
        login = self._logins[state]
        scope = plugin.host.open_scope(plugin.id, "login")
        try:
            reply = await plugin.call("auth.login.poll", {
                "Provider": login.provider, "State": state, "Host": host,
                "Metadata": login.metadata, "host_callback_id": scope.id})
        finally:
            plugin.host.close_scope(scope)
        status = gj.text(reply, "Status").lower()
        if status == "success":
            del self._logins[state]
            auths = gj.field(reply, "Auths") or []
            if not auths and isinstance(gj.field(reply, "Auth"), dict):
                auths = [gj.field(reply, "Auth")]
            saved = [store.save_auth(a, login.provider).id for a in auths
                     if isinstance(a, dict)]
            log.info("native plugin %s: login for %s saved auth %s", plugin.id,
                     login.provider, ", ".join(saved) or "none")
            return {"status": "ok"}
        if status == "error":
            del self._logins[state]
            return {"status": "error", "error": gj.text(reply, "Message") or "login failed"}
        return {"status": "wait"}
