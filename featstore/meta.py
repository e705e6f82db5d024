"""Metadata updates: new labels, groups or splits for items already in a store, without re-embedding.

Shards are immutable, so an update is a small file of its own, `STORE/_meta.<seq>.h5` (id + the changed columns),
written under a temp name and linked into place atomically. `Store` applies the updates in sequence order after
reading the shards, so every reader (and `compact`) sees the newest values; the shards keep what extract wrote.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featstore.staging import clean_stale, temp_name

META_COLUMNS = ("label", "group", "split")  # what a manifest may change for an item already embedded
META_RE = re.compile(r"^_meta\.(?P<seq>\d{6})\.h5$")
_STR = h5py.string_dtype("utf-8")


@dataclass
class MetaChange:
    """One item whose manifest values differ from the store's."""
    video_id: str
    before: dict  # column -> value in the store
    after: dict   # column -> value in the manifest

    def describe(self) -> str:
        return f"{self.video_id}: " + ", ".join(f"{k} {self.before[k]!r} -> {self.after[k]!r}" for k in self.after)


def diff_meta(store, wanted: dict[str, dict]) -> list[MetaChange]:
    """Items of `store` whose label/group/split differ from `wanted` (id -> {column: value}); ids not in it skipped."""
    changes = []
    for vid in store.ids(status=None):
        new = wanted.get(vid)
        if new is None:
            continue
        old = store.meta(vid)
        differ = {k: new[k] for k in META_COLUMNS if k in new and new[k] != getattr(old, k)}
        if differ:
            changes.append(MetaChange(vid, {k: getattr(old, k) for k in differ}, differ))
    return changes


def write_meta_update(store_path: str | Path, changes: list[MetaChange]) -> Path | None:
    """Record `changes` as the store's next metadata update; returns its file (None when there is nothing)."""
    if not changes:
        return None
    store_path = Path(store_path)
    clean_stale(store_path, "_meta")  # left by updates that were killed
    tmp = store_path / temp_name("_meta")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("video_id", data=np.array([c.video_id for c in changes], dtype=object), dtype=_STR)
            for col in META_COLUMNS:  # `<col>_set` False: this update leaves that column of that item alone
                values = np.array([c.after.get(col, "") for c in changes], dtype=object)
                f.create_dataset(col, data=values, dtype=_STR)
                f.create_dataset(f"{col}_set", data=np.array([col in c.after for c in changes], dtype=bool))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        while True:  # the next free sequence number; link fails if a concurrent update took it
            seq = 1 + max((int(m["seq"]) for p in store_path.iterdir() if (m := META_RE.match(p.name))), default=0)
            try:
                os.link(tmp, store_path / f"_meta.{seq:06d}.h5")
                return store_path / f"_meta.{seq:06d}.h5"
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)


def read_meta_updates(store_path: str | Path) -> dict[str, dict]:
    """id -> {column: newest value} over every update of a store directory (a compacted file has them built in)."""
    path = Path(store_path)
    if not path.is_dir():
        return {}
    merged: dict[str, dict] = {}
    for file in sorted(p for p in path.iterdir() if META_RE.match(p.name)):
        with h5py.File(file, "r") as f:
            ids = [v.decode() if isinstance(v, bytes) else v for v in f["video_id"][()]]
            for col in META_COLUMNS:
                values, has = f[col][()], f[f"{col}_set"][()]
                for vid, value, on in zip(ids, values, has):
                    if on:
                        merged.setdefault(vid, {})[col] = value.decode() if isinstance(value, bytes) else value
    return merged
