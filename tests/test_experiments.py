"""heads.experiments: repeated seeds, group-aware K-fold CV and sweeps, on tiny synthetic HDF5 stores."""
import csv
import json

import numpy as np
import pytest

from heads.experiments import fit_folds, fit_seeds, parse_grid, summarize, sweep
from heads.models import HeadError
from heads.run import list_runs, load_run
from heads.train import TrainConfig
from helpers import SMALL, blob_clips, invoke, write_store
from ui.render import differing_params

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {**SMALL, "epochs": 8, "patience": 8}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("exp") / "store", blob_clips(per_class=12))


def splits_of(run):
    return json.loads((run / "splits.json").read_text())


def test_seeds_vary_init_and_val_but_keep_test(store, tmp_path):
    m = fit_seeds(store, TrainConfig(head="linear", **FAST), tmp_path / "rep", 3)
    members = [tmp_path / "rep" / f"seed-{s}" for s in range(3)]
    assert m["kind"] == "repeated" and m["n"] == 3 and m["members"] == [p.name for p in members]
    splits = [splits_of(p) for p in members]
    assert splits[0]["test"] == splits[1]["test"] == splits[2]["test"]
    assert len({tuple(s["val"]) for s in splits}) > 1  # a new validation carving per seed
    accs = [json.loads((p / "metrics.json").read_text())["test"]["accuracy"] for p in members]
    assert m["test"]["accuracy"] == pytest.approx(np.mean(accs))
    assert m["test_std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    load_run(members[1])  # each member is a complete run
    row = list_runs(tmp_path)[0]
    assert row["accuracy"] == m["test"]["accuracy"] and row["accuracy_std"] == m["test_std"]["accuracy"]


def test_folds_cross_validate_the_training_split_and_never_read_test(store, tmp_path):
    m = fit_folds(store, TrainConfig(head="linear", **FAST), tmp_path / "cv", 3)
    folds = [splits_of(tmp_path / "cv" / f"fold-{i}") for i in range(3)]
    held = [set(f["test"]) for f in folds]
    assert not (held[0] & held[1]) and not (held[1] & held[2]) and not (held[0] & held[2])
    official_test = {vid for vid, *_ in blob_clips(per_class=12) if vid.split("_")[1] in ("0", "4", "8")}
    every = set().union(*held)
    assert not every & official_test and len(every) == 36 - len(official_test)
    for f in folds:  # no group on both sides of a fold
        groups = lambda ids: {"_".join([i.split("_")[0], str(int(i.split("_")[1]) // 2)]) for i in ids}  # noqa: E731
        assert not groups(f["test"]) & groups(f["train"] + f["val"])
    assert m["eval_split"] == "cv" and m["test"] is None and "accuracy" in m["cv"]
    row = list_runs(tmp_path)[0]
    assert (row["accuracy"], row["accuracy_std"]) == (m["cv"]["accuracy"], m["cv_std"]["accuracy"])


def test_summarize_means_and_sample_std_of_shared_numbers():
    mean, std = summarize([{"a": 1.0, "b": 2, "c": "x"}, {"a": 3.0, "b": 4}])
    assert mean == {"a": 2.0, "b": 3.0} and std["a"] == pytest.approx(np.sqrt(2))


def flipped_store(path):
    """Test clips carry the next class's label: a head that learns the train classes scores ~0 on test."""
    clips = []
    for vid, label, group, split, feats in blob_clips(per_class=12):
        if split == "test":
            label = f"class{(int(label[-1]) + 1) % 3}"
        clips.append((vid, label, group, split, feats))
    return write_store(path, clips)


def test_sweep_chooses_by_validation_and_reads_test_once(tmp_path):
    store = flipped_store(tmp_path / "flip")
    events = []
    cfg = TrainConfig(head="linear", **{**FAST, "epochs": 15, "patience": 15})
    m = sweep(store, cfg, {"lr": [1e-7, 3e-2], "hidden": [16]}, tmp_path / "sw", seeds=2,
              on_progress=events.append)
    # lr 3e-2 learns the train classes (val ~1, flipped test ~0); lr 1e-7 stays at its random init (~chance on
    # both): choosing by test would take 1e-7
    assert m["chosen"]["lr"] == 3e-2 and m["test"]["accuracy"] < 0.2
    stages = [e["stage"] for e in events]
    assert stages == ["cell"] * 2 + ["test"]  # test once, after every cell, for the chosen cell only
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert len(rows) == 2 and [r["chosen"] for r in rows].count("True") == 1
    assert all(r["test_accuracy"] == "" for r in rows if r["chosen"] == "False")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert best["chosen"] == "True"
    assert (tmp_path / "sw" / "heatmap.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "sw" / "best").iterdir()) == ["seed-0", "seed-1"]


def test_runs_lists_the_hyperparameters_that_differ(store, tmp_path):
    from heads.run import fit_head

    fit_head(store, TrainConfig(head="linear", **FAST), tmp_path / "a")
    fit_head(store, TrainConfig(head="linear", **{**FAST, "lr": 1e-2}), tmp_path / "b")
    assert differing_params(list_runs(tmp_path)) == ["lr"]
    res = invoke("runs", tmp_path)
    assert res.exit_code == 0 and "lr" in res.stdout and "0.01" in res.stdout


@pytest.mark.parametrize("spec, message", [
    (["lrr=1e-3"], "unknown key 'lrr'.*hidden"), (["lr=fast"], "lr: 'fast' is not a float"),
    (["hidden=1.5"], "hidden: '1.5' is not an int"), (["optimizer=adagrad"], "--optimizer 'adagrad'"),
    (["lr=1e-3", "lr=2e-3"], "given twice"), (["lr"], "unknown key")])
def test_bad_grid_names_the_valid_keys_or_the_value(spec, message):
    with pytest.raises(HeadError, match=message):
        parse_grid(spec, TrainConfig())


def test_sweep_cli_bad_grid_is_one_line_exit_1(store):
    res = invoke("sweep", store, "--grid", "depth=2,3")
    assert res.exit_code == 1 and "unknown key 'depth'" in res.output and "Traceback" not in res.output


def test_fit_head_seeds_cli_prints_mean_and_std(store, tmp_path):
    res = invoke("fit-head", store, "--seeds", "2", "--epochs", "4", "--hidden", "16", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "±" in res.stdout and (tmp_path / "r" / "seed-1" / "head.pt").exists()
    res = invoke("runs", tmp_path)
    assert "±" in res.stdout


@pytest.mark.parametrize("flags", [["--seeds", "2"], ["--folds", "2"]])
def test_repeated_runs_refuse_a_folder_of_other_files_unless_forced(store, tmp_path, flags):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["fit-head", store, "--head", "linear", "--epochs", "2", "--device", "cpu", "--out", out, *flags]
    r = invoke(*args)
    assert r.exit_code == 1 and "notes.txt" in r.output and "--force" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    r = invoke(*args, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "notes.txt").exists() and (out / "metrics.json").exists()  # --force replaces it whole
    r = invoke(*args)  # a rerun into its own run folder needs no --force
    assert r.exit_code == 0, r.output
