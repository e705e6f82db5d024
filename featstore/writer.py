"""Writing a store: `claim_store` makes a directory a store and takes a shard prefix's lock; `StoreWriter` creates
or adopts the header (refusing other settings) and appends finished items as immutable shards."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from featstore.config import StoreConfig
from featstore.errors import StoreError
from featstore.format import (FORMAT_VERSION, HEADER, OWN_NAME_RE, SHARD_RE, VideoRecord, is_store_file,
                              write_shard)
from featstore.header import link_header, load_header
from featstore.integrity import Header
from featstore.locks import WriterLock
from featstore.staging import clean_stale


class ConfigMismatch(StoreError):
    """Appending to a store that was made with a different extraction config."""


def claim_store(path: Path, prefix: str, force: bool = False) -> WriterLock:
    """Check that `path` may become or is a store, create it, and take the lock of shards `prefix`.

    Cheap and first: extract calls it before loading a model, so a refusal costs nothing."""
    path = Path(path)
    if path.is_file():
        if is_store_file(path):
            raise StoreError(f"{path} is a compacted store file; extract into a store directory instead")
        raise StoreError(f"{path} is a file, not a store directory: give --store a new directory or a store")
    if path.is_dir() and not (path / HEADER).exists() and any(SHARD_RE.match(p.name) for p in path.iterdir()):
        load_header(path)  # a store that lost its header: rebuilt from its shards, never re-embedded
    if path.is_dir() and not (path / HEADER).exists() and not force:
        other = sorted(p.name for p in path.iterdir() if not OWN_NAME_RE.match(p.name))
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            raise StoreError(f"{path} is a non-empty directory that is not a framecache store (it holds {shown}): "
                             "give --store a new or empty directory, or pass --force to make this one a store")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create store directory {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise StoreError(f"store directory {path} is not writable")
    return WriterLock(path, prefix, created)


class StoreWriter:
    """Appends finished items to a store as immutable shards; one writer per prefix at a time.

    `flush_videos`/`flush_seconds` bound what a crash can lose: the records not yet in a shard.
    """

    def __init__(self, path: str | Path, config: StoreConfig | Mapping[str, Any], fingerprint_keys: Iterable[str],
                 dim: int, prefix: str = "p0", flush_videos: int = 32, flush_seconds: float = 60.0,
                 dtype: str = "float16", compression: str | None = None, lock: WriterLock | None = None,
                 force: bool = False):
        """`config`: what the store records (a mapping is read as a `config` attribute: StoreConfig.from_attrs).
        `lock`: taken beforehand with `claim_store` (extract does, before loading its model); the writer
        releases it. `force`: make a non-empty directory that is not a store into one."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
            raise StoreError(f"shard prefix {prefix!r} must be letters, digits or _")
        self.path = Path(path)
        self.dim, self.prefix = dim, prefix
        self.keys = sorted(fingerprint_keys)
        # The store owns its layout: a new store is written in FORMAT_VERSION, an old one goes on in its own.
        self.format = FORMAT_VERSION
        config = config if isinstance(config, StoreConfig) else StoreConfig.from_attrs(config)
        self.config = config.with_extra(format=self.format)
        self.fp = self.config.fingerprint(self.keys)
        self.flush_videos, self.flush_seconds = flush_videos, flush_seconds
        self.dtype, self.compression = dtype, compression
        self._pending: list[VideoRecord] = []
        self._last_flush = time.monotonic()
        self._lock = lock if lock is not None else claim_store(self.path, prefix, force)
        try:
            self._create_or_check()
        except BaseException:
            self._lock.release()
            raise
        for stale in self.path.glob(f".{prefix}-*.h5*.tmp"):  # left by a killed writer of this prefix
            stale.unlink()
        clean_stale(self.path, HEADER)  # left by a writer killed while it created the store
        self._seq = 1 + max((int(m["seq"]) for p in self.path.iterdir()
                             if (m := SHARD_RE.match(p.name)) and m["prefix"] == prefix), default=-1)

    def _create_or_check(self) -> None:
        header = self.path / HEADER
        if not header.exists() and not any(SHARD_RE.match(p.name) for p in self.path.iterdir()):
            link_header(self.path, Header(self.config, self.fp, self.keys, self.dim, self.format))
        old, _ = load_header(self.path)  # a lost or damaged header is rebuilt from the shards
        self.format = old.format
        self._adopt(old.config, old.fingerprint, old.keys)

    def _adopt(self, old: StoreConfig, old_fp: str, old_keys: list[str]) -> None:
        """Append under the store's own fingerprint, format and key set, if this run's settings are the same.

        Compared over the keys of both: a setting this code knows but the store predates counts only when
        this run sets it (the store has it unset), so adding a config key never breaks an old store's resume."""
        self.config = self.config.with_extra(format=self.format)
        diffs = old.diff(self.config, sorted(set(old_keys) | set(self.keys)))
        if not diffs and self.config.fingerprint(old_keys) != old_fp:
            diffs = ["fingerprint keys differ"]
        if diffs:
            raise ConfigMismatch(f"store {self.path} was extracted with other settings ("
                                 + "; ".join(diffs) + "): use another --store or the same settings")
        self.fp, self.keys = old_fp, sorted(old_keys)

    def _release_lock(self) -> None:
        self._lock.release()

    def add(self, record: VideoRecord) -> None:
        self._pending.append(record)
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if len(self._pending) >= self.flush_videos or due:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            name = f"{self.prefix}-{self._seq:06d}.h5"
            write_shard(self.path / name, self._pending, self.config, self.fp, self.keys, self.dim,
                        self.dtype, self.compression, fmt=self.format)
            self._seq += 1
            self._pending = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is pending and release the lock."""
        try:
            self.flush()
        finally:
            self._release_lock()

    def abort(self) -> None:
        """Release the lock without writing what is pending (after a write failed: a rerun redoes it)."""
        self._pending = []
        self._release_lock()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
