"""Renewing native plugins' credentials: `auth.refresh` off the request path (spec §2.2).

One task per serving process (`AuthRefresher.run`, under the native plugins'
background nursery, cancelled when the gateway stops) looks at the auth records about
once a second and refreshes, each in its own child task:

- in the primary, every record whose `next_refresh_after` has passed (scheduled
  refreshes happen in one process only);
- in any process, a record its plugin refused with 401 (`kick`, called by the auth
  store's cool-down): the call that got the 401 has already moved on to the next
  credential; this refresh runs beside it, never making the client wait. The refused
  record stays out of rotation until its file changes (the refresh wrote it) or its
  cool-down ends.

A refresh calls `auth.refresh` on the plugin whose provider the record belongs to
(`AuthID`, `AuthProvider`, `StorageJSON`, `Metadata`, `Attributes`, `Host`, and a
callback scope) and saves the `Auth` it answers over the record, the fields it left
empty taken from the old record, with its `NextRefreshAfter` (none: no further
scheduled refresh) and `last_refresh`. Only one process refreshes a record at a time
(a lock file beside it), and a record whose file changed since it was chosen is left
alone (someone else renewed it), so a rotating refresh token is never spent twice.

A failure is logged with the record's ID, never its contents (the plugin's message is
stripped of every value of the record), and tried again after a back-off that doubles
from `BACKOFF_FIRST` to `BACKOFF_MAX` seconds. A plugin that answers `unknown_method`
does not renew credentials: the record is left alone (a scheduled one is asked again
after `BACKOFF_MAX`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from aogstream.host.native import gojson as gj
from aogstream.host.native.auths import AuthRecord, AuthStore, redact

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")

TICK = 1.0  # seconds between looks at the records (a 401 wakes the task at once)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


class AuthRefresher:
    """The refresher of one process (see the module docstring)."""

    def __init__(self, store: AuthStore, plugins: Callable[[], list[NativePlugin]],
                 scheduled: Callable[[], bool]) -> None:
        """`plugins`: the loaded plugins; `scheduled`: whether this process runs the
        scheduled refreshes (the primary)."""
        self.store = store
        self.plugins = plugins
        self.scheduled = scheduled
        self._kicked: dict[str, bytes] = {}  # record name → the file that got a 401
        self._backoff: dict[str, tuple[float, float]] = {}  # name → (next try, delay)
        self._busy: set[str] = set()
        self._wake = trio.Event()

    def kick(self, rec: AuthRecord) -> None:
        """A record was refused with 401: refresh it soon (from the trio thread)."""
        if rec.name not in self._kicked:
            self._kicked[rec.name] = rec.raw
            self._backoff.pop(rec.name, None)
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    self._start_due(nursery)
                except Exception:  # never let one bad record stop the task
                    log.exception("native auth refresher")
                with trio.move_on_after(TICK):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _start_due(self, nursery: trio.Nursery) -> None:
        now, mono = time.time(), time.monotonic()
        scheduled = self.scheduled()
        records = self.store.records()
        for name in [n for n, raw in self._kicked.items()
                     if n not in records or records[n].raw != raw]:
            del self._kicked[name]  # gone or renewed meanwhile
        for plugin in self.plugins():
            key = plugin.auth_key
            if plugin.state != "running" or not key or \
                    not gj.boolean(plugin.capabilities, "auth_provider"):
                continue
            for name, rec in records.items():
                if rec.provider.lower() != key or rec.disabled or name in self._busy:
                    continue
                if name not in self._kicked:
                    due = rec.next_refresh
                    if not scheduled or due is None or due > now:
                        continue
                if self._backoff.get(name, (0.0, 0.0))[0] > mono:
                    continue
                self._busy.add(name)
                nursery.start_soon(self._refresh, plugin, rec)

    async def _refresh(self, plugin: NativePlugin, rec: AuthRecord) -> None:
        lock = self.store.dir / f".refresh-{rec.name}.lock"
        fd = -1
        try:
            fd = await trio.to_thread.run_sync(_try_lock, str(lock))
            if fd < 0:
                return  # another process is renewing it
            current = self.store.records().get(rec.name)
            if current is None or current.raw != rec.raw:
                self._kicked.pop(rec.name, None)
                return  # renewed or removed since it was chosen
            await self._call(plugin, rec)
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock
            self._busy.discard(rec.name)

    async def _call(self, plugin: NativePlugin, rec: AuthRecord) -> None:
        from aogstream.host.native.plugin import HOST_SUMMARY

        scope = plugin.host.open_scope(plugin.id, uuid.uuid4().hex[:16])
        try:
            reply = await plugin.call_raw("auth.refresh", {
                "AuthID": rec.id, "AuthProvider": plugin.auth_key,
                "StorageJSON": gj.dumps(gj.go_value(rec.data)),
                "Metadata": gj.go_value(rec.data),
                "Attributes": gj.GoMap({"path": str(self.store.dir / rec.name)}),
                "Host": HOST_SUMMARY, "host_callback_id": scope.id})
            auth = gj.field(reply, "Auth")
            if auth is not None and not isinstance(auth, dict):
                raise gj.ReplyError("Auth must be an object")
            saved = await trio.to_thread.run_sync(
                lambda: self.store.update_auth(rec, auth or {},
                                               gj.text(reply, "NextRefreshAfter"),
                                               refreshed=True))
        except gj.EnvelopeError as exc:
            if exc.code != "unknown_method":
                self._failed(rec, exc)
                return
            # a plugin that does not renew credentials: its records are left alone
            self._backoff[rec.name] = (time.monotonic() + BACKOFF_MAX, BACKOFF_MAX)
            self._kicked.pop(rec.name, None)
            log.info("native plugin %s does not implement auth.refresh; auth %s is not "
                     "renewed", plugin.id, rec.id)
            return
        except Exception as exc:  # noqa: BLE001 - a failed refresh: logged, tried again
            self._failed(rec, exc)
            return
        finally:
            plugin.host.close_scope(scope)
        self._backoff.pop(rec.name, None)
        self._kicked.pop(rec.name, None)
        after = saved.data.get("next_refresh_after") if saved is not None else None
        log.info("native auth %s (%s) refreshed by native plugin %s; next refresh %s",
                 rec.id, rec.provider, plugin.id, after or "not scheduled")

    def _failed(self, rec: AuthRecord, exc: Exception) -> None:
        """A failed refresh: logged without the credential, tried again later."""
        _, delay = self._backoff.get(rec.name, (0.0, 0.0))
        delay = min(BACKOFF_MAX, delay * 2) if delay else BACKOFF_FIRST
        self._backoff[rec.name] = (time.monotonic() + delay, delay)
        log.warning("native auth %s (%s): auth.refresh failed: %s; trying again in %g s",
                    rec.id, rec.provider, redact(str(exc), rec), delay)


def _try_lock(path: str) -> int:
    """An fd holding an exclusive lock on `path`, or -1 when another holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("native auth refresh: cannot open its lock file (%s)", exc.strerror)
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd
