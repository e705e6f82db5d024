"""Seed-compatible knobs and metrics: RMSprop, scheduler flags, train metric, fixed vs tuned threshold,
per-label P/R/F1, mAP@K under both normalisations, predict on a multilabel run."""
import csv
import json

import numpy as np
import pytest
from test_cli_heads import multilabel_images
from test_heads_metrics import P, Y
from test_heads_train import SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

import cli
from heads.metrics import multilabel_metrics
from heads.run import fit_head
from heads.train import TrainConfig


def test_map_at_k_under_both_normalisations_and_per_label_prf():
    m = multilabel_metrics(Y, P, ["a", "b", "c"], threshold=0.5, tuned=0.65, fixed=0.5)
    # AP@3 numerators 2, 1, 7/6 (see test_heads_metrics); ÷ min(3, positives) = 2, 1, 2 vs ÷ 3
    assert m["mAP@3_divmin"] == m["mAP@3"] == pytest.approx((1 + 1 + 7 / 12) / 3)
    assert m["mAP@3_divK"] == pytest.approx(25 / 54)
    assert m["per_label"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert (m["per_label"]["b"]["precision"], m["per_label"]["b"]["recall"]) == (1.0, 0.5)
    assert m["micro_f1_fixed"] == m["micro_f1"]  # decision threshold = the fixed one here
    # at 0.65: predictions [1,0,0] [0,1,0] [0,0,1] [0,0,0] -> TP 2, FP 1, FN 3
    assert m["tuned_threshold"] == 0.65 and m["micro_f1_tuned"] == pytest.approx(4 / 8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("knobs") / "s", blob_clips(per_class=10))


def history(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_rmsprop_learns_and_train_accuracy_is_recorded(store, tmp_path):
    m = fit_head(store, TrainConfig(head="linear", optimizer="rmsprop", **SMALL), tmp_path / "r")
    assert m["test"]["accuracy"] > 0.6
    rows = history(tmp_path / "r")
    assert all(0 <= float(r["train_metric"]) <= 1 for r in rows)
    assert float(rows[-1]["train_metric"]) > float(rows[0]["train_metric"]) or float(rows[0]["train_metric"]) == 1


def test_scheduler_flags_set_the_decay(store, tmp_path):
    cfg = TrainConfig(head="linear", scheduler="exp", lr_gamma=0.5, refit=False, **{**SMALL, "epochs": 4,
                                                                                     "patience": 4})
    fit_head(store, cfg, tmp_path / "exp")
    lrs = [float(r["lr"]) for r in history(tmp_path / "exp")]
    assert lrs == pytest.approx([3e-3 * 0.5 ** i for i in range(4)])
    cfg = TrainConfig(head="linear", lr_factor=0.1, lr_patience=1, refit=False, **{**SMALL, "lr": 1e-6})
    fit_head(store, cfg, tmp_path / "plateau")  # lr 1e-6: the val loss barely moves, so the lr drops
    ratios = {round(lr / 1e-6, 6) for lr in (float(r["lr"]) for r in history(tmp_path / "plateau"))}
    assert ratios <= {1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05, 1e-06} and len(ratios) > 1


@pytest.mark.parametrize("flags, message", [({"lr_factor": 1.5}, "--lr-factor 1.5"),
                                            ({"lr_gamma": 0.0}, "--lr-gamma 0.0"),
                                            ({"threshold": 1.2}, "--threshold 1.2")])
def test_bad_knobs_are_named(flags, message):
    from heads.models import HeadError

    with pytest.raises(HeadError, match=message):
        TrainConfig(**flags)


def test_fixed_threshold_run_and_predict_returns_the_labels_above_it(tmp_path):
    runner = CliRunner()
    extract = ["--backbone", "resnet18", "--weights", "none", "--every", "1", "--size", "32", "--crop", "none",
               "--workers", "0"]
    assert runner.invoke(cli.app, ["extract", str(multilabel_images(tmp_path)), *extract,
                                   "--store", str(tmp_path / "s")]).exit_code == 0
    res = runner.invoke(cli.app, ["fit-head", str(tmp_path / "s"), "--head", "mlp", "--epochs", "30",
                                  "--threshold", "0.4", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["threshold"] == 0.4 and m["threshold_source"] == "fixed (--threshold)" and "tuned_threshold" in m
    assert m["test"]["micro_f1_fixed"] == m["test"]["micro_f1"] and "micro_f1_tuned" in m["test"]
    res = runner.invoke(cli.app, ["predict", str(tmp_path / "run"), str(tmp_path / "p3.png"), "--json", "--top", "3"])
    (row,) = json.loads(res.stdout)
    above = sorted(t["label"] for t in row["top"] if t["prob"] >= 0.4)
    assert sorted(row["labels"]) == above and row["threshold"] == 0.4
    assert {"red", "blue", "any"} >= set(row["labels"]) and "any" in row["labels"]
