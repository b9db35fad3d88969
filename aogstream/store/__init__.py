"""Persistent state: services, service providers, models, plugin switches.

`Store` is the one small interface the gateway uses (a later deployment may put several
gateways on PostgreSQL); `SQLiteStore` is the embedded default, one file in the data
directory. Rows follow AOG's entities and naming (`aog_service`, `aog_service_provider`,
`aog_model`; providers `<source>_<flavor>_<service>`, plugin rows
`<type>_<plugin>_<service>`). `PostgresStore` (`store.postgres`) puts several gateway
hosts on one database; `open_store` picks the one the configuration names.
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
from aogstream.store.factory import open_store
from aogstream.store.sqlite import SQLiteStore, StoreError

__all__ = ["HYBRID_POLICIES", "SERVICES", "ModelRow", "ProviderRow", "SQLiteStore", "Service",
           "Store", "StoreError", "now", "open_store"]
