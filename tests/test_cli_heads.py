"""Stage two through the CLI on real tiny videos: fit-head, evaluate, predict, runs, cluster-eval."""
import json
import shutil

import numpy as np
import pytest
from helpers import (assert_predict_equals_the_head_on_stored_features, blob_clips, extract_flags, invoke,
                     write_manifest, write_store)

from featstore import open_store


def test_fit_head_writes_a_complete_run_directory(tiny_store, tiny_run):
    for name in ("config.json", "history.csv", "metrics.json", "head.pt", "curves.png"):
        assert (tiny_run / name).exists(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["store_fingerprint"] == open_store(tiny_store).fingerprint


def test_predict_on_a_fresh_file_equals_the_head_on_the_stored_features(tiny_store, tiny_run, tmp_path):
    assert_predict_equals_the_head_on_stored_features(tiny_run, tiny_store, tmp_path)


def test_predict_reports_a_broken_file_and_exits_2(tiny_run, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    res = invoke("predict", tiny_run, tmp_path / "broken.mp4", "--json")
    assert res.exit_code == 2 and "error" in json.loads(res.stdout)[0]


def test_evaluate_scores_a_named_split_of_another_store_and_refuses_other_settings(tiny_store, tiny_run, tmp_path):
    manifest = tiny_store.parent / "m.csv"
    rows = [r.split(",") for r in manifest.read_text().splitlines()[1:5]]
    holdout = write_manifest(tmp_path, [(manifest.parent / path, label, "holdout") for path, label, *_ in rows],
                             ["path", "label", "split"], name="holdout.csv")
    same = extract_flags(precision="fp32")  # tiny_store's settings
    assert invoke("extract", holdout, *same, "--store", tmp_path / "h").exit_code == 0
    res = invoke("evaluate", tiny_run, "--store", tmp_path / "h", "--split", "holdout", "--json")
    assert res.exit_code == 0, res.output
    assert "accuracy" in json.dumps(json.loads(res.stdout))
    assert invoke("extract", holdout, *extract_flags(every=3), "--store", tmp_path / "h3").exit_code == 0
    res = invoke("evaluate", tiny_run, "--store", tmp_path / "h3", "--split", "holdout")
    assert res.exit_code == 1 and "every" in res.output and "Traceback" not in res.output


def test_runs_table_lists_head_and_cluster_runs(tiny_store, tiny_run, tmp_path):
    shutil.copytree(tiny_run, tmp_path / "runs" / "lin")
    res = invoke("cluster-eval", tiny_store, "--plot", "pca", "--out", tmp_path / "runs" / "km")
    assert res.exit_code == 0, res.output
    rows = json.loads(invoke("runs", tmp_path / "runs", "--json").stdout)
    assert {r["name"] for r in rows} == {"lin", "km"}
    assert "lin" in invoke("runs", tmp_path / "runs").stdout


def test_head_cli_user_errors_are_one_line(tiny_store, tmp_path):
    res = invoke("fit-head", tmp_path / "nowhere", "--head", "lstm")
    assert res.exit_code == 1 and "no store at" in res.output and "Traceback" not in res.output
    res = invoke("fit-head", tiny_store, "--head", "cnn")
    assert res.exit_code == 1 and "cnn" in res.output  # a bad flag value is a user error (typer alone: 2)
    res = invoke("cluster-eval", tiny_store, "--k-range", "five")
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


def test_names_that_look_like_rich_markup_are_printed_literally(tmp_path):
    store = write_store(tmp_path / "s[/x]", blob_clips(per_class=6))
    runs_dir = tmp_path / "runs[b]"
    for args in (["fit-head", store, "--epochs", "2", "--out", runs_dir / "lin[/x]"],
                 ["fit-head", store, "--epochs", "2", "--seeds", "2", "--out", runs_dir / "rep[b]"],
                 ["evaluate", runs_dir / "lin[/x]"],
                 ["cluster-eval", store, "--plot", "none", "--out", runs_dir / "km[/b]"],
                 ["runs", runs_dir]):
        res = invoke(*args)
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        flat = "".join(res.stdout.split())  # tables wrap long titles and cells
        assert "[/x]" in flat or "[b]" in flat or "[/b]" in flat, (args, res.stdout)


def test_a_knn_run_predicts_a_fresh_file_as_its_head_scores_the_stored_features(tiny_store, tmp_path):
    assert invoke("fit-head", tiny_store, "--head", "knn", "--k", "3", "--out", tmp_path / "knn").exit_code == 0
    assert_predict_equals_the_head_on_stored_features(tmp_path / "knn", tiny_store, tmp_path)


def test_evaluate_val_after_refit_says_it_is_not_a_validation_score(tiny_run):
    res = invoke("evaluate", tiny_run, "--split", "val", "--json")
    assert res.exit_code == 0, res.output
    assert "refit on train + val" in json.loads(res.stdout)["seen_in_training"]
    assert "note: val:" in res.stderr
    res = invoke("evaluate", tiny_run, "--split", "test", "--json")
    assert "seen_in_training" not in json.loads(res.stdout)
