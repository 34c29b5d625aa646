"""
Several balancers sharing one registry through etcd: lbtwist's own etcd
client (L{EtcdClient}) and the registry kept in step with the store.

Nothing here is imported unless a configuration has a C{cluster:} block.
"""

from ._etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    Event,
    KeyValue,
    Lease,
    RangeResult,
    TxnResult,
    Unavailable,
    WatchEnded,
    WatchStream,
    deleteOperation,
    modRevisionIs,
    putOperation,
    tlsPolicy,
)
from ._registry import (
    Conflict,
    Identity,
    Registry,
    RegistrySync,
    SnapshotFile,
    StoreUnavailable,
    defaultName,
)

__all__ = [
    "Conflict", "Identity", "Registry", "RegistrySync", "SnapshotFile", "StoreUnavailable",
    "defaultName", "tlsPolicy",
    "Compacted", "EtcdClient", "EtcdError", "Event", "KeyValue", "Lease", "RangeResult",
    "TxnResult", "Unavailable", "WatchEnded", "WatchStream", "deleteOperation",
    "modRevisionIs", "putOperation",
]
