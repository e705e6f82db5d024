"""cluster-eval on a store whose rows exceed --memory-budget: the points are computed block by block from the shards.

Video level: each clip's frames are pooled as they stream by, so the points (one per clip) are exactly the in-memory
path's and KMeans runs on them unchanged. Frame level, where the points are the rows themselves:

    sample  a seeded sample of SAMPLE_POINTS frames is kept (fewer where that exceeds SAMPLE_SHARE of the budget,
            but at least SAMPLE_MIN)
    init    KMeans(k, n_init) on the sample: the restarts run where the points fit
    fit     MiniBatchKMeans from those centres, `partial_fit` over every fitted frame, STREAM_PASSES passes
    score   one more pass: every scored frame's cluster (4 bytes a frame), the inertia, the label metrics

The silhouette, the clips nearest each centroid, the 2-D scatter and embedding_2d.csv use the sample (the points a
picture can show anyway); assignments.csv and every label metric cover all frames. --pca needs the frames in memory
and is refused here (raise --memory-budget, or use --level video).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from sklearn.preprocessing import normalize

from featstore import Store
from heads.data import load_cache
from heads.stream import StreamedCache

SAMPLE_POINTS = 20_000  # frames kept in memory for the k-means restarts, silhouette, nearest clips and scatter
SAMPLE_SHARE = 0.25     # of the budget, what the sample may take, but never fewer frames than:
SAMPLE_MIN = 1_000      # (8 MB at 2048-d) too few and the restarts start MiniBatchKMeans in a poor local optimum


def rows_bytes(store: Store, ids: list[str]) -> int:
    """What the rows of `ids` take in memory as cluster-eval loads them (float32)."""
    return sum(store.meta(v).length for v in ids) * store.dim * 4


def pooled_clips(store: Store, ids: list[str], pool: str, budget: int) -> np.ndarray:
    """(V, D) the mean or max of each clip's frames, read block by block: what pool_features computes in memory."""
    reduce = np.mean if pool == "mean" else np.max
    source = streamed(store, ids, budget)
    out = np.empty((len(source), store.dim), dtype=np.float32)
    for chunk, rows, first in source.clip_batches(torch.arange(len(source)), 256):
        for c, f in zip(chunk.tolist(), first.tolist()):
            out[c] = reduce(rows[f:f + int(source.lengths[c])].numpy().astype(np.float32), axis=0)
    return out


@dataclass
class FrameStream:
    """The frames of some clips as points: unit-norm rows a block at a time, and what each frame belongs to."""
    source: StreamedCache   # the clips
    ids: list[str]          # their ids
    item: np.ndarray        # (n,) the clip of each frame
    row: np.ndarray         # (n,) its row within the clip
    labels: np.ndarray      # (n,) its clip's first label, '' when none

    def __len__(self) -> int:
        return len(self.item)

    def blocks(self) -> Iterator[np.ndarray]:
        """Every frame, unit-norm float32, in store order, a block at a time."""
        for rows in self.source.row_blocks(torch.arange(len(self.source))):
            yield normalize(rows.numpy().astype(np.float32))

    def sample(self, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, rows) of a seeded sample of `size` frames, sorted by position."""
        where = np.sort(np.random.default_rng(seed).choice(len(self.item), size, replace=False))
        picked, done = [], 0
        for block in self.blocks():
            inside = where[(where >= done) & (where < done + len(block))]
            picked.append(block[inside - done])
            done += len(block)
        return where, np.concatenate(picked)


def streamed(store: Store, ids: list[str], budget: int) -> StreamedCache:
    """The clips `ids` as a StreamedCache whatever their size (reading within `budget`)."""
    source = load_cache(store, ids, budget=0)  # a budget of 0 streams any store
    source.budget = budget
    return source


def frame_stream(store: Store, ids: list[str], budget: int) -> FrameStream:
    source = streamed(store, ids, budget)
    lengths = source.lengths.numpy()
    item = np.repeat(np.arange(len(ids)), lengths)
    row = np.arange(len(item)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    clip_labels = np.array([(ls or [""])[0] for ls in source.labels], dtype=object)
    return FrameStream(source, ids, item, row, clip_labels[item])


def sample_size(n: int, dim: int, budget: int) -> int:
    """How many frames the in-memory sample holds: SAMPLE_POINTS, fewer (down to SAMPLE_MIN) where the budget is
    small."""
    return min(n, SAMPLE_POINTS, max(SAMPLE_MIN, int(budget * SAMPLE_SHARE) // (dim * 4)))
