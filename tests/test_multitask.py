"""heads.multitask: two stores, each with its own labels, in one trunk with a classifier per store."""
import json

import numpy as np
import pytest

from heads.models import HeadError
from heads.multitask import evaluate_multi, fit_multi, predict_multi
from heads.run import list_runs, load_run, predict_features
from heads.train import TrainConfig
from helpers import SMALL, blob_clips, invoke, write_store

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {"backbone": "synthetic", "every": 1}


def relabel(clips, prefix):
    return [(f"{prefix}{vid}", label.replace("class", prefix), group, split, feats)
            for vid, label, group, split, feats in clips]


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    a = write_store(root / "ucf", relabel(blob_clips(n_classes=3, per_class=12, seed=1), "u"), CONFIG)
    b = write_store(root / "hmdb", relabel(blob_clips(n_classes=2, per_class=12, seed=2), "h"), CONFIG)
    return root, a, b


def test_one_trunk_learns_each_store_on_its_own_labels(two_stores):
    root, a, b = two_stores
    m = fit_multi([a, b], TrainConfig(head="mlp", **SMALL), root / "run")
    per = m["per_store"]
    assert set(per) == {"ucf", "hmdb"}
    assert per["ucf"]["test"]["per_class"].keys() == {"u0", "u1", "u2"}  # scored over its own labels only
    assert per["hmdb"]["test"]["confusion_labels"] == ["h0", "h1"]
    assert per["ucf"]["test"]["accuracy"] > 0.8 and per["hmdb"]["test"]["accuracy"] > 0.8
    assert m["test"]["accuracy"] == pytest.approx(np.mean([p["test"]["accuracy"] for p in per.values()]))
    assert m["n_test"] == 9 + 6  # each store split by its own column
    again = evaluate_multi(root / "run", "test")
    assert {k: v["accuracy"] for k, v in again.items()} == {k: v["test"]["accuracy"] for k, v in per.items()}
    model, ckpt = load_run(root / "run")
    from featstore import open_store
    feats = [open_store(b).features("h" + "c0_0")]
    (out,) = predict_multi(ckpt, predict_features(model, ckpt, feats))
    assert set(out) == {"ucf", "hmdb"} and out["hmdb"][0] == ["h0", "h1"]
    assert out["hmdb"][1].sum() == pytest.approx(1.0) and out["hmdb"][1].argmax() == 0
    assert {r["name"]: r for r in list_runs(root)}["run"]["accuracy"] == m["test"]["accuracy"]


def test_stores_with_other_features_are_refused_listing_the_differences(two_stores, tmp_path):
    _, a, _ = two_stores
    other = write_store(tmp_path / "r50", relabel(blob_clips(n_classes=2, per_class=4), "x"),
                        {"backbone": "resnet50", "every": 10})
    with pytest.raises(HeadError, match=r"different settings \(backbone: first has 'synthetic', second has "
                                        r"'resnet50'; every: first has 1, second has 10\)"):
        fit_multi([a, other], TrainConfig(head="linear", **SMALL), tmp_path / "run")


def test_cli_fit_head_with_two_stores_and_evaluate_name_each_store(two_stores, tmp_path):
    _, a, b = two_stores
    res = invoke("fit-head", a, b, "--head", "lstm", "--epochs", "5", "--hidden", "16", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "ucf test" in res.stdout and "hmdb test" in res.stdout and "mean test" in res.stdout
    res = invoke("evaluate", tmp_path / "r", "--json")
    assert res.exit_code == 0 and set(json.loads(res.stdout)) == {"ucf", "hmdb"}
