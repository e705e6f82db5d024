"""What makes a store trustworthy over months: disk-full safe writes, checksums, validated shard indexes.

Three pieces, shared by the writer, every reader and `verify` (see docs/integrity.md):

- `h5_temp`: writes an HDF5 file through a Python file object that catches the first failed write (ENOSPC,
  EFBIG, EDQUOT) and drops the rest, so HDF5 never sees a driver error. (When it does, h5py raises from every
  later flush and close, and the process segfaults at exit: exit 139 on a full disk.) The file is then
  removed and one `DiskFull` names the path and the space it needed.
- `column_digests`: a sha256 per per-video column, stored as the shard attribute `columns_sha256`. HDF5's
  fletcher32 covers the frame datasets chunk by chunk, but not the strings of variable-length columns (they
  live in a global heap outside the dataset), so the columns get a digest of their decoded values instead.
- `read_shard_index`: opens a shard once, compares its fingerprint with the header's, reads and checks its
  per-video columns (digests; offsets contiguous and in range; lengths summing to the rows), and with
  `deep=True` reads every block of the frame datasets and checks that they are finite. Anything wrong
  raises `BadShard` naming the shard and the problem.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featstore.config import StoreConfig
from featstore.errors import StoreError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
ROW_DATASETS = ("features", "frame_index", "time_s")  # one row per sampled frame (or span of frames)
SPAN_DATASETS = ("frame_end", "time_end_s")  # format 2 and later: where each row's span ends
DIGEST_ATTR = "columns_sha256"
DEEP_BLOCK_ROWS = 16384  # rows read at once by a deep check: bounded memory whatever the shard's size


def row_datasets(f: h5py.File) -> tuple[str, ...]:
    """The per-row datasets a shard of its format must have."""
    return ROW_DATASETS + (SPAN_DATASETS if int(f.attrs.get("framecache_format", 1)) >= 2 else ())


class DiskFull(StoreError):
    """A write ran out of space (or hit the file size limit); nothing partial was left behind."""


# The fix for a damaged compacted file, which cannot be repaired in place (verify --quarantine refuses one).
REMAKE_COMPACTED = "re-create it with `cli.py compact STORE OUT.h5` from the store directory"


class BadShard(StoreError):
    """A shard that cannot be trusted: damaged, truncated, inconsistent or made with other settings."""

    verify_flags = "--quarantine"  # what finds the shard again and moves it aside

    def __init__(self, shard: Path, problem: str, compacted: bool = False):
        self.shard, self.problem, self.compacted = Path(shard), problem, compacted
        if compacted:
            what, hint = "store file", REMAKE_COMPACTED
        else:
            what, hint = "shard", (f"run `cli.py verify {self.shard.parent} {self.verify_flags}` to move it aside, "
                                   "then rerun extract to redo its videos")
        super().__init__(f"{what} {self.shard}: {problem}; {hint}")

    def __reduce__(self):  # raised in Ray or DataLoader workers too: pickle the fields, not the message
        return type(self), (self.shard, self.problem, self.compacted)


class ForeignShard(BadShard):
    """A readable shard whose fingerprint is not the store's (copied in from a store of other settings)."""


@dataclass
class Header:
    """What the store's header (or a compacted file's attributes) says every shard must match."""
    config: StoreConfig
    fingerprint: str
    keys: list[str]
    dim: int
    format: int = 1  # 1: frame rows; 2: span rows (frame_end, time_end_s) -- featstore.format.FORMAT_VERSION


def describe_bytes(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def is_disk_full(e: BaseException | None) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def disk_full(path: Path, needed: int) -> DiskFull:
    """The one-line error for ENOSPC, EDQUOT and EFBIG alike (a full disk, a quota, `ulimit -f`)."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    return DiskFull(f"disk full writing {path}: it needs about {describe_bytes(needed)} of free space, "
                    f"{describe_bytes(free)} is free there (or a file size limit, `ulimit -f`, was hit); "
                    "no partial file was kept: free some space and rerun the same command to resume")


class _GuardedFile:
    """A raw file for h5py's file-object driver that remembers the first failed write and drops later ones."""

    def __init__(self, path: Path):
        self.raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.error is None:
            try:
                while view:  # a raw write may be partial (it stops at the size limit, then fails)
                    view = view[self.raw.write(view):]
            except OSError as e:
                self.error = e
        return size  # HDF5 must believe it worked: a failed driver write leaves h5py unable to close

    def truncate(self, size: int | None = None) -> int | None:
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as e:
                self.error = e
        return size

    def seek(self, *args) -> int:
        return self.raw.seek(*args)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, *args) -> bytes:
        return self.raw.read(*args)

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        self.raw.close()
        Path(self.raw.name).unlink(missing_ok=True)

    def fsync(self) -> None:
        if self.error is None:
            try:
                os.fsync(self.raw.fileno())
            except OSError as e:
                self.error = e


@contextmanager
def h5_temp(tmp: Path, target: Path, needed: Callable[[], int]) -> Iterator[tuple[h5py.File, _GuardedFile]]:
    """An HDF5 file written at `tmp`; on exit it is complete and fsynced, or removed and the error raised.

    A write that fails for lack of space becomes `DiskFull` naming `target` and `needed()` bytes. The body
    may poll `guard.error` to stop early (a long `compact` should not read the rest of the store for nothing).
    """
    guard = _GuardedFile(tmp)
    try:
        with h5py.File(guard, "w") as f:
            yield f, guard
        guard.fsync()
    except Exception:
        guard.discard()
        if is_disk_full(guard.error):
            raise disk_full(target, needed()) from None
        raise
    except BaseException:  # Ctrl-C: no partial file either
        guard.discard()
        raise
    if guard.error is not None:
        guard.discard()  # before measuring the free space: the temp file's blocks count as free again
        if is_disk_full(guard.error):
            raise disk_full(target, needed())
        raise guard.error
    guard.raw.close()


def _digest(values, dtype) -> str:
    h = hashlib.sha256(str(len(values)).encode())
    if dtype == "str":
        h.update(b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for v in values))
    else:
        h.update(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
    return h.hexdigest()[:16]


def column_digests(columns: dict[str, object], dtypes: dict[str, object]) -> str:
    """JSON {column: digest} for the shard attribute `columns_sha256`; values as written or as read back."""
    return json.dumps({name: _digest(values, dtypes[name]) for name, values in columns.items()}, sort_keys=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def describe_open_error(e: OSError) -> str:
    msg = str(e)
    if "truncated file" in msg:
        return "truncated (the file is shorter than its own index says: an interrupted copy or a full disk)"
    if "file signature not found" in msg:
        return "not an HDF5 file (overwritten, zero-filled or not written by framecache)"
    return f"cannot be opened ({_first_line(e)})"


def describe_read_error(dataset: str, e: BaseException) -> str:
    msg = str(e)
    if "filter returned failure" in msg or "checksum" in msg.lower() or "fletcher" in msg.lower():
        return f"checksum mismatch in {dataset} (its bytes changed after it was written: a disk or copy error)"
    return f"cannot read {dataset} ({_first_line(e)})"


class _Problem(Exception):
    """What is wrong with the shard being checked (read_shard_index adds the shard's name)."""


class _Foreign(_Problem):
    """The shard's fingerprint is not the header's."""


def read_shard_index(path: Path, header: Header, dtypes: dict[str, object], deep: bool = False,
                     compacted: bool = False, optional: dict[str, object] | None = None) -> dict[str, np.ndarray]:
    """The per-video columns of one shard, after every check that does not read its frames (all with `deep`).

    `optional`: columns added after shards existed, name -> the value an older shard's videos have."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadShard(path, describe_open_error(e), compacted) from None
    with f:
        try:
            _check_fingerprint(f, header)
            optional = optional or {}
            present = {k: v for k, v in dtypes.items() if k not in optional or k in f}
            sets = _datasets(f, present)  # each looked up once: h5py's per-access cost adds up over 1,000s of shards
            columns = {name: _read(sets[name], name) for name in present}
            _check_columns(f.attrs.get(DIGEST_ATTR), sets, columns, dtypes, header)
            n = len(columns["video_id"])
            columns.update({name: np.full(n, value) for name, value in optional.items() if name not in columns})
            if deep:
                _check_blocks(sets, columns)
        except _Foreign as p:
            raise ForeignShard(path, str(p), compacted) from None
        except _Problem as p:
            raise BadShard(path, str(p), compacted) from None
    return columns


def _datasets(f: h5py.File, columns: dict[str, object]) -> dict[str, h5py.Dataset]:
    """The shard's per-video column datasets and the row datasets of its format, by name."""
    found = {}
    for name in (*columns, *row_datasets(f)):
        try:
            found[name] = f[name]
        except KeyError:
            raise _Problem(f"has no {name} dataset (not a complete framecache shard)") from None
    return found


def _read(ds: h5py.Dataset, name: str, selection=()) -> np.ndarray:
    try:
        return ds[selection]
    except OSError as e:
        raise _Problem(describe_read_error(name, e)) from None


def _check_fingerprint(f: h5py.File, header: Header) -> None:
    fp = f.attrs.get("fingerprint")
    if fp is None:
        raise _Problem("has no fingerprint (not written by framecache)")
    if str(fp) == header.fingerprint:
        return
    try:
        config = StoreConfig.from_attrs(json.loads(f.attrs["config"]))
        keys = sorted(set(header.keys) | set(json.loads(f.attrs.get("fingerprint_keys", "[]"))))
    except (KeyError, ValueError):
        raise _Problem("has an unreadable config attribute") from None
    diffs = header.config.diff(config, keys, theirs="this shard") or ["fingerprint keys differ"]
    raise _Foreign("was extracted with other settings than its store (" + "; ".join(diffs) + ")")


def _check_columns(recorded: str | None, sets: dict[str, h5py.Dataset], columns: dict[str, np.ndarray],
                   dtypes: dict[str, object], header: Header) -> None:
    if len({len(v) for v in columns.values()}) > 1:
        raise _Problem("has per-video columns of different lengths")
    if recorded is not None:  # optional: shards written before digests existed have none
        try:
            expected = json.loads(recorded)
        except ValueError:
            raise _Problem(f"has an unreadable {DIGEST_ATTR} attribute") from None
        actual = json.loads(column_digests({k: columns[k] for k in expected if k in columns}, dtypes))
        for name in sorted(expected):
            if actual.get(name) != expected[name]:
                raise _Problem(f"checksum mismatch in {name} (its bytes changed after it was written)")
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in columns["video_id"]]
    length, offset = columns["length"].astype(np.int64), columns["offset"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(length)[:-1]]) if len(length) else length
    bad = np.flatnonzero((length < 0) | (offset != starts))
    if len(bad):
        i = int(bad[0])
        raise _Problem(f"video {ids[i]} has offset {offset[i]} and length {length[i]}; its videos must be "
                       f"contiguous (expected offset {starts[i]})")
    rows = int(length.sum())
    for name in _row_datasets(sets):
        if sets[name].shape[0] != rows:
            raise _Problem(f"{name} has {sets[name].shape[0]} rows but its videos' lengths add up to {rows}")
    shape = sets["features"].shape
    if len(shape) != 2 or shape[1] != header.dim:
        raise _Problem(f"features are {shape[1:]} wide, the store's dim is {header.dim}")
    status = [v.decode() if isinstance(v, bytes) else str(v) for v in columns["status"]]
    for vid, st, n in zip(ids, status, length):
        if st not in ("ok", "failed") or (st == "failed" and n):
            raise _Problem(f"video {vid} has status {st!r} with {n} rows")


def _row_datasets(sets: dict[str, h5py.Dataset]) -> list[str]:
    """The row datasets `_datasets` found (it required those of the shard's format)."""
    return [name for name in (*ROW_DATASETS, *SPAN_DATASETS) if name in sets]


def _check_blocks(sets: dict[str, h5py.Dataset], columns: dict[str, np.ndarray]) -> None:
    """Read every block (HDF5 checks each chunk's fletcher32 on read) and check values are finite."""
    rows = int(columns["length"].sum())
    ends = np.cumsum(columns["length"].astype(np.int64))
    for name in _row_datasets(sets):
        for start in range(0, rows, DEEP_BLOCK_ROWS):
            block = _read(sets[name], name, np.s_[start:start + DEEP_BLOCK_ROWS])
            bad = first_non_finite(block) if block.dtype.kind == "f" else None
            if bad is not None:
                row = start + bad
                vid = columns["video_id"][int(np.searchsorted(ends, row, side="right"))]
                vid = vid.decode() if isinstance(vid, bytes) else vid
                raise _Problem(f"non-finite values in {name} (row {row}, video {vid})")


def first_non_finite(rows: np.ndarray) -> int | None:
    """The index of the first row of `rows` (N, ...) holding a NaN or an infinity; None when every value is finite."""
    finite = np.isfinite(rows)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(rows), -1).all(axis=1))[0])
