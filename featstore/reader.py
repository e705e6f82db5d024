"""Reading a store: `Store` indexes every shard's per-video columns on open (each shard checked by
featstore.integrity), resolves ids written twice, and reads features lazily through a bounded set of HDF5 handles."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.format import HEADER, OPTIONAL_COLUMNS, SPAN_COLUMNS, VIDEO_COLUMNS, ItemMeta, no_store, shard_files
from featstore.header import load_header, shard_headers
from featstore.integrity import BadShard, ForeignShard, describe_open_error, describe_read_error, read_shard_index
from featstore.meta import read_meta_updates

MAX_OPEN_SHARDS = 64  # HDF5 handles a reader keeps open at once (file descriptors are limited)


def _refuse(path: Path, bad: list[BadShard], shards: int) -> StoreError:
    if len(bad) == shards > 1 and all(isinstance(b, ForeignShard) for b in bad) and len(shard_headers(path)) == 1:
        return StoreError(f"store header {path / HEADER} matches none of its {shards} shards, which agree with each "
                          f"other (was it replaced?): run `cli.py verify {path} --repair` to rebuild it from them")
    if len(bad) == 1:
        return bad[0]
    listed = "; ".join(f"{b.shard.name}: {b.problem}" for b in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    return StoreError(f"{len(bad)} shards of {path} cannot be used ({listed}): `cli.py verify {path}` lists them, "
                      "`--quarantine` moves them aside, then rerun extract to redo their videos")


@dataclass
class _Entry:
    shard: int       # index into Store._files
    row: int         # row in that shard's per-video columns
    meta: dict


class Store:
    """Read access to a store directory or a compacted `.h5` file.

    Every item (ok or failed) is described by `meta(id)`; features exist for ok items only.
    When an id was written twice (a retried failure), the ok record wins, then the newest.
    HDF5 handles open lazily per process, so a Store can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise no_store(self.path)
        self._files = shard_files(self.path)
        self.header, _ = load_header(self.path)  # a lost or damaged header is rebuilt from the shards
        h = self.header
        self.config, self.fingerprint, self.fingerprint_keys, self.dim = h.config, h.fingerprint, h.keys, h.dim
        self.format = h.format
        self._entries: dict[str, _Entry] = {}
        self._order: list[str] = []
        bad: list[BadShard] = []
        for i, f in enumerate(self._files):
            try:
                self._index_shard(i, f)
            except BadShard as e:  # every bad shard is named, not just the first
                bad.append(e)
        if bad:
            raise _refuse(self.path, bad, len(self._files))
        # extract --update-meta: newer labels/splits (a damaged update is refused by name)
        for vid, changes in read_meta_updates(self.path, self.fingerprint).items():
            if vid in self._entries:
                self._entries[vid].meta.update(changes)
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    # -- opening --------------------------------------------------------------
    def _index_shard(self, i: int, file: Path) -> None:
        # checks fingerprint, column checksums and offsets: a damaged shard is refused here, by name
        cols = read_shard_index(file, self.header, VIDEO_COLUMNS, compacted=self.path.is_file(),
                                optional=OPTIONAL_COLUMNS)
        for row in range(len(cols["video_id"])):
            meta = {k: (v[row].decode() if isinstance(v[row], bytes) else v[row].item())
                    for k, v in cols.items()}
            vid = meta.pop("video_id")
            meta["id"] = vid
            old = self._entries.get(vid)
            if old is None:
                self._order.append(vid)
            elif old.meta["status"] == "ok" and meta["status"] != "ok":
                continue  # a later failure never hides an earlier success
            self._entries[vid] = _Entry(i, row, meta)

    def _handle(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: inherited HDF5 handles are not safe to use
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            # A big store has thousands of shards: keep the recently used handles, not one per shard.
            if len(self._handles) >= MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
            try:
                self._handles[shard] = h5py.File(self._files[shard], "r")
            except OSError as e:
                raise BadShard(self._files[shard], describe_open_error(e), self.path.is_file()) from None
        return self._handles[shard]

    def _read(self, shard: int, dataset: str, selection=()) -> np.ndarray:
        """Rows of one dataset of one shard; a checksum failure names the shard instead of h5py's traceback."""
        handle = self._handle(shard)
        try:
            return handle[dataset][selection]
        except OSError as e:
            raise BadShard(self._files[shard], describe_read_error(dataset, e), self.path.is_file()) from None

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles = OrderedDict()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public API -----------------------------------------------------------
    def ids(self, status: str | None = "ok") -> list[str]:
        """Item ids in write order; `status=None` for all items, 'failed' for failures only."""
        return [v for v in self._order if status is None or self._entries[v].meta["status"] == status]

    def __contains__(self, vid: str) -> bool:
        return vid in self._entries

    def __len__(self) -> int:
        return len(self._order)

    def meta(self, vid: str) -> ItemMeta:
        """What the store holds about `vid`: path, label(s), group, split, status, error, length, fps, ..."""
        m = dict(self._get(vid).meta)
        m.pop("offset")
        return ItemMeta(**m)

    def items(self) -> list[ItemMeta]:
        return [self.meta(v) for v in self._order]

    def shard_of(self, vid: str) -> Path:
        """The shard file holding the record of `vid` that readers use."""
        return self._files[self._get(vid).shard]

    def _get(self, vid: str) -> _Entry:
        try:
            return self._entries[vid]
        except KeyError:
            raise KeyError(f"{vid!r} is not in store {self.path}") from None

    def _rows(self, vid: str, dataset: str) -> np.ndarray:
        e = self._get(vid)
        off, n = e.meta["offset"], e.meta["length"]
        if dataset in SPAN_COLUMNS and self.format < 2:  # a format-1 store: every row is one frame
            return self._format1_span_end(e, dataset, off, n)
        return self._read(e.shard, dataset, np.s_[off:off + n])

    def _format1_span_end(self, e: _Entry, dataset: str, off: int, n: int) -> np.ndarray:
        if dataset == "frame_end":
            return self._read(e.shard, "frame_index", np.s_[off:off + n]) + 1
        # A frame lasts 1/fps (fps measured at decode); an image (fps 0) has no duration.
        duration = 1.0 / e.meta["fps"] if e.meta["fps"] > 0 else 0.0
        return self._read(e.shard, "time_s", np.s_[off:off + n]) + duration

    def features(self, vid: str) -> np.ndarray:
        """(T, D) float32 features of one item (T = 0 for a failed item)."""
        return self.raw_features(vid).astype(np.float32)

    def raw_features(self, vid: str) -> np.ndarray:
        """(T, D) features as stored (the store's dtype): what a bit-identical copy writes."""
        return self._rows(vid, "features")

    def frame_index(self, vid: str) -> np.ndarray:
        return self._rows(vid, "frame_index")

    def time_s(self, vid: str) -> np.ndarray:
        return self._rows(vid, "time_s")

    def frame_end(self, vid: str) -> np.ndarray:
        """One past the last frame of each row's span: frame_index + 1 for frame rows, + clip length for clips."""
        return self._rows(vid, "frame_end")

    def time_end_s(self, vid: str) -> np.ndarray:
        """End of each row's span in seconds: the time of its last frame plus that frame's duration."""
        return self._rows(vid, "time_end_s")

    def load_all(self, ids: list[str] | None = None, dtype=np.float32) -> "Loaded":
        """Every chosen item's features concatenated, with offsets: the fast path for training, and a block of a
        streamed read (heads.stream). Per shard, one read of the rows the chosen items span (each item alone where
        they are scattered), so a few items of a large shard cost their rows, not the shard's."""
        ids = self.ids() if ids is None else list(ids)
        lengths = np.array([self._entries[v].meta["length"] for v in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(ids) else lengths
        out = np.empty((int(lengths.sum()), self.dim), dtype=dtype)
        by_shard: dict[int, list[tuple[int, str]]] = {}
        for pos, v in enumerate(ids):
            by_shard.setdefault(self._entries[v].shard, []).append((pos, v))
        for shard, members in by_shard.items():
            spans = [(pos, self._entries[v].meta["offset"]) for pos, v in members]
            lo = min(off for _, off in spans)
            hi = max(off + lengths[pos] for pos, off in spans)
            if hi - lo > 2 * sum(lengths[pos] for pos, _ in spans):  # scattered items: read each one alone
                for pos, off in spans:
                    out[offsets[pos]:offsets[pos] + lengths[pos]] = self._read(shard, "features",
                                                                               np.s_[off:off + lengths[pos]])
                continue
            data = self._read(shard, "features", np.s_[lo:hi])  # one read per shard beats many small reads
            for pos, off in spans:
                out[offsets[pos]:offsets[pos] + lengths[pos]] = data[off - lo:off - lo + lengths[pos]]
        metas = [self.meta(v) for v in ids]
        return Loaded(out, offsets, lengths, ids, metas)

    def summary(self) -> dict:
        items = self.items()
        ok = [m for m in items if m.status == "ok"]
        return {
            "store": str(self.path), "videos": len(items), "ok": len(ok), "failed": len(items) - len(ok),
            "frames": int(sum(m.length for m in ok)), "dim": self.dim,
            "backbone": self.config.backbone, "fingerprint": self.fingerprint,
            "config": self.config.to_attrs(), "shards": len(self._files), "format": self.format,
            "items": [{k: getattr(m, k) for k in ("id", "label", "group", "split", "status", "length", "error")}
                      for m in items],
        }


@dataclass
class Loaded:
    features: np.ndarray   # (N, D) all frames of all chosen items
    offsets: np.ndarray    # (V,) first row of each item
    lengths: np.ndarray    # (V,) rows per item
    ids: list[str]
    metas: list[ItemMeta]

    def item(self, i: int) -> np.ndarray:
        return self.features[self.offsets[i]:self.offsets[i] + self.lengths[i]]


def open_store(path: str | Path) -> Store:
    """Open a store directory or a compacted `.h5` file for reading."""
    return Store(path)
