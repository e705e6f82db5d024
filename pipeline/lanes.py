"""The model's batches in lanes: on a CPU, eager, each core runs its own batch in a thread of its own with one
intra-op thread, instead of every core working on one batch together.

Why (docs/extract.md, "Splitting the cores"): the decode worker shares the cores with the model. A model that
spreads one batch over every core waits, at each layer, for its slowest thread, and the thread whose core the
decoder took is the slowest: on 2 cores resnet18 then ran slower beside a decode worker (125 frames/s) than decoding
and embedding one after the other in one process (134). Lanes do not wait for each other, so whatever core time
the decoder leaves goes to a lane (bench/split.py).

Results come back in the order the batches went in, and a Done passes only after every batch before it, so
pipeline.stages.InOrder sees exactly what one lane would give it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from pipeline.stages import Batch, Done


def in_lanes(steps: Iterator[Batch | Done], embed: Callable[[torch.Tensor], np.ndarray], lanes: int
             ) -> Iterator[tuple[Batch | Done, np.ndarray | None]]:
    """(step, its features) for each step of `steps` in order (None for a Done), with up to `lanes` batches
    embedding at once. One lane embeds in the calling thread, with torch's threads as they are."""
    if lanes <= 1:
        for step in steps:
            yield step, embed(step.units()) if isinstance(step, Batch) else None
        return
    pending: deque[tuple[Batch | Done, Future | None]] = deque()
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="lane", initializer=torch.set_num_threads, initargs=(1,))
    try:
        for step in steps:
            pending.append((step, pool.submit(embed, step.units()) if isinstance(step, Batch) else None))
            while pending and (pending[0][1] is None or _running(pending) >= lanes):
                yield _take(pending)
        while pending:
            yield _take(pending)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a lane ends its batch (well under a second), then stops


def _running(pending: deque[tuple[Batch | Done, Future | None]]) -> int:
    return sum(future is not None for _, future in pending)


def _take(pending: deque[tuple[Batch | Done, Future | None]]) -> tuple[Batch | Done, np.ndarray | None]:
    step, future = pending.popleft()
    return step, None if future is None else future.result()
