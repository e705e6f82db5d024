"""Stage two on a clip store, through the CLI: every command works unchanged on rows that are clips."""
import json

import pytest
from helpers import assert_predict_equals_the_head_on_stored_features, invoke

from data.synth import make_temporal_dataset
from featstore import open_store

EXTRACT = ["--backbone", "r3d_18", "--weights", "none", "--clip-len", "4", "--clip-stride", "2", "--size", "32",
           "--workers", "0"]


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_heads")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=8, size=32, seed=1)
    res = invoke("extract", manifest, *EXTRACT, "--store", root / "store")
    assert res.exit_code == 0, res.output
    return root


def test_a_clip_store_holds_clip_rows(clip_store):
    s = open_store(clip_store / "store")
    assert s.config.clip_len == 4 and s.config.clip_stride == 2
    assert {s.meta(v).length for v in s.ids()} == {(8 - 4) // 2 + 1}


@pytest.mark.parametrize("head", ["linear", "lstm"])
def test_heads_train_evaluate_and_predict_on_clip_rows(clip_store, tmp_path, head):
    run = tmp_path / head
    res = invoke("fit-head", clip_store / "store", "--head", head, "--epochs", "3", "--hidden", "16", "--out", run)
    assert res.exit_code == 0, res.output
    res = invoke("evaluate", run, "--split", "all", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert 0 <= metrics["accuracy"] <= 1
    assert ("clip_accuracy" in metrics) == (head == "linear")  # only pooling heads classify a clip alone
    assert_predict_equals_the_head_on_stored_features(run, clip_store / "store", tmp_path)


def test_cluster_eval_runs_on_clip_rows(clip_store, tmp_path):
    res = invoke("cluster-eval", clip_store / "store", "--plot", "none", "--out", tmp_path / "km")
    assert res.exit_code == 0, res.output
    res = invoke("cluster-eval", clip_store / "store", "--level", "frame", "--plot", "none", "--out", tmp_path / "kf")
    assert res.exit_code == 0, res.output
