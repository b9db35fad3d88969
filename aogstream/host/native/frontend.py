"""Frontend auth by native plugins (`frontend_auth_provider`): who may call the
service routes.

When a running plugin declares `frontend_auth_provider`, every client request to a
service route (AOG's services, the OpenAI/Ollama/flavor doors) must pass: its method,
path, headers, query and body go to `frontend_auth.authenticate`, and the first
plugin (priority, then ID) that answers `Authenticated: true` lets it through (an error
or `false` is "not handled": the next plugin decides). A client API key of
`AOGSTREAM_API_KEYS` (or the management key) passes as well, unless a plugin declares
`frontend_auth_provider_exclusive`: then the highest-priority such plugin alone decides
(tie → lowest ID), as in CPA. With no such plugin nothing changes.

Enabling one is an operator decision with a big effect (a plugin that says yes to
everything opens the gateway to anyone that reaches it): the load is logged as a
warning and the plugin list says so. The request guard (`http.guard`) calls `check`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aogstream.host.native import gojson as gj
from aogstream.host.native.abi import CallError

if TYPE_CHECKING:
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")


class FrontendAuth:
    """The frontend-auth plugins of one gateway process, as the guard sees them."""

    def __init__(self, plugins: Callable[[], Iterable[NativePlugin]]) -> None:
        self._plugins = plugins

    def providers(self) -> tuple[list[NativePlugin], bool]:
        """The plugins that decide, in order, and whether one is exclusive (then it is
        the only one and client API keys no longer pass by themselves)."""
        found = sorted((p for p in self._plugins() if p.state == "running" and
                        gj.boolean(p.capabilities, "frontend_auth_provider")),
                       key=lambda p: (-p.priority, p.id))
        exclusive = [p for p in found
                     if gj.boolean(p.capabilities, "frontend_auth_provider_exclusive")]
        return (exclusive[:1], True) if exclusive else (found, False)

    async def authenticate(self, plugins: list[NativePlugin], method: str, path: str,
                           headers: list[tuple[bytes, bytes]], query: bytes,
                           body: bytes | None) -> str | None:
        """The ID of the plugin that accepted the request, else None."""
        header_map: dict[str, list[str]] = {}
        for k, v in headers:
            header_map.setdefault(_canonical(k.decode("latin-1")), []).append(
                v.decode("latin-1"))
        query_map: dict[str, list[str]] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            query_map.setdefault(name, []).append(value)
        request = {"Method": method, "Path": path, "Headers": gj.GoMap(header_map) or None,
                   "Query": gj.GoMap(query_map) or None, "Body": body}
        for plugin in plugins:
            try:
                reply = await plugin.call_raw("frontend_auth.authenticate", request)
            except (CallError, gj.ReplyError, gj.EnvelopeError) as exc:
                log.warning("native plugin %s: frontend_auth.authenticate failed (not "
                            "handled): %s", plugin.id, exc)
                continue
            if gj.boolean(reply, "Authenticated"):
                log.debug("native plugin %s authenticated %s %s as %r", plugin.id, method,
                          path, gj.text(reply, "Principal"))
                return plugin.id
        return None


def _canonical(name: str) -> str:
    """Go's canonical header key (`x-api-key` → `X-Api-Key`)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
