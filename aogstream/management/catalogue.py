"""The model catalogue: every model the loaded plugins offer, with its state here, for
`/model/recommend` and `/model/support`.

Why apart from the pulls: it only reads (plugin manifests and the model rows), and what
AOG reads from a bundled JSON catalogue comes here from the plugins themselves.
"""

from __future__ import annotations

import math
from typing import Any

from aogstream.errors import MODEL_BAD, GatewayError
from aogstream.management.shared import GatewayAccess
from aogstream.store.base import ModelStatus


def human_size(size: int) -> str:
    """A size as the catalogue shows it (`1.5 GB`; empty when unknown)."""
    if size <= 0:
        return ""
    units = ["B", "KB", "MB", "GB", "TB"]
    i = min(int(math.log(size, 1024)), len(units) - 1)
    return f"{size / 1024 ** i:.1f} {units[i]}"


class ModelCatalogue(GatewayAccess):
    """The models on offer, as recommendations and as a searchable, paged list."""

    async def catalogue(self) -> list[dict[str, Any]]:
        """Every model the loaded plugins offer (their manifests), with its state here."""
        held = {(r.provider_name, r.model_name): r
                for r in await self.db(self.store.models)}
        out = []
        for plugin in self.gw.plugins.values():
            for item in plugin.manifest.support_model_list():
                d = item.to_dict()
                row = held.get((item.service_provider_name, item.name))
                d["status"] = row.status if row is not None else ""
                d["size"] = human_size(row.size) if row is not None else ""
                d["is_recommended"] = item.is_default == "true"
                d["can_select"] = row is not None and row.status == ModelStatus.DOWNLOADED
                out.append(d)
        return out

    async def recommend(self) -> dict[str, list[dict[str, Any]]]:
        """The models plugins recommend (their services' defaults), by service."""
        out: dict[str, list[dict[str, Any]]] = {}
        for d in await self.catalogue():
            if d["is_recommended"]:
                out.setdefault(d["service_name"], []).append(d)
        return out

    async def support(self, service_name: str = "", flavor: str = "", service_source: str = "",
                      search_name: str = "", page: int = 1, page_size: int = 10
                      ) -> dict[str, Any]:
        if page < 1:
            raise GatewayError(MODEL_BAD, f"page must be 1 or more, got {page}")
        if not 1 <= page_size <= 1000:
            raise GatewayError(MODEL_BAD, f"page_size must be 1..1000, got {page_size}")
        items = [d for d in await self.catalogue()
                 if (not service_name or d["service_name"] == service_name)
                 and (not flavor or flavor in (d["flavor"], d["api_flavor"]))
                 and (not service_source or d["source"] == service_source)
                 and (not search_name or search_name.lower() in d["name"].lower())]
        total = len(items)
        start = (page - 1) * page_size
        return {"data": items[start:start + page_size], "page": page, "page_size": page_size,
                "total": total, "total_page": math.ceil(total / page_size)}
