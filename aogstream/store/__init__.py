"""Persistent state: services, service providers, models, plugin switches.

`Store` is the one small interface the gateway uses (a later deployment may put several
gateways on PostgreSQL); `SQLiteStore` is the embedded default, one file in the data
directory. Rows follow AOG's entities and naming (`aog_service`, `aog_service_provider`,
`aog_model`; providers `<source>_<flavor>_<service>`, plugin rows
`<type>_<plugin>_<service>`).
"""

from aogstream.store.base import (
    HYBRID_POLICIES,
    SERVICES,
    ModelRow,
    ProviderRow,
    Service,
    Store,
    now,
)
from aogstream.store.sqlite import SQLiteStore

__all__ = ["HYBRID_POLICIES", "SERVICES", "ModelRow", "ProviderRow", "SQLiteStore", "Service",
           "Store", "now"]
