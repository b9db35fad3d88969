"""Choosing the credential of an executor call: `scheduler.pick` (spec §2.2, §3.2).

The candidates are the plugin's records of its provider that are enabled, not cooling
down, not yet tried for this request, and (for a model `model.for_auth` bound to some
records, module `auth_models`) bound to the model. With no scheduler plugin the
built-in round robin picks. Otherwise only the highest-priority running plugin that
declares `scheduler` is asked (single slot; ties by plugin ID), with the candidates'
`ID`, `Provider`, `Priority`, `Status`, `Attributes` and `Metadata`:

- `AuthID` naming a candidate (by record ID or file name) picks it;
- `DelegateBuiltin` `round-robin` or `fill-first` picks by that built-in policy
  (fill-first: the highest `priority`, then the first name);
- not `Handled`, or an `AuthID` that names no candidate: the built-in round robin
  (an unknown ID is logged and ignored, as in CPA);
- an error rejects the pick: the request fails with the scheduler's `http_status`
  (else 502) and a message naming the scheduler plugin; no credential is used.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from aogstream import errors
from aogstream.host.native import gojson as gj
from aogstream.host.native.auths import AuthRecord, AuthStore

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")


def scheduler_of(plugins: Iterable[NativePlugin]) -> NativePlugin | None:
    """The one scheduler plugin consulted: the highest priority, then the lowest ID."""
    found = [p for p in plugins
             if p.state == "running" and gj.boolean(p.capabilities, "scheduler")]
    return min(found, key=lambda p: (-p.priority, p.id), default=None)


def _candidate(store: AuthStore, rec: AuthRecord) -> dict[str, Any]:
    return {"ID": rec.id, "Provider": rec.provider, "Priority": rec.priority,
            "Status": "active", "Attributes": gj.GoMap({"path": str(store.dir / rec.name)}),
            "Metadata": gj.go_value(rec.data)}


async def pick(store: AuthStore, plugin: NativePlugin, plugins: Iterable[NativePlugin],
               model: str, stream: bool, headers: dict[str, list[str]],
               tried: Collection[str] = (),
               allowed: Collection[str] | None = None) -> AuthRecord | None:
    """The record this call carries (see the module docstring); None when no record is
    usable. Raises `GatewayError` when the scheduler plugin rejects the pick."""
    key = plugin.auth_key
    candidates = store.usable(key, tried, allowed)
    if not candidates:
        return None
    sched = scheduler_of(plugins)
    if sched is None:
        return store.round_robin(candidates)
    from aogstream.host.native.plugin import metadata_object, plugin_error

    try:
        reply = await sched.call_raw("scheduler.pick", {
            "Plugin": metadata_object(sched.metadata), "Provider": key, "Providers": [key],
            "Model": model, "Stream": stream,
            "Options": {"Headers": gj.header_map(headers), "Metadata": None},
            "Candidates": [_candidate(store, r) for r in candidates]})
    except Exception as exc:  # noqa: BLE001 - any failure rejects the pick
        err = plugin_error(sched.id, "scheduler.pick", exc)
        given = isinstance(exc, gj.EnvelopeError) and 400 <= exc.http_status < 600
        raise errors.GatewayError(err.bcode if given else errors.PLUGIN_SERVICE_ERROR, (
            f"the scheduler plugin {sched.id} rejected choosing a credential of "
            f"provider {key}: {err.message.removeprefix(f'native plugin {sched.id}: ')}"
        )) from None
    if not gj.boolean(reply, "Handled"):
        return store.round_robin(candidates)
    want = gj.text(reply, "AuthID").strip()
    if want:
        chosen = next((r for r in candidates if want in (r.id, r.name)), None)
        if chosen is not None:
            return chosen
        log.warning("native plugin %s: scheduler.pick named auth %r, which is not a "
                    "candidate; the built-in scheduler picks", sched.id, want)
        return store.round_robin(candidates)
    policy = gj.text(reply, "DelegateBuiltin").strip().lower()
    if policy == "fill-first":
        return store.fill_first(candidates)
    return store.round_robin(candidates)
