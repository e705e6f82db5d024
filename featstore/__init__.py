"""framecache feature store: ragged, self-describing, crash-safe HDF5 shards."""
from featstore.store import (
    ConfigMismatch,
    Loaded,
    Store,
    StoreError,
    StoreWriter,
    VideoRecord,
    compact,
    diff_configs,
    fingerprint,
    open_store,
)

__all__ = ["ConfigMismatch", "Loaded", "Store", "StoreError", "StoreWriter", "VideoRecord", "compact",
           "diff_configs", "fingerprint", "open_store"]
