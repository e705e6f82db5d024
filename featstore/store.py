"""The feature store: a ragged, self-describing, crash-safe HDF5 cache of embeddings, one row per span of frames.

Layout on disk (see docs/store.md):

    STORE/                      a directory
      _store.h5                 header: config + fingerprint (attrs), written once, atomically
      <prefix>-<seq>.h5         immutable shards: written under a temp name, fsynced, renamed
      .<prefix>.lock            POSIX lock (lockf) held by the one writer of that prefix

A store is the set of its complete shards; a temp file left by a killed writer is ignored and
removed by the next writer of that prefix. A single compacted `.h5` file (`compact`) has the
same datasets and attributes as one shard and is accepted everywhere a store is.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.integrity import (DIGEST_ATTR, BadShard, Header, column_digests, describe_open_error,
                                 describe_read_error, h5_temp, read_shard_index)
from featstore.locks import WriterLock
from featstore.staging import clean_stale, temp_name
from featstore.meta import read_meta_updates

# The one format constant. 1: a row is one frame (frame_index, time_s). 2: a row is a span of frames
# [frame_index, frame_end) with time_s / time_end_s (one frame, or one clip). Format-1 stores stay readable and
# writable as format 1: a writer appends in the format its store was created with.
FORMAT_VERSION = 2
HEADER = "_store.h5"
SHARD_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9_]+)-(?P<seq>\d{6})\.h5$")
STR = h5py.string_dtype("utf-8")
# What a writer itself leaves in a store directory before its header exists (a directory holding only these
# is as good as empty).
OWN_NAME_RE = re.compile(r"^(\..+\.(lock|tmp)|_store\.h5|_quarantine)$")
MAX_OPEN_SHARDS = 64  # HDF5 handles a reader keeps open at once (file descriptors are limited)

# Per-row span ends (format 2); a format-1 shard lacks them and readers derive them (see Store._rows).
SPAN_COLUMNS = {"frame_end": np.int64, "time_end_s": np.float64}
# Per-video columns: name -> numpy dtype ("str" for utf-8 strings).
VIDEO_COLUMNS: dict[str, object] = {
    "video_id": "str", "path": "str", "label": "str", "group": "str", "split": "str",
    "status": "str", "error": "str", "offset": np.int64, "length": np.int64,
    "fps": np.float64, "n_frames": np.int64, "width": np.int64, "height": np.int64,
    "rotation": np.int64,  # display-matrix rotation applied at decode (degrees counter-clockwise)
}
OPTIONAL_COLUMNS = {"rotation": 0}  # per-video columns older shards lack, with the value they mean there


class ConfigMismatch(StoreError):
    """Appending to a store that was made with a different extraction config."""


def fingerprint(config: dict, keys: Iterable[str]) -> str:
    """Hash of the settings that change the features; the same settings always give the same hash."""
    import hashlib

    subset = {k: config.get(k) for k in sorted(keys)}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


# Fingerprinted by format-1 stores, but a property of the file layout, not of the features in it.
LAYOUT_KEYS = frozenset({"format"})


def feature_diffs(old: dict, old_keys: Iterable[str], new: dict, new_keys: Iterable[str],
                  theirs: str = "this run") -> list[str]:
    """Differences in the settings that change features, over the keys both fingerprints cover (layout keys aside):
    empty when two stores of different format versions, or of older and newer key sets, hold the same features."""
    return diff_configs(old, new, sorted((set(old_keys) | set(new_keys)) - LAYOUT_KEYS), theirs)


def diff_configs(old: dict, new: dict, keys: Iterable[str], theirs: str = "this run") -> list[str]:
    """Human-readable differences between two configs over the fingerprinted keys."""
    return [f"{k}: store has {old.get(k)!r}, {theirs} has {new.get(k)!r}"
            for k in sorted(keys) if old.get(k) != new.get(k)]


@dataclass
class VideoRecord:
    """One finished item, ready to write: metadata plus its frames' features (empty if failed)."""
    video_id: str
    path: str = ""
    label: str = ""
    group: str = ""
    split: str = ""
    status: str = "ok"
    error: str = ""
    fps: float = 0.0
    n_frames: int = 0
    width: int = 0
    height: int = 0
    rotation: int = 0                       # degrees counter-clockwise applied from the display matrix
    features: np.ndarray | None = None      # (T, D)
    frame_index: np.ndarray | None = None   # (T,) first frame of each row's span
    time_s: np.ndarray | None = None        # (T,) its time, seconds
    frame_end: np.ndarray | None = None     # (T,) one past the span's last frame; None: frame rows (index + 1)
    time_end_s: np.ndarray | None = None    # (T,) end of the span's last frame, seconds; None: unknown (= time_s)

    def __post_init__(self) -> None:
        if self.frame_index is not None and self.frame_end is None:
            self.frame_end = np.asarray(self.frame_index) + 1
        if self.time_s is not None and self.time_end_s is None:
            self.time_end_s = np.asarray(self.time_s, dtype=np.float64)

    @property
    def length(self) -> int:
        return 0 if self.features is None else int(len(self.features))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_attrs(f: h5py.File, config: dict, fp: str, dim: int, keys: list[str], fmt: int) -> None:
    f.attrs["framecache_format"] = fmt
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["fingerprint"] = fp
    f.attrs["fingerprint_keys"] = json.dumps(sorted(keys))  # which config keys the fingerprint covers
    f.attrs["dim"] = dim


def _create_row_datasets(f: h5py.File, dim: int, dtype: str, chunk_rows: int, comp: dict,
                         fmt: int) -> dict[str, h5py.Dataset]:
    """The empty, growable, fletcher32-checked per-row datasets of a shard of format `fmt`."""
    rows = {"features": f.create_dataset("features", (0, dim), dtype, maxshape=(None, dim),
                                         chunks=(chunk_rows, dim), fletcher32=True, **comp),
            "frame_index": f.create_dataset("frame_index", (0,), np.int64, maxshape=(None,), chunks=(4096,),
                                            fletcher32=True),
            "time_s": f.create_dataset("time_s", (0,), np.float64, maxshape=(None,), chunks=(4096,),
                                       fletcher32=True)}
    if fmt >= 2:
        for name, dt in SPAN_COLUMNS.items():
            rows[name] = f.create_dataset(name, (0,), dt, maxshape=(None,), chunks=(4096,), fletcher32=True)
    return rows


def write_shard(path: Path, records: Iterable[VideoRecord], config: dict, fp: str, keys: list[str], dim: int,
                dtype: str = "float16", compression: str | None = None, chunk_rows: int = 128,
                size_hint: int | None = None, fmt: int = FORMAT_VERSION) -> None:
    """Write records to `path` atomically: temp file, fsync, rename. Never leaves a partial shard.

    `fmt` 1 writes the frame-row layout of format-1 stores (no span columns), refusing rows that span frames.

    Records are consumed one at a time (frame datasets grow as they come), so a generator keeps memory at one
    item whatever the shard's size: that is how `compact` copies a large store. A full disk raises `DiskFull`
    naming `path` and about how much space it needs (`size_hint` when given, else what the records need)."""
    tmp = path.with_name(f".{path.name}.tmp")
    comp = {} if compression is None else {"compression": compression, "shuffle": True}
    columns: dict[str, list] = {name: [] for name in VIDEO_COLUMNS}
    row_bytes = dim * np.dtype(dtype).itemsize + 16 + (16 if fmt >= 2 else 0)  # features, frame/time (and ends)

    def needed() -> int:
        return size_hint or (sum(columns["length"]) + chunk_rows) * row_bytes + 4096 * (1 + len(columns["length"]))

    with h5_temp(tmp, path, needed) as (f, guard):
        _write_attrs(f, config, fp, dim, keys, fmt)
        f.attrs["created"] = time.time()
        rows = _create_row_datasets(f, dim, dtype, chunk_rows, comp, fmt)
        n = 0
        for r in records:
            if fmt < 2 and r.length and np.any(np.asarray(r.frame_end) != np.asarray(r.frame_index) + 1):
                raise StoreError(f"{path.parent} is a format-1 store (one frame per row): it cannot hold the clip "
                                 f"rows of {r.video_id}; extract clips into a new --store")
            for name in VIDEO_COLUMNS:
                columns[name].append(n if name == "offset" else r.length if name == "length" else getattr(r, name))
            if r.length:
                for name, ds in rows.items():
                    ds.resize(n + r.length, axis=0)
                    ds[n:] = getattr(r, name)
                n += r.length
            if guard.error is not None:
                break  # out of space: h5_temp reports it; reading more records would be wasted
        for name, dt in VIDEO_COLUMNS.items():
            f.create_dataset(name, data=np.array(columns[name], dtype=object if dt == "str" else dt),
                             dtype=STR if dt == "str" else dt)
        f.attrs[DIGEST_ATTR] = column_digests(columns, VIDEO_COLUMNS)  # fletcher32 cannot see vlen strings
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def shard_files(path: Path) -> list[Path]:
    """A store's complete shards, oldest first (mtime then name: later shards supersede earlier ones for
    retried ids); a compacted file is its own one shard."""
    if path.is_file():
        return [path]
    shards = [p for p in path.iterdir() if SHARD_RE.match(p.name)]
    return sorted(shards, key=lambda p: (p.stat().st_mtime_ns, p.name))


def read_header(path: Path) -> Header:
    """The settings every shard of the store at `path` must have been made with."""
    src = path if path.is_file() else path / HEADER
    if not src.exists():
        raise StoreError(f"{path} is not a framecache store (no {HEADER})")
    what = "store file" if path.is_file() else "store header"
    try:
        with h5py.File(src, "r") as f:
            return Header(json.loads(f.attrs["config"]), str(f.attrs["fingerprint"]),
                          json.loads(f.attrs["fingerprint_keys"]), int(f.attrs["dim"]),
                          int(f.attrs.get("framecache_format", 1)))
    except OSError as e:
        raise StoreError(f"{src} is not a readable framecache {what}: {describe_open_error(e)}") from None
    except KeyError as e:
        raise StoreError(f"{src} is not a framecache {what} (attribute {e} missing)") from None
    except ValueError as e:
        raise StoreError(f"{src} is a damaged framecache {what} ({e})") from None


def is_store_file(path: Path) -> bool:
    """Is `path` an HDF5 file written by framecache (a shard, a header or a compacted store)?"""
    try:
        with h5py.File(path, "r") as f:
            return "framecache_format" in f.attrs
    except OSError:
        return False


def claim_store(path: Path, prefix: str, force: bool = False) -> WriterLock:
    """Check that `path` may become or is a store, create it, and take the lock of shards `prefix`.

    Cheap and first: extract calls it before loading a model, so a refusal costs nothing."""
    path = Path(path)
    if path.is_file():
        if is_store_file(path):
            raise StoreError(f"{path} is a compacted store file; extract into a store directory instead")
        raise StoreError(f"{path} is a file, not a store directory: give --store a new directory or a store")
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


def _refuse(path: Path, bad: list[BadShard]) -> StoreError:
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
            raise StoreError(f"no store at {self.path}: run `cli.py extract ... --store {self.path}` first")
        self._files = shard_files(self.path)
        self.header = read_header(self.path)
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
            raise _refuse(self.path, bad)
        for vid, changes in read_meta_updates(self.path).items():  # extract --update-meta: newer labels/splits
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

    def meta(self, vid: str) -> dict:
        """id, path, label, labels, group, split, status, error, length, fps, n_frames, width, height."""
        m = dict(self._get(vid).meta)
        m.pop("offset")
        m["labels"] = [x for x in m["label"].split("|") if x]
        return m

    def items(self) -> list[dict]:
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
        return self._rows(vid, "features").astype(np.float32)

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
        """Every chosen item's features concatenated, with offsets: the fast path for training."""
        ids = self.ids() if ids is None else list(ids)
        lengths = np.array([self._entries[v].meta["length"] for v in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(ids) else lengths
        out = np.empty((int(lengths.sum()), self.dim), dtype=dtype)
        by_shard: dict[int, list[tuple[int, str]]] = {}
        for pos, v in enumerate(ids):
            by_shard.setdefault(self._entries[v].shard, []).append((pos, v))
        for shard, members in by_shard.items():
            data = self._read(shard, "features")  # one read per shard beats many small reads
            for pos, v in members:
                m = self._entries[v].meta
                out[offsets[pos]:offsets[pos] + lengths[pos]] = data[m["offset"]:m["offset"] + m["length"]]
        metas = [self.meta(v) for v in ids]
        return Loaded(out, offsets, lengths, ids, metas)

    def summary(self) -> dict:
        items = self.items()
        ok = [m for m in items if m["status"] == "ok"]
        return {
            "store": str(self.path), "videos": len(items), "ok": len(ok), "failed": len(items) - len(ok),
            "frames": int(sum(m["length"] for m in ok)), "dim": self.dim,
            "backbone": self.config.get("backbone"), "fingerprint": self.fingerprint,
            "config": self.config, "shards": len(self._files), "format": self.format,
            "items": [{k: m[k] for k in ("id", "label", "group", "split", "status", "length", "error")}
                      for m in items],
        }


@dataclass
class Loaded:
    features: np.ndarray   # (N, D) all frames of all chosen items
    offsets: np.ndarray    # (V,) first row of each item
    lengths: np.ndarray    # (V,) rows per item
    ids: list[str]
    metas: list[dict]

    def item(self, i: int) -> np.ndarray:
        return self.features[self.offsets[i]:self.offsets[i] + self.lengths[i]]


def open_store(path: str | Path) -> Store:
    """Open a store directory or a compacted `.h5` file for reading."""
    return Store(path)


class StoreWriter:
    """Appends finished items to a store as immutable shards; one writer per prefix at a time.

    `flush_videos`/`flush_seconds` bound what a crash can lose: the records not yet in a shard.
    """

    def __init__(self, path: str | Path, config: dict, fingerprint_keys: Iterable[str], dim: int,
                 prefix: str = "p0", flush_videos: int = 32, flush_seconds: float = 60.0,
                 dtype: str = "float16", compression: str | None = None, lock: WriterLock | None = None,
                 force: bool = False):
        """`lock`: taken beforehand with `claim_store` (extract does, before loading its model); the writer
        releases it. `force`: make a non-empty directory that is not a store into one."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
            raise StoreError(f"shard prefix {prefix!r} must be letters, digits or _")
        self.path = Path(path)
        self.config, self.dim, self.prefix = config, dim, prefix
        self.keys = sorted(fingerprint_keys)
        # The store owns its layout: a new store is written in FORMAT_VERSION, an old one goes on in its own.
        self.format = FORMAT_VERSION
        self.config = {**config, "format": self.format}
        self.fp = fingerprint(self.config, self.keys)
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
        for stale in self.path.glob(f".{prefix}-*.h5.tmp"):  # left by a killed writer of this prefix
            stale.unlink()
        clean_stale(self.path, HEADER)  # left by a writer killed while it created the store
        self._seq = 1 + max((int(m["seq"]) for p in self.path.iterdir()
                             if (m := SHARD_RE.match(p.name)) and m["prefix"] == prefix), default=-1)

    def _create_or_check(self) -> None:
        header = self.path / HEADER
        if not header.exists():
            tmp = self.path / temp_name(HEADER)
            with h5_temp(tmp, header, lambda: 64_000) as (f, _):
                _write_attrs(f, self.config, self.fp, self.dim, self.keys, self.format)
            try:
                os.link(tmp, header)  # atomic and fails if another writer created it first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        old = read_header(self.path)
        self.format = old.format
        self._adopt(old.config, old.fingerprint, old.keys)

    def _adopt(self, old: dict, old_fp: str, old_keys: list[str]) -> None:
        """Append under the store's own fingerprint, format and key set, if this run's settings are the same.

        Compared over the keys of both: a setting this code knows but the store predates counts only when
        this run sets it (the store has it unset), so adding a config key never breaks an old store's resume."""
        self.config = {**self.config, "format": self.format}
        diffs = diff_configs(old, self.config, sorted(set(old_keys) | set(self.keys)))
        if not diffs and fingerprint(self.config, old_keys) != old_fp:
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


def compact(src: str | Path, out: str | Path, compression: str | None = "gzip", force: bool = False) -> Path:
    """Write every current record of `src` into one portable `.h5` file (superseded records dropped).

    Streams item by item: memory stays at one item's features, whatever the store's size. `out` may be absent
    or a framecache file; anything else is overwritten only with `force`."""
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"{out} is a directory; compact writes one file: give a file path such as {out / 'store.h5'}")
    if out.exists() and not force and not is_store_file(out):
        raise StoreError(f"{out} exists and is not a framecache store file: choose another path, "
                         "or pass --force to overwrite it")
    with open_store(src) as store:
        def records():
            for vid in store.ids(status=None):
                m = store.meta(vid)
                ok = m["status"] == "ok" and m["length"] > 0
                # raw rows (no float32 round trip) so the copy is bit-identical
                yield VideoRecord(vid, **{k: m[k] for k in ("path", "label", "group", "split", "status", "error",
                                                            "fps", "n_frames", "width", "height",
                                                            "rotation")},
                                  features=store._rows(vid, "features") if ok else None,
                                  frame_index=store.frame_index(vid) if ok else None,
                                  time_s=store.time_s(vid) if ok else None,
                                  frame_end=store.frame_end(vid) if ok else None,
                                  time_end_s=store.time_end_s(vid) if ok else None)

        dtype = "float32" if store.config.get("dtype") == "float32" else "float16"
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = sum(store._entries[v].meta["length"] for v in store.ids(status=None))
        hint = frames * (store.dim * np.dtype(dtype).itemsize + 16) + 512 * len(store) + 64_000  # uncompressed
        write_shard(out, records(), store.config, store.fingerprint, store.fingerprint_keys, store.dim, dtype,
                    compression, size_hint=hint, fmt=store.format)
    return out
