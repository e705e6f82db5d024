"""heads.fusion: late fusion of runs and concat fusion of two stores, on tiny synthetic HDF5 stores."""
import json

import numpy as np
import pytest
from test_heads_train import SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

import cli
from heads.fusion import fuse_runs
from heads.models import HeadError
from heads.run import fit_head, list_runs
from heads.train import TrainConfig

FAST = {**SMALL, "epochs": 10, "patience": 10}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("late")
    store = write_store(root / "store", blob_clips(per_class=12))
    fit_head(store, TrainConfig(head="linear", **FAST), root / "runs" / "lin")
    fit_head(store, TrainConfig(head="mlp", **FAST), root / "runs" / "mlp")
    return root


def test_late_fusion_averages_probabilities_and_is_a_listed_run(two_runs):
    runs = two_runs / "runs"
    m = fuse_runs([runs / "lin", runs / "mlp"], runs / "fused")
    assert m["n_common"] == 9 and set(m["alone"]) == {str(runs / "lin"), str(runs / "mlp")}
    lin = json.loads((runs / "lin" / "metrics.json").read_text())["test"]
    assert m["alone"][str(runs / "lin")]["accuracy"] == lin["accuracy"]  # recomputed = what fit-head reported
    only_lin = fuse_runs([runs / "lin", runs / "mlp"], two_runs / "w", weights=[1, 0])
    assert only_lin["test"]["confusion"] == lin["confusion"]  # weight 0 removes a run
    assert (runs / "fused" / "confusion.png").exists()
    row = {r["name"]: r for r in list_runs(runs)}["fused"]
    assert row["head"] == "linear+mlp" and row["accuracy"] == m["test"]["accuracy"]


def test_late_fusion_refuses_other_label_sets_and_bad_weights(two_runs, tmp_path):
    other = write_store(tmp_path / "s", [c for c in blob_clips(per_class=12) if c[1] != "class2"])
    fit_head(other, TrainConfig(head="linear", **FAST), tmp_path / "two")
    with pytest.raises(HeadError, match=r"different label sets \(only in the first: \['class2'\]"):
        fuse_runs([two_runs / "runs" / "lin", tmp_path / "two"], tmp_path / "f")
    with pytest.raises(HeadError, match="--weights"):
        fuse_runs([two_runs / "runs" / "lin", two_runs / "runs" / "mlp"], tmp_path / "f", weights=[1, 2, 3])
    res = CliRunner().invoke(cli.app, ["fuse", str(two_runs / "runs" / "lin"), str(tmp_path / "two"),
                                       "--out", str(tmp_path / "f")])
    assert res.exit_code == 1 and "different label sets" in res.output and "Traceback" not in res.output
