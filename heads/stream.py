"""A store too large for memory, read as the batches need it: `StreamedCache`, the streaming twin of heads.data.Cache.

Both have the per-clip columns (lengths, ids, labels, groups, splits) that splits, targets and metrics need, and the
two methods heads.data.batches and feature_stats read rows through:

    clip_batches(idx, batch_size, gen)  (clips (B,), rows (R, D), first row of each clip in rows (B,)) per batch
    row_blocks(idx)                     every row of the clips idx, in that order, a block at a time

so every loop (training, evaluation, kNN, statistics) is written once. Here the rows come from the shards in blocks
of whole clips (`Store.load_all` of a run of clips: one HDF5 read of the rows they span per shard), read ahead by a
background thread while the main one trains. Memory: every buffer the rows pass through is a share of the budget, and
the shares sum below it: the shuffle buffer (BUFFER_SHARE, 1/2), blocks of BLOCK_SHARE (1/16) of which four are held
at most (the one batches are cut from, one queued, one being read and the shard rows it is copied from: 1/4), an
evaluation batch of BATCH_SHARE (1/16) as float32 frames with the copies a head makes of it (about three: 3/16). What
is left (1/16) covers a training batch of --batch-size clips; feature_stats widens STATS_BYTES (8 MB) at a time.

Training order: the clips are cut into blocks in store order, the blocks are read in a seeded random order, and each
batch is drawn at random from the clips in the buffer (refilled before every draw), so a batch mixes clips of many
blocks and shards. Evaluation reads in the order of idx. The frame sampling inside each clip is heads.data's, the
same as in memory; only the order of clips differs, so a seeded run is repeatable but not equal to the in-memory one.
"""
from __future__ import annotations

import ctypes
import functools
import queue
import sys
import threading
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch

from featstore import Store
from featstore.finite import finite_rows

BUFFER_SHARE = 0.5     # of the budget: clips waiting to be drawn into a training batch
BLOCK_SHARE = 1 / 16   # of the budget: one block of clips read from the shards (four held at most)
BATCH_SHARE = 1 / 16   # of the budget: an evaluation batch as float32 frames (a head copies it about three times)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 2**20  # blocks this size and larger: mmap'd, and returned to the system when freed


@dataclass
class StreamedCache:
    """The chosen clips of a store, their rows left in the shards until a batch needs them."""
    store: Store
    lengths: torch.Tensor    # (V,) int64, frames per clip (>= 1)
    ids: list[str]
    labels: list[list[str]]
    groups: list[str]
    splits: list[str]
    dtype: type              # what rows are held as between the shards and a batch (the store's float width)
    budget: int              # bytes the rows held at once may take
    source: ClassVar[str] = "stream"  # metrics.json's data_source

    def __post_init__(self):
        return_freed_blocks()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.store.dim)

    def _rows_per(self, share: float) -> int:
        return max(1, int(self.budget * share) // (self.dim * np.dtype(self.dtype).itemsize))

    def clip_batches(self, idx: torch.Tensor, batch_size: int,
                     gen: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of the clips idx: in order without `gen`, else drawn at random from a shuffle buffer.

        In order (evaluation, whose batch size is the caller's fixed 256 or 1024, not a hyperparameter), a batch
        holds at most BATCH_SHARE of the budget as float32 frames: 256 clips of 64 frames of 2048 dims would be 134 MB
        a copy, and a head makes several. Clips are scored alone, so smaller batches change no prediction."""
        rng = None if gen is None else np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
        if rng is None and len(idx):
            longest = int(self.lengths[idx].max())
            batch_size = max(1, min(batch_size, int(self.budget * BATCH_SHARE) // (self.dim * 4 * longest)))
        blocks = _cut(idx.numpy(), self.lengths.numpy(), self._rows_per(BLOCK_SHARE))
        if rng is not None:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        buffer: list[tuple[int, np.ndarray]] = []
        held, limit = 0, self._rows_per(BUFFER_SHARE)
        reader = self._read_ahead(blocks)
        for block_idx, rows, first in reader:
            # training draws at random: a view would keep its whole block alive until the block's last clip is
            # drawn, so the buffer holds copies; in order, a block is done with soon and views cost nothing
            clips = [rows[f:f + n] for f, n in zip(first, self.lengths[block_idx].tolist())]
            buffer += [(int(c), clip if rng is None else clip.copy()) for c, clip in zip(block_idx, clips)]
            held += len(rows)
            while len(buffer) >= batch_size and (rng is None or held >= limit):
                held -= yield from self._draw(buffer, batch_size, rng)
        while buffer:
            held -= yield from self._draw(buffer, batch_size, rng)

    def _draw(self, buffer: list, batch_size: int, rng: np.random.Generator | None):
        """Yield one batch taken out of the buffer (the first clips, or random ones); returns its rows."""
        n = min(batch_size, len(buffer))
        if rng is None:
            taken, buffer[:n] = buffer[:n], []
        else:
            taken = []
            for _ in range(n):  # swap-remove: O(1) per clip
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                taken.append(buffer.pop())
        lengths = torch.tensor([len(r) for _, r in taken], dtype=torch.int64)
        rows = torch.from_numpy(np.concatenate([r for _, r in taken]))
        yield torch.tensor([c for c, _ in taken], dtype=torch.int64), rows, torch.cumsum(lengths, 0) - lengths
        return int(lengths.sum())

    def row_blocks(self, idx: torch.Tensor) -> Iterator[torch.Tensor]:
        """Every row of the clips idx, in that order, a block (at most BLOCK_SHARE of the budget) at a time."""
        for _, rows, _ in self._read_ahead(_cut(idx.numpy(), self.lengths.numpy(), self._rows_per(BLOCK_SHARE))):
            yield torch.from_numpy(rows)

    def _read_ahead(self, blocks: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(clips, their rows, first row of each) per block, read by a background thread one block ahead. Rows stay
        numpy arrays until a batch is made: a copy per clip in torch is an intra-op parallel region, which on a
        busy machine waits for a scheduled thread each time (14 ms per clip measured on 2 shared cores, 10x the
        read)."""
        ahead: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item) -> bool:
            """Hand `item` over unless the iteration was abandoned meanwhile; False then."""
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for block in blocks:
                    loaded = finite_rows(self.store, self.store.load_all([self.ids[i] for i in block], self.dtype))
                    if not put((block, loaded.features, loaded.offsets)):
                        return
                put(None)
            except BaseException as e:  # raised again in the iterating thread, where the caller sees it
                put(e)

        thread = threading.Thread(target=read, name="framecache-stream", daemon=True)
        thread.start()
        try:
            while (item := ahead.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # an abandoned iteration (an error, a break) ends the reader too
            thread.join()


@functools.cache  # once per process: the setting stays
def return_freed_blocks() -> None:
    """Make glibc give freed large blocks straight back to the system, for the rest of the process.

    Streaming allocates and frees blocks of MBs all the time (a block read, a batch, its float32 copies). glibc's
    malloc raises its mmap threshold to the size of each large block freed (up to 32 MB), after which such blocks
    come from the heap, whose freed pages it keeps: measured on a 128 MB budget, a streamed epoch peaked ~200 MB
    higher (1,244 MB resident vs 1,048 MB with this). M_MMAP_THRESHOLD fixed at 1 MB (which also stops the raising)
    serves every block of 1 MB and more from mmap, returned by free. Off Linux (no glibc), nothing is done."""
    if sys.platform.startswith("linux"):
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library: no search for it
        if mallopt is not None:
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _cut(idx: np.ndarray, lengths: np.ndarray, rows: int) -> list[np.ndarray]:
    """idx cut into consecutive runs of clips of at most `rows` rows each (a longer clip is a block alone)."""
    ends = np.cumsum(lengths[idx])
    blocks, start = [], 0
    while start < len(idx):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + rows, side="right")))
        blocks.append(idx[start:stop])
        start = stop
    return blocks
