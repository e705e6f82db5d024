"""framecache feature store: ragged, self-describing, crash-safe HDF5 shards."""
from featstore.store import (
    FORMAT_VERSION,
    LAYOUT_KEYS,
    ConfigMismatch,
    Loaded,
    Store,
    StoreError,
    StoreWriter,
    VideoRecord,
    compact,
    diff_configs,
    feature_diffs,
    fingerprint,
    open_store,
)
from featstore.integrity import BadShard, DiskFull, ForeignShard
from featstore.verify import VerifyReport, verify_store

__all__ = ["FORMAT_VERSION", "LAYOUT_KEYS", "BadShard", "ConfigMismatch", "DiskFull", "ForeignShard", "Loaded", "Store", "StoreError",
           "StoreWriter", "VerifyReport", "VideoRecord", "compact", "diff_configs", "feature_diffs", "fingerprint", "open_store",
           "verify_store"]
