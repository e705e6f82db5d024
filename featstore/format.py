"""The store's on-disk layout: file names, datasets and per-video columns, the record a shard holds, writing one
shard atomically and reading a store's header. (A store: a ragged, self-describing, crash-safe HDF5 cache of
embeddings, one row per span of frames.)

Layout on disk (see docs/store.md):

    STORE/                      a directory
      _store.h5                 header: config + fingerprint (attrs), written once, atomically
      <prefix>-<seq>.h5         immutable shards: written under a temp name, fsynced, renamed (featstore.atomic)
      .<prefix>.lock            POSIX lock (lockf) held by the one writer of that prefix

A store is the set of its complete shards; a temp file left by a killed writer is ignored and
removed by the next writer of that prefix. A single compacted `.h5` file (`compact`) has the
same datasets and attributes as one shard and is accepted everywhere a store is.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from featstore.atomic import publish, temp_path
from featstore.config import StoreConfig
from featstore.errors import StoreError
from featstore.integrity import DIGEST_ATTR, Header, column_digests, describe_open_error, h5_temp

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


@dataclass(frozen=True)
class ItemMeta:
    """What a store holds about one item (`Store.meta`): its VideoRecord's columns, without the rows."""
    id: str
    path: str
    label: str            # '|' joins several labels
    group: str
    split: str
    status: str           # ok | failed
    error: str
    length: int           # rows stored (0 for a failed item)
    fps: float
    n_frames: int
    width: int
    height: int
    rotation: int

    @property
    def labels(self) -> list[str]:
        return [x for x in self.label.split("|") if x]


def write_attrs(f: h5py.File, config: StoreConfig, fp: str, dim: int, keys: list[str], fmt: int) -> None:
    """The attributes every file of a store carries: its format, config, fingerprint and the keys it covers, dim."""
    f.attrs["framecache_format"] = fmt
    f.attrs["config"] = json.dumps(config.to_attrs(), sort_keys=True)
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


def write_shard(path: Path, records: Iterable[VideoRecord], config: StoreConfig, fp: str, keys: list[str],
                dim: int, dtype: str = "float16", compression: str | None = None, chunk_rows: int = 128,
                size_hint: int | None = None, fmt: int = FORMAT_VERSION) -> None:
    """Write records to `path` atomically: temp file, fsync, rename. Never leaves a partial shard.

    `fmt` 1 writes the frame-row layout of format-1 stores (no span columns), refusing rows that span frames.

    Records are consumed one at a time (frame datasets grow as they come), so a generator keeps memory at one
    item whatever the shard's size: that is how `compact` copies a large store. A full disk raises `DiskFull`
    naming `path` and about how much space it needs (`size_hint` when given, else what the records need)."""
    tmp = temp_path(path)
    comp = {} if compression is None else {"compression": compression, "shuffle": True}
    columns: dict[str, list] = {name: [] for name in VIDEO_COLUMNS}
    row_bytes = dim * np.dtype(dtype).itemsize + 16 + (16 if fmt >= 2 else 0)  # features, frame/time (and ends)

    def needed() -> int:
        return size_hint or (sum(columns["length"]) + chunk_rows) * row_bytes + 4096 * (1 + len(columns["length"]))

    with h5_temp(tmp, path, needed) as (f, guard):
        write_attrs(f, config, fp, dim, keys, fmt)
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
    publish(tmp, path)


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
    # A compacted file that is not what it should be can only be made again; a header is rebuilt by its caller.
    fix = f"; if it was a compacted store, re-create it with `cli.py compact STORE {src}`" if path.is_file() else ""
    try:
        with h5py.File(src, "r") as f:
            return Header(StoreConfig.from_attrs(json.loads(f.attrs["config"])), str(f.attrs["fingerprint"]),
                          json.loads(f.attrs["fingerprint_keys"]), int(f.attrs["dim"]),
                          int(f.attrs.get("framecache_format", 1)))
    except OSError as e:
        raise StoreError(f"{src} is not a readable framecache {what}: {describe_open_error(e)}{fix}") from None
    except KeyError as e:
        raise StoreError(f"{src} is not a framecache {what} (attribute {e} missing){fix}") from None
    except ValueError as e:
        raise StoreError(f"{src} is a damaged framecache {what} ({e}){fix}") from None


def no_store(path: Path) -> StoreError:
    """The error for a store path where nothing is: what makes one there."""
    make = f"`cli.py compact STORE {path}`" if path.suffix == ".h5" else f"`cli.py extract ... --store {path}`"
    return StoreError(f"no store at {path}: run {make} first")


def is_store_file(path: Path) -> bool:
    """Is `path` an HDF5 file written by framecache (a shard, a header or a compacted store)?"""
    try:
        with h5py.File(path, "r") as f:
            return "framecache_format" in f.attrs
    except OSError:
        return False
