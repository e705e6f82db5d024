"""Stage two through the CLI on real tiny videos: fit-head, evaluate, predict, runs, cluster-eval."""
import json
import shutil

import numpy as np
import pytest

from data.synth import make_temporal_dataset
from featstore import open_store
from heads.run import load_run, predict_features
from helpers import extract_flags, invoke, write_manifest

EXTRACT = extract_flags(every=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_heads")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=8, size=32, seed=1)
    assert invoke("extract", manifest, *EXTRACT, "--store", root / "store").exit_code == 0
    res = invoke("fit-head", root / "store", "--head", "linear", "--epochs", "3", "--out", root / "runs" / "lin")
    assert res.exit_code == 0, res.output
    return root, manifest


def test_fit_head_writes_a_complete_run_directory(trained):
    root, _ = trained
    run = root / "runs" / "lin"
    for name in ("config.json", "history.csv", "metrics.json", "head.pt", "curves.png"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["store_fingerprint"] == open_store(root / "store").fingerprint


def test_predict_on_a_fresh_file_equals_the_head_on_the_stored_features(trained, tmp_path):
    root, manifest = trained
    store = open_store(root / "store")
    vid = store.ids()[0]
    fresh = tmp_path / "never_seen.mp4"
    shutil.copy(store.meta(vid)["path"], fresh)
    res = invoke("predict", root / "runs" / "lin", fresh, "--json", "--top", "4")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    model, ckpt = load_run(root / "runs" / "lin")
    expected = predict_features(model, ckpt, [store.features(vid)])[0]
    got = {t["label"]: t["prob"] for t in row["top"]}
    for label, p in zip(ckpt["labels"], expected):
        assert got[label] == pytest.approx(float(p), abs=1e-3)


def test_predict_reports_a_broken_file_and_exits_2(trained, tmp_path):
    root, _ = trained
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    res = invoke("predict", root / "runs" / "lin", tmp_path / "broken.mp4", "--json")
    assert res.exit_code == 2 and "error" in json.loads(res.stdout)[0]


def test_evaluate_scores_a_named_split_of_another_store_and_refuses_other_settings(trained, tmp_path):
    root, manifest = trained
    rows = manifest.read_text().splitlines()
    holdout = write_manifest(tmp_path, [(manifest.parent / r.split(",")[0], r.split(",")[1], "holdout")
                                        for r in rows[1:5]], ["path", "label", "split"], name="holdout.csv")
    assert invoke("extract", holdout, *EXTRACT, "--store", tmp_path / "h").exit_code == 0
    res = invoke("evaluate", root / "runs" / "lin", "--store", tmp_path / "h", "--split", "holdout", "--json")
    assert res.exit_code == 0, res.output
    assert "accuracy" in json.dumps(json.loads(res.stdout))
    other = extract_flags(every=3)
    assert invoke("extract", holdout, *other, "--store", tmp_path / "h3").exit_code == 0
    res = invoke("evaluate", root / "runs" / "lin", "--store", tmp_path / "h3", "--split", "holdout")
    assert res.exit_code == 1 and "every" in res.output and "Traceback" not in res.output


def test_runs_table_lists_head_and_cluster_runs(trained):
    root, _ = trained
    res = invoke("cluster-eval", root / "store", "--plot", "pca", "--out", root / "runs" / "km")
    assert res.exit_code == 0, res.output
    rows = json.loads(invoke("runs", root / "runs", "--json").stdout)
    assert {r["name"] for r in rows} == {"lin", "km"}
    assert "lin" in invoke("runs", root / "runs").stdout


def test_head_cli_user_errors_are_one_line(trained, tmp_path):
    root, _ = trained
    res = invoke("fit-head", tmp_path / "nowhere", "--head", "lstm")
    assert res.exit_code == 1 and "no store at" in res.output and "Traceback" not in res.output
    res = invoke("fit-head", root / "store", "--head", "cnn")
    assert res.exit_code == 1 and "cnn" in res.output  # a bad flag value is a user error (typer alone: 2)
    res = invoke("cluster-eval", root / "store", "--k-range", "five")
    assert res.exit_code == 1 and "--k-range" in res.output


def multilabel_images(root):
    """40 noisy 32 px images labelled red / blue / any by their colour, the last 12 in test; returns the manifest."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        red, blue = i % 2, (i // 2) % 2
        img = np.zeros((32, 32, 3), np.uint8)
        img[..., 0], img[..., 2] = 200 * red, 200 * blue
        img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"p{i}.png")
        labels = "|".join(n for n, on in (("red", red), ("blue", blue), ("any", 1)) if on)
        rows.append((f"p{i}.png", labels, "test" if i >= 28 else "train"))
    return write_manifest(root, rows, ["path", "label", "split"])


@pytest.fixture(scope="module")
def multilabel_store(tmp_path_factory):
    """Posters-style data: one frame per item, several labels each (--every 1: images have one frame)."""
    root = tmp_path_factory.mktemp("multilabel")
    assert invoke("extract", multilabel_images(root), *extract_flags(), "--store", root / "s").exit_code == 0
    return root


def test_multilabel_image_store_trains_like_videos(multilabel_store, tmp_path):
    """Several labels per item are chosen automatically as multilabel."""
    res = invoke("fit-head", multilabel_store / "s", "--head", "mlp", "--epochs", "30", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    assert metrics["test"]["mAP"] > 0.9 and "mAP@3" in metrics["test"]


def test_fixed_threshold_run_and_predict_returns_the_labels_above_it(multilabel_store, tmp_path):
    res = invoke("fit-head", multilabel_store / "s", "--head", "mlp", "--epochs", "30", "--threshold", "0.4",
                 "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["threshold"] == 0.4 and m["threshold_source"] == "fixed (--threshold)" and "tuned_threshold" in m
    assert m["test"]["micro_f1_fixed"] == m["test"]["micro_f1"] and "micro_f1_tuned" in m["test"]
    res = invoke("predict", tmp_path / "run", multilabel_store / "p3.png", "--json", "--top", "3")
    (row,) = json.loads(res.stdout)
    above = sorted(t["label"] for t in row["top"] if t["prob"] >= 0.4)
    assert sorted(row["labels"]) == above and row["threshold"] == 0.4
    assert {"red", "blue", "any"} >= set(row["labels"]) and "any" in row["labels"]
