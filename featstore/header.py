"""A store's header (`_store.h5`), rebuilt from its shards when it is lost or damaged, never by re-embedding.

Every shard carries the attributes the header holds (format, config, fingerprint, its keys, dim), so the header is
redundant: when it is missing, unreadable, or its fingerprint no longer matches its own config (a flipped bit), and
all shards agree, `load_header` writes it again from them (readers do this on open, `extract` before appending)
and says so on the `framecache` logger (the command line shows it as a note: a repair is never silent).
When the shards disagree (a foreign shard copied in), `verify --repair` takes the settings of most shards and
moves the old header aside; the other shards are then reported as foreign.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py

from featstore.atomic import remove_stale_temps, temp_path
from featstore.config import StoreConfig
from featstore.errors import StoreError
from featstore.format import HEADER, read_header, shard_files, write_attrs
from featstore.integrity import Header, h5_temp

QUARANTINE = "_quarantine"
log = logging.getLogger("framecache")


def header_problem(path: Path) -> tuple[Header | None, str | None]:
    """The header of the store directory `path` and None, or None and what is wrong with it."""
    if not (path / HEADER).exists():
        return None, "is missing"
    try:
        header = read_header(path)
    except StoreError as e:
        return None, "cannot be read (" + str(e).split(": ", 1)[-1] + ")"
    if header.config.fingerprint(header.keys) != header.fingerprint and not _as_first_shard(path):
        return None, "is damaged (its fingerprint does not match its own config)"
    return header, None


def _as_first_shard(path: Path) -> bool:
    """Does the header hold exactly what the oldest shard holds? (A store made by a version that computed its
    fingerprint otherwise: not damage, and one open tells.)"""
    files = shard_files(path)
    try:
        with h5py.File(path / HEADER, "r") as h, h5py.File(files[0], "r") as f:
            return _attrs(h) == _attrs(f)
    except (IndexError, OSError, KeyError, ValueError):
        return False


def shard_headers(path: Path) -> dict[tuple, list[str]]:
    """The settings readable shards carry, (fingerprint, keys, dim, format) -> the config of each such shard, oldest
    first. Grouped by fingerprint, not by config: runs that differ only in settings the fingerprint leaves out
    (and so were allowed into one store) agree."""
    found: dict[tuple, list[str]] = {}
    for file in shard_files(path):
        try:
            with h5py.File(file, "r") as f:
                found.setdefault(_attrs(f)[1:], []).append(str(f.attrs["config"]))
        except (OSError, KeyError, ValueError):
            continue  # a damaged shard has no say; verify names it
    return found


def _attrs(f: h5py.File) -> tuple:
    return (str(f.attrs["config"]), str(f.attrs["fingerprint"]), str(f.attrs["fingerprint_keys"]),
            int(f.attrs["dim"]), int(f.attrs.get("framecache_format", 1)))


def _header(key: tuple, configs: list[str]) -> Header:
    fp, keys, dim, fmt = key
    return Header(StoreConfig.from_attrs(json.loads(configs[0])), fp, json.loads(keys), dim, fmt)


def load_header(path: Path, rebuild: bool = True) -> tuple[Header, str | None]:
    """The header of a store (directory or compacted file) and, when it had to be rebuilt, what was wrong.

    A lost or damaged header of a directory is rebuilt from its shards when they all agree (`rebuild`: and
    written back, when the directory is writable); otherwise one StoreError names the header and the fix."""
    path = Path(path)
    if path.is_file():
        return read_header(path), None
    header, problem = header_problem(path)
    if problem is None:
        return header, None
    votes = shard_headers(path)
    if not votes:  # nothing to rebuild from: the header's own error (or, readable, the header as it is)
        return read_header(path), None
    if len(votes) > 1:
        raise StoreError(f"store header {path / HEADER} {problem}, and its shards disagree on the settings: "
                         f"run `cli.py verify {path} --repair` to rebuild it from most of them")
    key, configs = next(iter(votes.items()))
    header = _header(key, configs)
    if rebuild and os.access(path, os.W_OK):
        write_header(path, header)
        log.warning("store header %s %s: rebuilt from its %d shard(s), which all agree on the settings (nothing "
                    "re-embedded)", path / HEADER, problem, len(configs))
    return header, problem


def write_header(path: Path, header: Header) -> None:
    """Write `header` as the store's `_store.h5`, moving a damaged one aside to `_quarantine/`."""
    target = path / HEADER
    if target.exists():
        (path / QUARANTINE).mkdir(exist_ok=True)
        os.replace(target, free_name(path / QUARANTINE / HEADER))
    link_header(path, header)


def link_header(path: Path, header: Header) -> None:
    """Create the store's `_store.h5` holding `header`, unless another process created it first (then theirs
    stays: os.link is atomic and never replaces)."""
    target = path / HEADER
    remove_stale_temps(target)
    tmp = temp_path(target)
    with h5_temp(tmp, target, lambda: 64_000) as (f, _):
        write_attrs(f, header.config, header.fingerprint, header.dim, header.keys, header.format)
    try:
        os.link(tmp, target)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def repair_header(path: Path) -> str | None:
    """`verify --repair`: rebuild a lost, damaged or foreign header from most shards; what was done, or None."""
    header, problem = header_problem(path)
    votes = shard_headers(path)
    if not votes:
        return None
    key = max(votes, key=lambda k: len(votes[k]))  # the settings of most shards
    if problem is None and header.fingerprint in {k[0] for k in votes}:
        return None  # the header is some shards' own: shards that differ are foreign, verify names them
    write_header(path, _header(key, votes[key]))
    why = problem or "matched none of its shards"
    return (f"{HEADER} {why}: rebuilt from the settings of {len(votes[key])} of "
            f"{sum(len(v) for v in votes.values())} shard(s)")


def free_name(dest: Path) -> Path:
    """`dest`, or `dest.1`, `dest.2`... whichever does not exist yet (an earlier file moved aside is kept)."""
    k, free = 1, dest
    while free.exists():
        free = dest.with_name(f"{dest.name}.{k}")
        k += 1
    return free
