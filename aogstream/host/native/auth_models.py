"""Per-auth model discovery: `model.for_auth` (spec §2.2, §6).

A model provider may serve other models for each account: for every auth record of
its provider the host asks `model.for_auth` (unless the executor's
`executor_model_scope` is `static`), and the models it answers become routable bound
to that record: a request naming one is served only with the records that listed it
(a model `model.static` also lists is served with any record). A non-empty
`AuthUpdate` in the answer updates the stored record (the fields it leaves empty are
kept). Scope `oauth` skips `model.static`: the plugin's models are the per-auth ones
only.

Discovery runs when the plugin loads or is reconfigured, and again for a record when
its file is saved, refreshed or removed (`rediscover`, driven by the loader whenever
the auth folder changes); a record whose file did not change is not asked again.
What a plugin answers for one record is kept on the plugin (`auth_models`). The primary
asks and writes the answers beside the records (`.for-auth-<plugin id>.models`: per
record, a hash of its file and its models); a worker takes the answer for a record whose
file is unchanged from there and asks its own copy of the plugin only for the others,
so a record change costs the plugin one `model.for_auth`, not one per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aogstream.host.native import gojson as gj
from aogstream.host.native.auths import ZERO_TIME, AuthError, AuthStore, redact

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")


def scope(plugin: NativePlugin) -> str:
    """`executor_model_scope`: `both` (the default, and for unknown values), `static`
    or `oauth`."""
    value = gj.text(plugin.capabilities, "executor_model_scope").strip().lower()
    return value if value in ("static", "oauth") else "both"


def wants_auth_models(plugin: NativePlugin) -> bool:
    return gj.boolean(plugin.capabilities, "model_provider") and scope(plugin) != "static"


def merged_models(plugin: NativePlugin) -> list[str]:
    """The static models, then each record's (by record name), without repeats."""
    out = list(plugin.static_models)
    for name in sorted(plugin.auth_models):
        out.extend(m for m in plugin.auth_models[name] if m not in out)
    return out


def auths_for(plugin: NativePlugin, model: str) -> set[str] | None:
    """The record names a request for `model` may use: None (any record) for a static
    model or one no record listed; else the records that listed it."""
    if model in plugin.static_models:
        return None
    bound = {name for name, models in plugin.auth_models.items() if model in models}
    return bound or None


def _non_empty(update: Any) -> bool:
    if not isinstance(update, dict):
        return False
    return any(v not in (None, "", False, 0, ZERO_TIME) and v != {} and v != []
               for v in update.values())


def _shared_path(plugin: NativePlugin, store: AuthStore) -> Path:
    return store.dir / f".for-auth-{plugin.id}.models"


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _read_shared(plugin: NativePlugin, store: AuthStore) -> dict[str, Any]:
    """The primary's answers: record name → {"sha": ..., "models": [...]}."""
    try:
        doc = json.loads(_shared_path(plugin, store).read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_shared(plugin: NativePlugin, store: AuthStore) -> None:
    doc = {name: {"sha": _digest(plugin.auth_seen[name]), "models": models}
           for name, models in sorted(plugin.auth_models.items())
           if name in plugin.auth_seen}
    path = _shared_path(plugin, store)
    try:
        if path.exists() and json.loads(path.read_bytes()) == doc:
            return
    except (OSError, ValueError):
        pass
    try:
        store.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store.dir, prefix=".tmp-", suffix=".part")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("native plugin %s: per-auth models not shared with the workers "
                    "(%s); each asks the plugin itself", plugin.id, exc.strerror)


async def rediscover(plugin: NativePlugin, store: AuthStore, *, every: bool = False) -> bool:
    """Ask `model.for_auth` for each record of the plugin's provider whose file is new
    or changed since it was last asked (all of them with `every`), forget the models
    of records that are gone, and set `plugin.models`. True when the models or their
    binding to records changed."""
    from aogstream.host.native.plugin import HOST_SUMMARY, metadata_object

    if plugin.state not in ("running", "stopped") or not wants_auth_models(plugin):
        return False
    key = plugin.auth_key
    records = {name: rec for name, rec in store.records().items()
               if key and rec.provider.lower() == key and not rec.disabled}
    before = {k: list(v) for k, v in plugin.auth_models.items()}
    for name in [n for n in plugin.auth_models if n not in records]:
        del plugin.auth_models[name]
        plugin.auth_seen.pop(name, None)
    meta = metadata_object(plugin.metadata)
    shared = _read_shared(plugin, store) if not store.primary else {}
    for name, rec in records.items():
        if not every and plugin.auth_seen.get(name) == rec.raw:
            continue
        plugin.auth_seen[name] = rec.raw
        known = shared.get(name)
        if isinstance(known, dict) and known.get("sha") == _digest(rec.raw) and \
                isinstance(known.get("models"), list):
            plugin.auth_models[name] = [str(m) for m in known["models"]]
            continue
        hscope = plugin.host.open_scope(plugin.id, uuid.uuid4().hex[:16])
        try:
            reply = await plugin.call_raw("model.for_auth", {
                "Plugin": meta, "AuthID": rec.id, "AuthProvider": key,
                "StorageJSON": gj.dumps(gj.go_value(rec.data)),
                "Metadata": gj.go_value(rec.data),
                "Attributes": gj.GoMap({"path": str(store.dir / rec.name)}),
                "Host": HOST_SUMMARY, "host_callback_id": hscope.id})
        except Exception as exc:  # noqa: BLE001 - a plugin's failure: that record lists none
            log.error("native plugin %s: model.for_auth for auth %s failed: %s", plugin.id,
                      rec.id, redact(str(exc), rec))
            plugin.auth_models.pop(name, None)
            continue
        finally:
            plugin.host.close_scope(hscope)
        names: list[str] = []
        for info in gj.field(reply, "Models", []) or []:
            model = gj.text(info, "ID") or gj.text(info, "Name")
            if model and model not in names:
                names.append(model)
        plugin.auth_models[name] = names
        update = gj.field(reply, "AuthUpdate")
        if _non_empty(update):
            try:
                saved = store.update_auth(rec, update)
            except (AuthError, OSError) as exc:
                log.error("native plugin %s: the AuthUpdate of auth %s was not saved: %s",
                          plugin.id, rec.id, exc)
            else:
                if saved is not None:
                    plugin.auth_seen[name] = saved.raw  # its own write: not asked again
                    log.info("native plugin %s: auth %s updated by model.for_auth",
                             plugin.id, rec.id)
    plugin.models = merged_models(plugin)
    if store.primary:
        _write_shared(plugin, store)
    changed = before != plugin.auth_models
    if changed:
        log.info("native plugin %s: per-auth models %s", plugin.id, ", ".join(
            f"{n.removesuffix('.json')}={'/'.join(ms) or '-'}"
            for n, ms in sorted(plugin.auth_models.items())) or "none")
    return changed
