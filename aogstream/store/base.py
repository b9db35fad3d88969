"""The store's entities and interface.

Entities mirror AOG's tables so exported `.aog` files and API bodies line up:
a Service (one per AOG service name, with its hybrid policy), Providers (who can serve
a service: a plugin, or a flavor + URL; credentials in `auth_key`, which no read API
ever returns), and Models (which provider has which model, downloaded or not, and which
is the default). Plugin switches (enabled/disabled) live beside them.
"""

from __future__ import annotations

import enum
import time
from typing import Any, Protocol

import attrs

# AOG's services, seeded at first start (text-to-image and the video/image edits are
# cloud-first in AOG, hence their policy).
SERVICES: dict[str, str] = {
    "chat": "default", "models": "default", "embed": "default", "rerank": "default",
    "generate": "default", "text-to-image": "always_remote", "speech-to-text": "default",
    "speech-to-text-ws": "default", "text-to-speech": "default",
    "image-to-video": "always_remote", "image-to-image": "always_remote",
}
HYBRID_POLICIES = ("default", "always_local", "always_remote")
SOURCES = ("local", "remote")
AUTH_TYPES = ("none", "apikey", "token", "sign", "oauth")
SCOPES = ("system", "custom", "plugin")


class ModelStatus(enum.StrEnum):
    """A model row's `status`: a pull in flight, a model the provider has (a cloud model
    from the moment its provider lists it), or a pull that ended in an error."""

    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    FAILED = "failed"


# Service status, as AOG: -1 not installed, 0 ready, 1 available, 2 creating.
SERVICE_NOT_INSTALLED, SERVICE_READY, SERVICE_AVAILABLE, SERVICE_CREATING = -1, 0, 1, 2


def now() -> str:
    """Timestamps are UTC RFC 3339 (AOG stored local CST strings; UTC sorts and travels)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@attrs.define
class Service:
    service_name: str
    hybrid_policy: str = "default"
    status: int = SERVICE_NOT_INSTALLED
    avatar: str = ""
    created_at: str = attrs.Factory(now)
    updated_at: str = attrs.Factory(now)

    def public(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class ProviderRow:
    """A service provider as AOG stores it (`aog_service_provider`): which plugin or
    flavor serves a service, from where, with which credentials. Routing reads these
    rows; what then serves the call is an `invocation.Provider`."""

    provider_name: str
    service_name: str
    service_source: str = "local"  # local | remote
    flavor: str = ""  # a built-in flavor or a plugin name
    desc: str = ""
    method: str = "POST"
    url: str = ""
    auth_type: str = "none"
    auth_key: str = ""  # JSON credentials; write-only through the API
    protocol: str = "HTTP"
    extra_headers: str = "{}"
    extra_json_body: str = "{}"
    properties: str = "{}"
    models: list[str] = attrs.Factory(list)
    status: int = 1
    scope: str = "custom"  # system | custom | plugin
    created_at: str = attrs.Factory(now)
    updated_at: str = attrs.Factory(now)

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the credentials (and whether they are set)."""
        d = attrs.asdict(self)
        d.pop("auth_key")
        d["has_auth_key"] = bool(self.auth_key)
        return d

    @property
    def is_plugin(self) -> bool:
        return self.scope == "plugin"


@attrs.define
class ModelRow:
    model_name: str
    provider_name: str
    service_name: str
    service_source: str = "local"
    status: str = ModelStatus.DOWNLOADED
    is_default: bool = False
    size: int = 0
    avatar: str = ""
    created_at: str = attrs.Factory(now)
    updated_at: str = attrs.Factory(now)

    def public(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Store(Protocol):
    """What the gateway needs from persistence. Every write is durable when it returns.

    A store shared by several gateway hosts (`store.postgres`) also has
    `wait_change(timeout) -> bool`, which returns True when another host wrote; the
    gateway's primary then rebuilds its routing table (`Gateway._follow_store`)."""

    def close(self) -> None: ...

    # services
    def services(self) -> list[Service]: ...
    def get_service(self, name: str) -> Service | None: ...
    def put_service(self, service: Service) -> None: ...

    # providers
    def providers(self, *, service_name: str = "", service_source: str = "",
                  provider_name: str = "", flavor: str = "") -> list[ProviderRow]: ...
    def get_provider(self, provider_name: str) -> ProviderRow | None: ...
    def put_provider(self, provider: ProviderRow) -> None: ...
    def delete_provider(self, provider_name: str) -> bool: ...

    # models
    def models(self, *, provider_name: str = "", model_name: str = "",
               service_name: str = "") -> list[ModelRow]: ...
    def put_model(self, model: ModelRow) -> None: ...
    def delete_model(self, provider_name: str, model_name: str) -> bool: ...

    # plugin switches
    def plugin_enabled(self, name: str) -> bool: ...
    def set_plugin_enabled(self, name: str, enabled: bool) -> None: ...
