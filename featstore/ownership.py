"""What a writer may write over: nothing of the user's, nothing of another store, never a store's own files.

Every command that writes an output folder or file asks here first (the library does, so a notebook caller is
protected too). A target is writable when it is absent, empty, or the writer's own output of the same identity
(`owned`: a compaction of the same store, an explain folder, a finetune run); anything else needs `force`, which
replaces it whole (never merges). A store's directory, header and shards are never a target, whatever `force` says.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from featstore.errors import FramecacheError, StoreError
from featstore.format import HEADER, SHARD_RE, is_store_file
from featstore.reader import open_store


class OwnershipError(StoreError):
    """The target holds what is not the writer's own; the message names it and --force."""


def store_part(path: Path) -> str | None:
    """What `path` is of a store: "the header of", "a shard of", "inside the store directory", "the store
    directory"; None when it is none of them."""
    if (path / HEADER).is_file():
        return "the store directory"
    if path.name == HEADER and is_store_file(path):
        return "the header of"
    if (path.parent / HEADER).is_file():
        return "a shard of" if SHARD_RE.match(path.name) else "inside the store directory"
    if SHARD_RE.match(path.name) and is_store_file(path):
        return "a shard of"  # of a store whose header is lost
    return None


def refuse_store_part(path: Path, flag: str) -> None:
    """Refuse a target that is a store, or a file of one: never written over, whatever --force says."""
    part = store_part(path)
    if part is not None:
        where = "" if part == "the store directory" else f" {path.parent}"
        raise OwnershipError(f"{flag} {path} is {part}{where}: a store's own files are never written over (--force "
                             "does not change that); choose a path outside any store")


def shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def check_out_folder(out: str | Path, kind: str, owned: Callable[[Path], bool], force: bool = False,
                     flag: str = "--out", holds: Callable[[Path, list[str]], str] | None = None) -> bool:
    """Raise OwnershipError unless `kind` may write into the folder `out`: absent, empty, `owned(out)` (its own
    earlier output), or `force`. `holds(out, entries)` says what the refused folder holds (default: files that
    are not `kind` output). Returns whether `out` is to be replaced whole (`force` over other files): the writer
    calls `clear_folder` once its inputs are checked, just before it writes (or moves its staged output in)."""
    out = Path(out)
    refuse_store_part(out, flag)
    if out.exists() and not out.is_dir():
        raise OwnershipError(f"{flag} {out} is a file, not a folder: choose another path (--force replaces no file "
                             "with a folder)")
    if not out.exists() or owned(out):
        return False
    entries = sorted(p.name for p in out.iterdir())
    if entries and not force:
        what = holds(out, entries) if holds else f"files that are not {kind} output ({shown(entries)})"
        raise OwnershipError(f"{flag} {out} already holds {what}; choose a new or empty folder, or pass --force to "
                             f"replace it whole")
    return bool(entries)


def clear_folder(out: str | Path) -> None:
    """Delete what the folder `out` holds (a writer replacing it whole, after `check_out_folder`)."""
    shutil.rmtree(out)
    Path(out).mkdir()


def check_out_file(out: str | Path, kind: str, owned: Callable[[Path], bool], force: bool = False,
                   flag: str = "OUT") -> None:
    """Raise OwnershipError unless `kind` may replace the file `out`: absent, `owned(out)` (its own output of the
    same identity), or `force` (replaced whole). A folder or a store's own file is never replaced."""
    out = Path(out)
    if out.is_dir() and not (out / HEADER).is_file():
        raise OwnershipError(f"{out} is a directory; {kind} writes one file: give a file path such as "
                             f"{out / 'store.h5'} (--force replaces no folder)")
    refuse_store_part(out, flag)
    if not out.exists() or force or owned(out):
        return
    what = "another store's file" if is_store_file(out) else "not a framecache store file"
    raise OwnershipError(f"{out} exists and is {what}: choose another path, or pass --force to replace it")


def is_compaction_of(out: Path, src: Path) -> bool:
    """Whether `out` is a compacted file of the store `src`: the same settings, and no item the store lacks (a
    store only gains items, so an older compaction of it holds a subset of its ids)."""
    if not is_store_file(out):
        return False
    try:
        with open_store(out) as old, open_store(src) as new:
            return old.fingerprint == new.fingerprint and set(old.ids(status=None)) <= set(new.ids(status=None))
    except FramecacheError:
        return False
