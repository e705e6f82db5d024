"""--memory-budget: a store larger as loaded than the budget streams from its shards (heads.stream), with the same
clips, frames, splits and metrics as in memory; peak memory measured on real `cli.py` processes."""
import json
import sys
import threading

import numpy as np
import pytest
import torch

from featstore import StoreWriter, VideoRecord, open_store
from featstore.finite import NonFiniteShard
from heads.api import evaluate, fit
from heads.budget import BudgetError, budget_bytes
from heads.cluster import ClusterConfig, cluster_eval
from heads.config import TrainConfig
from heads.data import Augment, batches, feature_stats, load_cache
from heads.models import HeadConfig, build_head
from heads.stream import StreamedCache
from featstore.pool import pool_store
from helpers import ROOT, SMALL, blob_clips, child_env, cli_command, invoke, write_store

pytestmark = pytest.mark.usefixtures("one_thread")


def blob_store(path, n_classes=4, per_class=100, frames=60, dim=256, noise=20.0, seed=0, dtype="float16"):
    """Clips of class c: frames around class centre c, each frame alone often wrong (noise), a clip's mean right.
    Groups of two clips, every 4th clip test; shards of 64 clips, so streamed blocks cross shards."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    config = {"backbone": "synthetic", "every": 1}
    with StoreWriter(path, config, sorted(config), dim, dtype=dtype, flush_videos=64) as w:
        for i in range(n_classes * per_class):
            c = i % n_classes
            feats = (centres[c] + rng.normal(0, noise, (frames, dim))).astype(np.float32)
            w.add(VideoRecord(f"v{i:04d}", label=f"class{c}", group=f"g{i // 8}",
                              split="test" if (i // n_classes) % 4 == 3 else "train", features=feats,
                              frame_index=np.arange(frames), time_s=np.arange(frames) / 25))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A few hundred kB of blobs: streamed under a budget of a few kB."""
    return write_store(tmp_path_factory.mktemp("stream") / "store", blob_clips(per_class=24))


# -- the budget ----------------------------------------------------------------------------------------------------
def test_budget_sizes_read_as_bytes_and_a_bad_one_names_the_flag():
    assert budget_bytes("300MB") == 300 * 2**20
    assert budget_bytes("2gb") == budget_bytes("2G") == 2 * 2**30
    assert budget_bytes("512k") == 512 * 1024 and budget_bytes(4096) == 4096
    assert budget_bytes("auto") > 0
    for bad in ("lots", "-3MB", "0"):
        with pytest.raises(BudgetError, match="--memory-budget"):
            TrainConfig(memory_budget=bad)
    result = invoke("cluster-eval", "nowhere", "--memory-budget", "12 parsecs")
    assert result.exit_code == 1 and "--memory-budget '12 parsecs' is not a size" in result.output


def test_a_store_within_the_budget_is_loaded_and_one_past_it_streams(small):
    assert load_cache(small, budget=budget_bytes("1GB")).source == "memory"
    streamed = load_cache(small, budget=1000)
    assert isinstance(streamed, StreamedCache) and streamed.source == "stream"
    memory = load_cache(small)
    assert (streamed.ids, streamed.labels, streamed.splits) == (memory.ids, memory.labels, memory.splits)
    assert torch.equal(streamed.lengths, memory.lengths)


# -- the same batches ----------------------------------------------------------------------------------------------
def test_streamed_evaluation_batches_hold_the_in_memory_ones_frames_in_order(small):
    memory, streamed = load_cache(small), load_cache(small, budget=1000)  # one clip a batch here

    def clips(cache):
        out = []
        for x, n, y in batches(cache, torch.arange(len(memory)), np.arange(3, len(memory), 2), 5, 4):
            out += [(int(t), frames[:count]) for t, frames, count in zip(y, x, n.tolist())]
        return out

    a, b = clips(memory), clips(streamed)
    assert [t for t, _ in a] == [t for t, _ in b] == list(range(3, len(memory), 2))
    assert all(torch.equal(fa, fb) for (_, fa), (_, fb) in zip(a, b))


def test_a_streamed_epoch_draws_every_clip_once_with_its_own_frames(small):
    memory, streamed = load_cache(small), load_cache(small, budget=3000)
    idx = np.arange(len(memory))
    targets = torch.arange(len(memory))
    gen = torch.Generator().manual_seed(0)
    seen = []
    for x, n, y in batches(streamed, targets, idx, 8, 4, train=True, gen=gen, aug=Augment(frame_dropout=0.5)):
        for clip, frames, count in zip(y.tolist(), x, n.tolist()):
            rows = memory.features[memory.offsets[clip]:memory.offsets[clip] + memory.lengths[clip]]
            assert all((rows == f).all(1).any() for f in frames[:count])  # each frame is one of the clip's
        seen += y.tolist()
    assert sorted(seen) == idx.tolist() and seen != idx.tolist()  # all of them, shuffled


def test_streamed_feature_statistics_equal_the_in_memory_ones(small):
    idx = np.arange(0, 60, 3)
    for a, b in zip(feature_stats(load_cache(small), idx), feature_stats(load_cache(small, budget=500), idx)):
        torch.testing.assert_close(a, b)


def test_an_abandoned_stream_stops_its_reader_thread(small):
    before = threading.active_count()
    data = batches(load_cache(small, budget=500), None, np.arange(60), 4, 4)
    next(data)
    data.close()  # what a break out of the loop, or an error in it, does
    assert threading.active_count() == before


def test_a_non_finite_row_met_while_streaming_is_refused_naming_the_video(tmp_path):
    path = blob_store(tmp_path / "nan", per_class=4, frames=3, dim=8, dtype="float32")
    with StoreWriter(path, {"backbone": "synthetic", "every": 1}, ["backbone", "every"], 8, dtype="float32",
                     prefix="bad") as w:
        w.add(VideoRecord("broken", label="class0", split="train", features=np.full((3, 8), np.nan, np.float32),
                          frame_index=np.arange(3), time_s=np.arange(3) / 25))
    with pytest.raises(NonFiniteShard, match="video broken"):
        list(batches(load_cache(path, budget=100), None, np.arange(17), 4, 4))


def test_knn_neighbours_found_chunk_by_chunk_equal_those_of_the_whole_bank():
    head = build_head(HeadConfig(kind="knn", in_dim=8, n_classes=3))
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(500, 8, generator=gen), dim=1)
    head.remember(bank, torch.nn.functional.one_hot(torch.randint(3, (500,), generator=gen), 3), 20, 0.07, False)
    query = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    whole, chunked = head.neighbours(query), head.neighbours(query, chunk=7)
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])


# -- the same runs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["linear", pytest.param("lstm", marks=pytest.mark.slow), "knn"])
def test_fit_head_and_evaluate_under_a_small_budget_score_as_in_memory(small, tmp_path, head):
    scores = {}
    for budget in ("1GB", "2KB"):
        cfg = TrainConfig(head=head, memory_budget=budget, **{**SMALL, "epochs": 8})
        metrics = fit(small, cfg, tmp_path / budget).metrics
        again = evaluate(tmp_path / budget, memory_budget=budget).metrics
        assert again["accuracy"] == metrics["test"]["accuracy"]
        scores[metrics["data_source"]] = metrics["test"]["accuracy"]
    assert scores["memory"] >= 0.8 and abs(scores["stream"] - scores["memory"]) <= 0.1, scores


@pytest.mark.slow
def test_seeds_and_sweep_stream_too(small, tmp_path):
    cfg = TrainConfig(head="linear", memory_budget="2KB", **{**SMALL, "epochs": 8})
    assert fit(small, cfg, tmp_path / "seeds", seeds=2).metrics["metric"] >= 0.8
    assert json.loads((tmp_path / "seeds" / "seed-1" / "metrics.json").read_text())["data_source"] == "stream"
    result = invoke("sweep", small, "--grid", "lr=0.003,0.01", "--epochs", "8", "--memory-budget", "2KB",
                    "--out", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    best = json.loads((tmp_path / "sweep" / "best" / "seed-0" / "metrics.json").read_text())
    assert best["data_source"] == "stream" and best["test"]["accuracy"] >= 0.8


def test_mlp_on_a_pooled_store_reads_one_row_per_clip_and_learns(small, tmp_path):
    pooled = pool_store(small, tmp_path / "pooled").out
    assert all(open_store(pooled).meta(v).length == 1 for v in open_store(pooled).ids())
    metrics = fit(pooled, TrainConfig(head="mlp", memory_budget="100", **{**SMALL, "epochs": 8}),
                  tmp_path / "run").metrics
    assert metrics["data_source"] == "stream" and metrics["test"]["accuracy"] >= 0.8


@pytest.mark.slow
def test_cluster_eval_streams_clips_exactly_and_frames_within_noise(tmp_path):
    path = blob_store(tmp_path / "store", per_class=30, frames=40, dim=16, noise=1.0)
    runs = {}
    for level in ("video", "frame"):
        for budget in ("1GB", "32KB"):  # the frames take 300 kB as loaded
            runs[level, budget] = cluster_eval(path, ClusterConfig(level=level, memory_budget=budget, plot="pca"),
                                               tmp_path / f"{level}-{budget}")
    assert runs["video", "32KB"]["config"]["data_source"] == "stream"
    assert runs["video", "32KB"]["summary"] == runs["video", "1GB"]["summary"]  # the same points, the same KMeans
    memory, streamed = runs["frame", "1GB"], runs["frame", "32KB"]
    assert (memory["config"]["algorithm"], streamed["config"]["algorithm"]) == ("KMeans", "MiniBatchKMeans")
    assert streamed["n_points"] == memory["n_points"] == 120 * 40
    assert abs(streamed["summary"]["accuracy"] - memory["summary"]["accuracy"]) <= 0.05
    rows = (tmp_path / "frame-32KB" / "assignments.csv").read_text().splitlines()
    assert len(rows) == 1 + 120 * 40  # every frame's cluster, not only the sample's


def test_streamed_frames_refuse_pca_naming_the_budget(tmp_path):
    path = blob_store(tmp_path / "store", per_class=5, frames=4, dim=8)
    result = invoke("cluster-eval", path, "--level", "frame", "--pca", "4", "--memory-budget", "1KB", "--plot",
                    "none", "--out", tmp_path / "km")
    assert result.exit_code == 1 and "--pca at --level frame needs every frame in memory" in result.output


# -- peak memory of real processes -------------------------------------------------------------------------------------
# `cli.py ARGS` run in a child process of its own, which first imports what every stage-two run imports (about 0.9 GB
# resident, torch mostly, and some MB more or less from run to run), then resets its peak resident memory to the
# current one (Linux: /proc/self/clear_refs "5"), runs the command, and prints by how much the peak rose above that.
PEAK = """
import sys
sys.argv = sys.argv[1:]
import cli, heads.api, heads.cluster, heads.run, heads.train
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
start, code = hwm(), 0
try:
    cli.app()
except SystemExit as e:
    code = e.code
print("GROWTH_KB", hwm() - start)
sys.exit(code)
"""


def peak_growth_mb(*args) -> float:
    """How far (MB) the peak resident memory of a real `cli.py ARGS` process rose above its memory after imports."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", PEAK, *cli_command(*args)[1:]], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env=child_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.rsplit("GROWTH_KB", 1)[1]) / 1024


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """70 MB of rows as loaded (float32; 35 MB float16 on disk): a budget of 4 MB is 17 times smaller."""
    return blob_store(tmp_path_factory.mktemp("large") / "store", per_class=300, frames=60, dim=256, noise=5.0)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "lstm", "knn"])
def test_fit_head_under_a_budget_17_times_smaller_than_the_store_peaks_lower_and_scores_alike(large, tmp_path, head):
    loaded_mb = sum(m.length for m in open_store(large).items()) * 256 * 4 / 2**20
    flags = ["--head", head, "--epochs", "3", "--patience", "3", "--hidden", "32", "--max-frames", "16"]
    peak, accuracy = {}, {}
    for budget in ("1GB", "4MB"):
        out = tmp_path / budget
        peak[budget] = peak_growth_mb("fit-head", large, *flags, "--memory-budget", budget, "--out", out)
        metrics = json.loads((out / "metrics.json").read_text())
        accuracy[metrics["data_source"]] = metrics["test"]["accuracy"]
    assert peak["4MB"] < peak["1GB"] - loaded_mb / 2, (peak, loaded_mb)
    assert accuracy["memory"] >= 0.9 and abs(accuracy["stream"] - accuracy["memory"]) <= 0.05, accuracy


@pytest.mark.slow
def test_cluster_eval_under_a_budget_17_times_smaller_than_the_store_peaks_lower_and_scores_alike(large, tmp_path):
    loaded_mb = sum(m.length for m in open_store(large).items()) * 256 * 4 / 2**20
    peak, result = {}, {}
    for budget in ("1GB", "4MB"):
        out = tmp_path / budget
        peak[budget] = peak_growth_mb("cluster-eval", large, "--level", "frame", "--n-init", "2", "--plot", "none",
                                      "--memory-budget", budget, "--out", out)
        result[budget] = json.loads((out / "metrics.json").read_text())
    assert result["4MB"]["config"]["data_source"] == "stream"
    assert peak["4MB"] < peak["1GB"] - loaded_mb / 2, (peak, loaded_mb)
    nmi = [result[b]["summary"]["nmi"] for b in ("1GB", "4MB")]
    assert abs(nmi[0] - nmi[1]) <= 0.05, nmi
