"""Lanes (pipeline.lanes): eager CPU batches embed several at once, one intra-op thread each, and what comes out is
in the order the batches went in, exactly as one lane gives it."""
import threading
import time

import numpy as np
import pytest
import torch
from helpers import tiny_config, write_clips

from featstore import open_store
from pipeline.backbones import load_backbone
from pipeline.decode import Sampling
from pipeline.extract import extract
from pipeline.lanes import in_lanes
from pipeline.sources import load_source
from pipeline.speed import MAX_LANES, speed_for
from pipeline.stages import Batch, Done, Rows

CPU = torch.device("cpu")


def rows(slot: int, first: int, n: int) -> Rows:
    units = torch.arange(first, first + n).view(n, 1, 1, 1).expand(n, 2, 2, 3).to(torch.uint8)
    idx = np.arange(first, first + n)
    return Rows(slot, units.contiguous(), idx, idx + 1, idx / 10, (idx + 1) / 10)


def steps() -> list[Batch | Done]:
    """Two videos of 6 and 3 frames in batches of 2 (one batch spans both), each video's Done after its rows."""
    a, b = rows(0, 0, 6), rows(1, 100, 3)
    return [Batch([a.split(2)[0]]), Batch([a.split(2)[1].split(2)[0]]), Batch([a.split(4)[1]]), Done(0),
            Batch([b.split(2)[0]]), Batch([b.split(2)[1]]), Done(1)]


class Recorder:
    """An embed function that takes longer for earlier batches (so later ones finish first) and notes how many ran
    at once and in which threads."""

    def __init__(self):
        self.lock, self.running, self.most, self.threads = threading.Lock(), 0, 0, set()

    def __call__(self, units: torch.Tensor) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add((threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.08 if int(units[0, 0, 0, 0]) % 4 == 0 else 0.01)
        with self.lock:
            self.running -= 1
        return units[:, 0, 0, 0].numpy().astype(np.float32)[:, None]


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_hand_on_features_in_batch_order_and_a_done_only_after_every_batch_before_it(lanes):
    embed = Recorder()
    out = list(in_lanes(iter(steps()), embed, lanes))
    assert [type(s) for s, _ in out] == [type(s) for s in steps()]
    firsts = [int(f[0, 0]) for s, f in out if isinstance(s, Batch)]
    assert firsts == [0, 2, 4, 100, 102]
    assert all(f is None for s, f in out if isinstance(s, Done))
    if lanes > 1:
        assert 1 < embed.most <= lanes
        assert {n for _, n in embed.threads} == {1}  # each lane runs one intra-op thread
    else:
        assert embed.most == 1 and embed.threads == {(threading.get_ident(), torch.get_num_threads())}


def test_an_error_in_a_lane_reaches_the_caller_and_no_lane_keeps_running():
    def embed(units):
        if int(units[0, 0, 0, 0]) == 4:
            raise RuntimeError("lane failed on the third batch")
        return units[:, 0, 0, 0].numpy()[:, None]

    got = []
    with pytest.raises(RuntimeError, match="third batch"):
        for step, _ in in_lanes(iter(steps()), embed, 2):
            got.append(step)
    assert len(got) == 2  # the two batches before the failing one were handed on
    assert not [t for t in threading.enumerate() if t.name.startswith("lane")]


def test_eager_cpu_runs_one_lane_per_core_of_a_small_cpu_splitting_the_measured_batch_else_one_lane():
    resnet = load_backbone("resnet18", "none")
    whole = speed_for("bf16", "off", None, resnet, CPU, [], Sampling(every=2))
    split = speed_for("bf16", "off", None, resnet, CPU, [], Sampling(every=2), cores=2)
    assert (whole.lanes, split.lanes) == (1, 2) and split.batch_size == max(1, whole.batch_size // 2)
    assert speed_for("bf16", "off", 6, resnet, CPU, [], Sampling(every=2), cores=2).batch_size == 6  # as given
    assert speed_for("bf16", "off", None, resnet, torch.device("cuda"), [], Sampling(every=2), cores=2).lanes == 1
    assert speed_for("bf16", "off", None, resnet, CPU, [], Sampling(every=2), cores=MAX_LANES + 1).lanes == 1


def test_extract_in_lanes_stores_what_one_lane_stores(tmp_path):
    manifest = write_clips(tmp_path, [f"c{i}.mkv" for i in range(5)], frames=[7, 3, 9, 1, 5])
    items = load_source(manifest)
    two = extract(items, tmp_path / "two", tiny_config(batch_size=3, cores=2))
    one = extract(items, tmp_path / "one", tiny_config(batch_size=3, model_threads=1))
    assert two.done == one.done == 5 and two.frames == one.frames == 25
    a, b = open_store(tmp_path / "two"), open_store(tmp_path / "one")
    assert a.ids() == b.ids()
    for vid in b.ids():
        np.testing.assert_allclose(a.features(vid), b.features(vid), atol=1e-5)
        np.testing.assert_array_equal(a.frame_index(vid), b.frame_index(vid))
