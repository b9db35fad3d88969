"""Importing an auth file through the plugins' `auth.parse` (spec §2.2, §3.2), and a
raw HTTP call with a stored credential through `executor.http_request`.

`import_auth` takes a file a client uploads (CPA's `POST /v0/management/auth-files`):
the running auth-provider plugins are asked `auth.parse` (`Provider`, `Path`,
`FileName`, `RawJSON`, `Host`) in priority order (then by ID). With a provider given
(the upload's `provider`, else the file's own `type`) only the plugin whose
`auth.identifier` (or provider key) is that provider is asked; with none, the first
plugin answering `Handled` wins. Its `Auths`, when non-empty, are saved, else its
`Auth`; each as a 0600 record (the upload's name when the plugin names none). A file
no plugin handles is saved as it is when it already says its provider in `type` (it
is a record), and refused otherwise. A plugin's error counts as "not handled" and is
logged without the file's contents.

`import_dropped` does the same for a file without a `type` dropped into the auth folder
(the primary looks when the folder changes, and at start): a plugin that handles it
turns it into records (a single one keeps the file's name, replacing it; with several
the file is kept beside them as `<name>.imported`); a file no plugin takes is left
unused and logged once.

`http_request` sends one request through the executor of the plugin that owns a
record, with that record's credential (`AuthID`, `StorageJSON`, `Metadata`,
`Attributes`): the plugin makes the call (it knows how its provider authenticates),
the host answers its `StatusCode` (0 means 200), `Headers` and `Body`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aogstream.host.native import gojson as gj
from aogstream.host.native.auths import AuthError, AuthRecord, AuthStore, auth_name

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")


def auth_plugins(plugins: Iterable[NativePlugin], provider: str = "") -> list[NativePlugin]:
    """The running auth providers (of `provider` when given), by priority then ID."""
    found = [p for p in plugins if p.state == "running"
             and gj.boolean(p.capabilities, "auth_provider")
             and (not provider or provider in (p.auth_identifier, p.auth_key))]
    return sorted(found, key=lambda p: (-p.priority, p.id))


async def import_auth(plugins: Iterable[NativePlugin], store: AuthStore, name: str,
                      raw: bytes, provider: str = "") -> list[AuthRecord]:
    """Save an uploaded auth file as record(s) (see the module docstring); raises
    `AuthError` with what was wrong."""
    from aogstream.host.native.plugin import HOST_SUMMARY

    name = auth_name(name)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthError("the auth file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise AuthError("the auth file must be a JSON object")
    given = provider.strip().lower()
    typed = doc.get("type")
    want = given or (typed.strip().lower() if isinstance(typed, str) else "")
    for plugin in auth_plugins(plugins, want):
        try:
            reply = await plugin.call_raw("auth.parse", {
                "Provider": want, "Path": str(store.dir / name), "FileName": name,
                "RawJSON": raw, "Host": HOST_SUMMARY})
        except Exception as exc:  # noqa: BLE001 - an error is "not handled"
            log.warning("native plugin %s: auth.parse of %s failed: %s", plugin.id, name,
                        getattr(exc, "message", type(exc).__name__))
            continue
        if not gj.boolean(reply, "Handled"):
            continue
        auths = [a for a in gj.field(reply, "Auths", []) or [] if isinstance(a, dict)]
        if not auths and isinstance(gj.field(reply, "Auth"), dict):
            auths = [gj.field(reply, "Auth")]
        if not auths:
            raise AuthError(f"native plugin {plugin.id} recognized the file but returned "
                            f"no credential")
        saved = [store.save_auth(a, plugin.auth_key or want,
                                 default_name=name if len(auths) == 1 else "")
                 for a in auths]
        log.info("native plugin %s parsed auth file %s into %s", plugin.id, name,
                 ", ".join(r.id for r in saved))
        return saved
    if isinstance(typed, str) and typed.strip() and not given:
        return [store.save(name, doc)]  # already a record of its provider
    if want:
        raise AuthError(f"no running auth provider {want!r} took the file; check the "
                        f"provider name, or that its plugin is enabled")
    raise AuthError("no auth provider recognized the file; name its provider with "
                    "?provider=<name>, or give it a \"type\"")


async def import_dropped(plugins: Iterable[NativePlugin], store: AuthStore,
                         tried: dict[str, bytes]) -> bool:
    """Parse the untyped files of the auth folder not yet tried as they are now
    (`tried`: name → the contents tried); True when records were saved."""
    saved = False
    for name, rec in list(store.records().items()):
        if rec.provider or tried.get(name) == rec.raw:
            continue
        tried[name] = rec.raw
        try:
            made = await import_auth(plugins, store, name, rec.raw)
        except AuthError as exc:
            log.warning("auth file %s has no \"type\" and was not imported (%s); it is "
                        "not used", name, exc)
            continue
        except OSError as exc:
            log.error("auth file %s: its records were not saved (%s)", name, exc.strerror)
            continue
        saved = True
        if name not in {r.name for r in made}:
            try:
                (store.dir / name).rename(store.dir / f"{name}.imported")
            except OSError as exc:
                log.warning("auth file %s was imported but not renamed (%s)", name,
                            exc.strerror)
    return saved


async def http_request(plugin: NativePlugin, store: AuthStore, rec: AuthRecord,
                       method: str, url: str, headers: dict[str, list[str]],
                       body: bytes | None) -> tuple[int, dict[str, list[str]], bytes]:
    """`executor.http_request` with `rec`'s credential: (status, headers, body).
    Raises what `NativePlugin.call_raw` raises, or `gj.ReplyError`."""
    scope = plugin.host.open_scope(plugin.id, uuid.uuid4().hex[:16])
    try:
        reply = await plugin.call_raw("executor.http_request", {
            "AuthID": rec.id, "AuthProvider": plugin.auth_key, "Method": method,
            "URL": url, "Headers": gj.header_map(headers), "Body": body,
            "StorageJSON": gj.dumps(gj.go_value(rec.data)),
            "Metadata": gj.go_value(rec.data),
            "Attributes": gj.GoMap({"path": str(store.dir / rec.name)}),
            "host_callback_id": scope.id})
    finally:
        plugin.host.close_scope(scope)
    status = gj.integer(reply, "StatusCode") or 200
    if not 100 <= status <= 599:
        raise gj.ReplyError(f"StatusCode {status} is not an HTTP status")
    out: dict[str, list[str]] = {}
    raw_headers: Any = gj.field(reply, "Headers") or {}
    if isinstance(raw_headers, dict):
        for k, vs in raw_headers.items():
            out[str(k)] = [v for v in (vs if isinstance(vs, list) else [vs])
                           if isinstance(v, str)]
    return status, out, gj.data(reply, "Body")


def executor_of(plugins: Iterable[NativePlugin], rec: AuthRecord) -> NativePlugin | None:
    """The running plugin whose executor serves `rec`'s provider (priority, then ID)."""
    found = [p for p in plugins if p.state == "running"
             and gj.boolean(p.capabilities, "executor") and p.auth_key
             and p.auth_key == rec.provider.lower()]
    return min(found, key=lambda p: (-p.priority, p.id), default=None)
