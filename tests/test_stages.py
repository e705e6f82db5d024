"""pipeline.stages: decode workers watched with bounded waits (issue 19, item 3), on real DataLoader worker processes.

A worker that dies, or that stays on one item while its CPU time stands still (a file that does not answer), costs
that item, named, and ends the run; `close` leaves no worker behind whatever they were doing.
"""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from data.synth import write_video
from pipeline.decode import Geometry, Sampling
from pipeline.extract import ExtractConfig, decode_loader
from pipeline.sources import Item
from pipeline.stages import DecodeWorkers, Done, WorkerLost


def items_with_a_held_file(tmp_path, hold) -> tuple[list[Item], object]:
    items = []
    for i in range(3):
        path = write_video(tmp_path / f"c{i}.mkv", np.full((4, 32, 32, 3), 40 * i, dtype=np.uint8))
        items.append(Item(id=f"c{i}", path=str(path), labels=()))
    return items, hold(tmp_path / "c1.mkv")


def watched_workers(items: list[Item], stall_s: float) -> DecodeWorkers:
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32, crop="none",
                        workers=1)
    return DecodeWorkers(decode_loader(items, cfg, Geometry(size=32, resize=32, crop="none"),
                                       torch.device("cpu")).loader, stall_s=stall_s)


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["stuck opening a file that does not answer", "killed (SIGKILL)"])
def test_a_dead_or_stuck_decode_worker_costs_the_item_in_hand_and_ends_the_run(tmp_path, hold, worker):
    items, held = items_with_a_held_file(tmp_path, hold)
    workers = watched_workers(items, stall_s=3.0)
    reached: list[float] = []

    def at_the_held_file() -> None:  # the worker blocks opening c1: note when, and kill it if asked
        held.opened.wait(120)
        reached.append(time.monotonic())
        if worker.startswith("killed"):
            for _, pid, _ in workers.board.workers():
                os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=at_the_held_file)
    watcher.start()
    done = []
    try:
        with pytest.raises(WorkerLost) as lost:
            for message in workers:
                done += [message.slot] if isinstance(message, Done) else []
        took = time.monotonic() - reached[0]
    finally:
        workers.close()
        held.release()
        watcher.join()
    # c0 came out before c1 was reached, unless the kill overtook its messages (then a rerun redoes it)
    assert done in ([0], []) and list(lost.value.lost) == [1]
    why = lost.value.lost[1]
    assert ("made no progress on it for 3 s" if worker.startswith("stuck") else "died while decoding it") in why
    assert took < (3.0 if worker.startswith("stuck") else 0) + 8
    assert not multiprocessing.active_children()
