"""`pool_store`: a derived store with one row per video, the mean or max of its rows (`cli.py pool`).

Heads that pool a video's rows anyway (linear, mlp, knn) and video-level k-means then read one row per video
instead of every frame. The pooled store keeps the source's ids, labels, groups, splits and per-video columns;
its config is the source's plus `pool` and `pooled_from` (the source's fingerprint), both fingerprinted, so a
pooled store never passes for its source, for another pooling, or for a pooling of another store. Its one row
per video spans the video's first to last sampled frame.

Written through StoreWriter, video by video (memory holds one video's rows and the pending pooled rows): an
interrupted pool leaves complete shards, and the same command resumes, skipping the videos already written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from featstore.config import LAYOUT_KEYS, POOL_KEYS, POOLS
from featstore.errors import StoreError
from featstore.format import HEADER, VideoRecord, read_header
from featstore.reader import Store, open_store
from featstore.settings import check_choice
from featstore.ownership import check_out_folder, clear_folder
from featstore.writer import StoreWriter

FLUSH_VIDEOS = 4096  # pooled rows per shard: one row each, so shards stay few and small


@dataclass(frozen=True)
class PoolResult:
    """What `pool_store` did: the pooled store, its fingerprint, videos written now and found already written."""
    out: Path
    fingerprint: str
    written: int
    resumed: int


def pool_store(src: str | Path, out: str | Path, pool: str = "mean", *, force: bool = False,
               on_progress: Callable[[int, int], None] | None = None) -> PoolResult:
    """Write the `pool` ("mean" or "max") of every video of the store `src` into the store directory `out`.

    `out` must be new, empty, or the pooled store an earlier call with the same `src` and `pool` wrote (resumed);
    `force` replaces any other folder whole, never a store (featstore.ownership). `on_progress(done, total)` after
    each video."""
    check_choice("--pool", pool, POOLS, StoreError)
    out = Path(out)
    with open_store(src) as source:
        if not is_pooling_of(out, source, pool) and check_out_folder(out, "pool", lambda _: False, force):
            clear_folder(out)
        config = source.config.with_extra(pool=pool, pooled_from=source.fingerprint)
        keys = [k for k in source.fingerprint_keys if k not in LAYOUT_KEYS] + list(POOL_KEYS)
        dtype = "float32" if source.config.dtype == "float32" else "float16"
        writer = StoreWriter(out, config, keys, source.dim, dtype=dtype, flush_videos=FLUSH_VIDEOS)
        try:
            with open_store(out) as made:
                done = set(made.ids(status=None))
            ids = source.ids(status=None)
            for i, vid in enumerate(ids, 1):
                if vid not in done:
                    writer.add(pooled_record(source, vid, pool))
                if on_progress is not None:
                    on_progress(i, len(ids))
        except BaseException:
            writer.abort()  # the shards written so far stay; the rerun redoes only the pending videos
            raise
        writer.close()
        resumed = len(done.intersection(ids))
        return PoolResult(out, writer.fp, len(ids) - resumed, resumed)


def is_pooling_of(out: Path, source: Store, pool: str) -> bool:
    """Whether `out` is a store that pooling `source` with `pool` wrote (complete or not): it is resumed."""
    if not (out / HEADER).is_file():
        return False
    made = read_header(out).config
    return made.pooled == pool and made.value("pooled_from") == source.fingerprint


def pooled_record(source: Store, vid: str, pool: str) -> VideoRecord:
    """One video of `source` as the pooled store holds it: the same columns, its rows reduced to one."""
    m = source.meta(vid)
    columns = {k: getattr(m, k) for k in ("path", "label", "group", "split", "status", "error", "fps", "n_frames",
                                          "width", "height", "rotation")}
    if m.status != "ok" or m.length == 0:
        return VideoRecord(vid, **columns)
    rows = source.raw_features(vid)  # (T, D) as stored
    # the mean in float64, then the store's dtype: one rounding, as the source's own rows had
    row = rows.astype(np.float64).mean(0) if pool == "mean" else rows.max(0)
    return VideoRecord(vid, **columns, features=row[None].astype(rows.dtype),
                       frame_index=source.frame_index(vid)[:1], time_s=source.time_s(vid)[:1],
                       frame_end=source.frame_end(vid)[-1:], time_end_s=source.time_end_s(vid)[-1:])
