"""Which parts of a sharded store have written anything, and how many items each holds.

A store written by `--shard i/N` writers (Slurm arrays, torchrun ranks, Ray tasks) has shards `s<i>of<N>-*.h5`.
A part that never wrote a shard is one whose process has not run yet, died before its first shard, or had no
items at all (with N close to the number of items some parts are empty by chance): rerunning the same command
tells which, since it skips everything already stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from featstore.locks import PARTITION_RE
from featstore.format import SHARD_RE, shard_files
from featstore.reader import Store


@dataclass
class PartInfo:
    prefix: str              # 's3of64', or 'p0' for an unsharded writer
    index: int | None        # i of --shard i/N (None for p0)
    count: int | None        # N
    shards: int = 0          # complete shard files
    items: int = 0           # items whose current record lives in this part's shards
    ok: int = 0
    failed: int = 0


def store_parts(store: Store) -> list[PartInfo]:
    """One entry per shard prefix found in the store directory (none for a compacted file), sorted by N then i."""
    parts: dict[str, PartInfo] = {}
    for file in shard_files(store.path):
        m = SHARD_RE.match(file.name)
        if m is None:  # a compacted file
            continue
        part = parts.get(m["prefix"])
        if part is None:
            sharded = PARTITION_RE.fullmatch(m["prefix"])
            part = parts[m["prefix"]] = PartInfo(m["prefix"], int(sharded["i"]) if sharded else None,
                                                 int(sharded["n"]) if sharded else None)
        part.shards += 1
    if not parts:
        return []
    failed = set(store.ids(status="failed"))
    for vid in store.ids(status=None):
        part = parts[SHARD_RE.match(store.shard_of(vid).name)["prefix"]]
        part.items += 1
        if vid in failed:
            part.failed += 1
        else:
            part.ok += 1
    return sorted(parts.values(), key=lambda p: (p.count or 0, p.index or 0, p.prefix))


def parts_without_shards(parts: list[PartInfo]) -> dict[int, list[int]]:
    """For each N with at least one part written: the indices i in 0..N-1 that have no shard."""
    written: dict[int, set[int]] = {}
    for p in parts:
        if p.count is not None:
            written.setdefault(p.count, set()).add(p.index)
    return {n: sorted(set(range(n)) - done) for n, done in sorted(written.items())}
