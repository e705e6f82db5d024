"""Stage two through the CLI on real tiny videos: fit-head, evaluate, predict, runs, cluster-eval."""
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from data.synth import make_temporal_dataset
from featstore import open_store
from heads.run import load_run, predict_features

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--every", "2", "--size", "32", "--crop", "none",
           "--workers", "0"]


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
    shutil.copy(store.meta(vid).path, fresh)
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
    holdout = tmp_path / "holdout.csv"
    holdout.write_text("path,label,split\n" + "\n".join(
        f"{manifest.parent / r.split(',')[0]},{r.split(',')[1]},holdout" for r in rows[1:5]) + "\n")
    assert invoke("extract", holdout, *EXTRACT, "--store", tmp_path / "h").exit_code == 0
    res = invoke("evaluate", root / "runs" / "lin", "--store", tmp_path / "h", "--split", "holdout", "--json")
    assert res.exit_code == 0, res.output
    assert "accuracy" in json.dumps(json.loads(res.stdout))
    other = [a if a != "2" else "3" for a in EXTRACT]  # --every 3
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
    rows = ["path,label,split"]
    for i in range(40):
        red, blue = i % 2, (i // 2) % 2
        img = np.zeros((32, 32, 3), np.uint8)
        img[..., 0], img[..., 2] = 200 * red, 200 * blue
        img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"p{i}.png")
        labels = "|".join(n for n, on in (("red", red), ("blue", blue), ("any", 1)) if on)
        rows.append(f"p{i}.png,{labels},{'test' if i >= 28 else 'train'}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_multilabel_image_store_trains_like_videos(tmp_path):
    """Posters-style data: one frame per item, several labels each, chosen automatically as multilabel."""
    assert invoke("extract", multilabel_images(tmp_path), *EXTRACT, "--store", tmp_path / "s").exit_code == 0
    res = invoke("fit-head", tmp_path / "s", "--head", "mlp", "--epochs", "30", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel"
    assert metrics["test"]["mAP"] > 0.9 and "mAP@3" in metrics["test"]


def test_names_that_look_like_rich_markup_are_printed_literally(tmp_path):
    from test_heads_train import blob_clips, write_store

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


def test_evaluate_val_after_refit_says_it_is_not_a_validation_score(trained):
    root, _ = trained
    res = invoke("evaluate", root / "runs" / "lin", "--split", "val", "--json")
    assert res.exit_code == 0, res.output
    assert "refit on train + val" in json.loads(res.stdout)["seen_in_training"]
    assert "note: val:" in res.stderr
    res = invoke("evaluate", root / "runs" / "lin", "--split", "test", "--json")
    assert "seen_in_training" not in json.loads(res.stdout)
