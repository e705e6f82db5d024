"""Metadata updates: new labels, groups or splits for items already in a store, without re-embedding.

Shards are immutable, so an update is a small file of its own, `STORE/_meta.<seq>.h5` (id + the changed columns, a
checksum of them and the store's fingerprint), written under a temp name and linked into place atomically. `Store`
applies the updates in sequence order after reading the shards, so every reader (and `compact`) sees the newest
values; the shards keep what extract wrote. A damaged update is refused by name (`BadOverlay`), never half-applied.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featstore.atomic import fsync_path, remove_stale_temps, temp_path
from featstore.errors import StoreError
from featstore.format import read_header
from featstore.integrity import DIGEST_ATTR, column_digests, describe_open_error, describe_read_error

META_COLUMNS = ("label", "group", "split")  # what a manifest may change for an item already embedded
META_RE = re.compile(r"^_meta\.(?P<seq>\d{6})\.h5$")
_STR = h5py.string_dtype("utf-8")
# An update file's datasets: the id, and per column its new value and whether this update sets it.
_DTYPES: dict[str, object] = {"video_id": "str", **{k: v for col in META_COLUMNS
                                                    for k, v in ((col, "str"), (f"{col}_set", np.bool_))}}


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
    columns = {"video_id": [c.video_id for c in changes]}
    for col in META_COLUMNS:  # `<col>_set` False: this update leaves that column of that item alone
        columns[col] = [c.after.get(col, "") for c in changes]
        columns[f"{col}_set"] = [col in c.after for c in changes]
    remove_stale_temps(store_path / "_meta.h5")  # left by a killed update
    tmp = temp_path(store_path / "_meta.h5")
    try:
        with h5py.File(tmp, "w") as f:
            for name, values in columns.items():
                dtype = _DTYPES[name]
                f.create_dataset(name, data=np.array(values, dtype=object if dtype == "str" else dtype),
                                 dtype=_STR if dtype == "str" else dtype)
            f.attrs[DIGEST_ATTR] = column_digests(columns, _DTYPES)  # found again by verify and every reader
            f.attrs["fingerprint"] = read_header(store_path).fingerprint  # whose update it is
        fsync_path(tmp)
        while True:  # the next free sequence number; link fails if a concurrent update took it
            seq = 1 + max((int(m["seq"]) for p in store_path.iterdir() if (m := META_RE.match(p.name))), default=0)
            try:
                os.link(tmp, store_path / f"_meta.{seq:06d}.h5")
                return store_path / f"_meta.{seq:06d}.h5"
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)


class BadOverlay(StoreError):
    """A metadata update file (`_meta.*.h5`) that cannot be trusted: damaged, truncated or another store's."""

    def __init__(self, file: Path, problem: str):
        self.file, self.problem = Path(file), problem
        store = self.file.parent
        super().__init__(f"metadata update {self.file}: {problem}; run `cli.py verify {store} --repair` to move it "
                         f"aside, then rerun `cli.py extract MANIFEST --store {store} --update-meta` to record the "
                         "manifest's labels, groups and splits again")

    def __reduce__(self):
        return type(self), (self.file, self.problem)


def list_overlays(store_path: Path) -> list[Path]:
    """The metadata update files of a store directory, in the order they apply."""
    return sorted(p for p in store_path.iterdir() if META_RE.match(p.name)) if store_path.is_dir() else []


def read_overlay(file: Path, fingerprint: str) -> dict[str, list]:
    """The columns of one update file, after checking it opens, is whole and is the store's; else BadOverlay."""
    try:
        f = h5py.File(file, "r")
    except OSError as e:
        raise BadOverlay(file, describe_open_error(e)) from None
    with f:
        fp = f.attrs.get("fingerprint")  # updates written before it existed have none
        if fp is not None and str(fp) != fingerprint:
            raise BadOverlay(file, "belongs to another store (its fingerprint is not this store's)")
        columns = {}
        for name in _DTYPES:
            try:
                columns[name] = [v.decode() if isinstance(v, bytes) else v for v in f[name][()]]
            except KeyError:
                raise BadOverlay(file, f"has no {name} dataset (not a framecache metadata update)") from None
            except OSError as e:
                raise BadOverlay(file, describe_read_error(name, e)) from None
        recorded = f.attrs.get(DIGEST_ATTR)  # updates written before checksums existed have none
    if len({len(v) for v in columns.values()}) > 1:
        raise BadOverlay(file, "has columns of different lengths")
    if recorded is not None and str(recorded) != column_digests(columns, _DTYPES):
        raise BadOverlay(file, "checksum mismatch (its bytes changed after it was written)")
    return columns


def read_meta_updates(store_path: str | Path, fingerprint: str) -> dict[str, dict]:
    """id -> {column: newest value} over every update of a store directory (a compacted file has them built in)."""
    merged: dict[str, dict] = {}
    for file in list_overlays(Path(store_path)):
        columns = read_overlay(file, fingerprint)
        for col in META_COLUMNS:
            for vid, value, on in zip(columns["video_id"], columns[col], columns[f"{col}_set"]):
                if on:
                    merged.setdefault(vid, {})[col] = value
    return merged
