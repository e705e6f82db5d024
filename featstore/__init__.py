"""framecache feature store: ragged, self-describing, crash-safe HDF5 shards."""
from featstore.config import LAYOUT_KEYS, StoreConfig, diff_configs, feature_diffs, fingerprint
from featstore.store import (
    FORMAT_VERSION,
    ConfigMismatch,
    Loaded,
    Store,
    StoreError,
    StoreWriter,
    VideoRecord,
    compact,
    open_store,
)
from featstore.integrity import BadShard, DiskFull, ForeignShard
from featstore.verify import VerifyReport, verify_store

__all__ = ["FORMAT_VERSION", "LAYOUT_KEYS", "BadShard", "ConfigMismatch", "DiskFull", "ForeignShard", "Loaded", "Store",
           "StoreConfig", "StoreError", "StoreWriter", "VerifyReport", "VideoRecord", "compact", "diff_configs",
           "feature_diffs", "fingerprint", "open_store", "verify_store"]
