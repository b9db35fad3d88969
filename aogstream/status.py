"""What is true right now of a provider, a service and a model: the `state` and `reason`
fields of the management answers.

Why not only the stored numbers: AOG's stored `status` is what an install call left
behind (a service is -1 "not installed" until `POST /service/install`, a provider is
1 "available" from the moment its row exists, a cloud model is "downloaded" as soon as
its provider is). Under aogstream plugins serve from the moment they run, keys can be
missing, and a plugin can be down, so those numbers alone say things that are false.
The stored numbers are kept where they are true, corrected where they are not (a
service that answers is not "not installed"; a provider that cannot serve is not
"healthy"), and every answer also says, in words, which of these holds and why:

* `serving`       - a running plugin answers for it (and it has a key if it needs one);
* `needs a key`   - it needs credentials nobody has set (and how to set them);
* `down`          - its plugin is not loaded, disabled, stopped, restarting or failed;
* `not installed` - (services only) no provider offers the service.
"""

from __future__ import annotations

from typing import Any

from aogstream import SPEC_VERSION
from aogstream.gateway import Gateway
from aogstream.invocation import PluginState
from aogstream.store import ModelRow, ProviderRow, Service
from aogstream.store.base import SERVICE_AVAILABLE, SERVICE_NOT_INSTALLED, ModelStatus

SERVING, NEEDS_KEY, DOWN, NOT_INSTALLED = "serving", "needs a key", "down", "not installed"
PROVIDER_HEALTHY, PROVIDER_UNHEALTHY = 1, 0


def provider_state(gw: Gateway, row: ProviderRow) -> tuple[str, str]:
    """(state, reason) of one provider row."""
    plugin = gw.plugins.get(row.flavor)
    if plugin is None:
        return DOWN, (f"no loaded plugin is named {row.flavor!r} (its api_flavor); load or "
                      "install that plugin")
    if not gw.routable(plugin.name):
        return DOWN, f"plugin {plugin.name} is disabled; POST /aog/{SPEC_VERSION}/plugin/enable"
    if plugin.state != PluginState.RUNNING:
        why = f": {plugin.last_error}" if plugin.last_error else ""
        return DOWN, f"plugin {plugin.name} is {plugin.state}{why}"
    if row.auth_type not in ("", "none") and not row.auth_key:
        return NEEDS_KEY, (f"{row.auth_type} credentials are not set; PUT /aog/{SPEC_VERSION}/"
                           f"service_provider with provider_name {row.provider_name} and "
                           "auth_key (or `aogstream install ... --auth-key`)")
    return SERVING, f"plugin {plugin.name} is running"


def provider_public(gw: Gateway, row: ProviderRow) -> dict[str, Any]:
    """The provider's API item, with a status that says whether it can serve."""
    item = row.public()
    state, reason = provider_state(gw, row)
    item["status"] = PROVIDER_HEALTHY if state == SERVING else PROVIDER_UNHEALTHY
    item["state"], item["reason"] = state, reason
    return item


def service_public(gw: Gateway, svc: Service, providers: list[ProviderRow]) -> dict[str, Any]:
    """The service's API item: status 1 (available) when a provider serves it now, -1
    when nothing offers it; `state`/`reason` say which provider serves or why none does."""
    item = svc.public()
    mine = [p for p in providers if p.service_name == svc.service_name]
    # AOG's older service fields, which AOG's Node SDK still requires in its schema
    for source in ("local", "remote"):
        item[f"{source}_provider"] = next(
            (p.provider_name for p in mine if p.service_source == source), "")
    states = [(p, *provider_state(gw, p)) for p in mine]
    serving = [p.provider_name for p, s, _ in states if s == SERVING]
    if serving:
        item["status"] = SERVICE_AVAILABLE
        item["state"], item["reason"] = SERVING, f"served by {', '.join(serving)}"
    elif not mine:
        item["status"] = SERVICE_NOT_INSTALLED
        item["state"], item["reason"] = NOT_INSTALLED, "no plugin or provider offers it"
    else:
        keyless = [(p, r) for p, s, r in states if s == NEEDS_KEY]
        p, reason = keyless[0] if keyless else (states[0][0], states[0][2])
        item["state"] = NEEDS_KEY if keyless else DOWN
        item["reason"] = f"{p.provider_name}: {reason}"
    return item


def model_public(gw: Gateway, row: ModelRow, providers: dict[str, ProviderRow]) -> dict[str, Any]:
    """The model's API item; `state` says whether a request for it would be served now
    (a cloud model is "downloaded" as AOG has it, but not usable without a key)."""
    item = row.public()
    provider = providers.get(row.provider_name)
    if row.status != ModelStatus.DOWNLOADED:
        item["state"], item["reason"] = row.status, ""
    elif provider is None:
        item["state"], item["reason"] = DOWN, f"provider {row.provider_name} no longer exists"
    else:
        item["state"], item["reason"] = provider_state(gw, provider)
    return item
