"""framecache feature store: ragged, self-describing, crash-safe HDF5 shards."""
from featstore.config import LAYOUT_KEYS, StoreConfig, diff_configs, feature_diffs, fingerprint
from featstore.compact import compact
from featstore.errors import StoreError
from featstore.format import FORMAT_VERSION, ItemMeta, VideoRecord
from featstore.reader import Loaded, Store, open_store
from featstore.writer import ConfigMismatch, StoreWriter
from featstore.integrity import BadShard, DiskFull, ForeignShard
from featstore.verify import VerifyReport, verify_store

__all__ = ["FORMAT_VERSION", "LAYOUT_KEYS", "BadShard", "ConfigMismatch", "DiskFull", "ForeignShard", "ItemMeta",
           "Loaded", "Store", "StoreConfig", "StoreError", "StoreWriter", "VerifyReport", "VideoRecord", "compact",
           "diff_configs", "feature_diffs", "fingerprint", "open_store", "verify_store"]
