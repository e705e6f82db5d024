"""framecache feature store: ragged, self-describing, crash-safe HDF5 shards."""
from featstore.store import (
    FORMAT_VERSION,
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

__all__ = ["FORMAT_VERSION", "ConfigMismatch", "Loaded", "Store", "StoreError", "StoreWriter", "VideoRecord", "compact",
           "diff_configs", "fingerprint", "open_store"]
