"""heads.report: per-class scores and the most confident mistakes against hand-computed values."""
import csv

import numpy as np
import pytest

from heads.report import mistakes, per_class, write_report
from heads.run import SplitPredictions


def predictions(task, truth, targets, probs, labels, threshold=0.5):
    ids = [f"v{i}" for i in range(len(truth))]
    return SplitPredictions(ids, [f"/videos/{v}.mp4" for v in ids], truth, np.asarray(targets),
                            np.asarray(probs, dtype=np.float32), labels, task, threshold, "linear", "store", 0, [])


MULTICLASS = dict(task="multiclass", truth=[["a"], ["a"], ["b"], ["c"]], targets=[0, 0, 1, 2], labels=["a", "b", "c"],
                  probs=[[.7, .2, .1], [.1, .8, .1], [.3, .6, .1], [.5, .1, .4]])


def test_multiclass_per_class_scores_and_mistakes_by_confidence():
    p = predictions(**MULTICLASS)
    rows = {r.label: r for r in per_class(p)}
    assert (rows["a"].precision, rows["a"].recall, rows["a"].support) == (0.5, 0.5, 2)
    assert (rows["b"].precision, rows["b"].recall, rows["b"].f1) == (0.5, 1.0, pytest.approx(2 / 3))
    assert (rows["c"].precision, rows["c"].recall, rows["c"].support) == (0.0, 0.0, 1)
    found = mistakes(p)
    assert [(m.id, m.true, m.predicted) for m in found] == [("v1", "a", "b"), ("v3", "c", "a")]
    assert [m.prob for m in found] == pytest.approx([0.8, 0.5]) and found[1].true_prob == pytest.approx(0.4)
    assert len(mistakes(p, top=1)) == 1


def test_multilabel_mistakes_are_false_positives_at_the_threshold():
    p = predictions("multilabel", [["x"], ["x", "y"]], [[1, 0], [1, 1]], [[.9, .7], [.2, .6]], ["x", "y"])
    rows = {r.label: r for r in per_class(p)}
    assert (rows["x"].precision, rows["x"].recall) == (1.0, 0.5)
    assert (rows["y"].precision, rows["y"].recall) == (0.5, 1.0)
    (m,) = mistakes(p)
    assert (m.id, m.predicted, m.true) == ("v0", "y", "x") and m.prob == pytest.approx(0.7)


def test_write_report_writes_the_tables_and_plots(tmp_path):
    paths = write_report(predictions(**MULTICLASS), tmp_path, "test")
    assert sorted(p.name for p in paths) == ["confusion.png", "mistakes.csv", "per_class.csv", "per_class.png"]
    table = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert [r["label"] for r in table] == ["a", "b", "c"] and table[0]["support"] == "2"
    assert [r["video"] for r in csv.DictReader(open(tmp_path / "mistakes.csv"))] == ["v1", "v3"]
