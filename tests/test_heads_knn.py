"""heads.knn (fit-head --head knn): the vote against a hand computation, its scores, and a run like any other."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cli
from featstore import open_store
from featstore.pool import pool_store
from heads.api import evaluate, fit
from heads.config import TrainConfig
from heads.models import HeadError
from heads.run import load_early_head, load_run, predict_features, split_predictions
from test_heads_train import D, SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)

# Six videos of two classes, frames whose means are easy to follow: (id, label, split, frames)
SIX = [("a1", "a", "train", [[1, 0, 0], [1, 0, 0]]),
       ("a2", "a", "train", [[1, 1, 0], [1, 1, 0]]),
       ("b1", "b", "train", [[0, 1, 0]]),
       ("b2", "b", "val", [[-1, 2, 0], [-1, 0, 0]]),
       ("t1", "a", "test", [[2, 1, 0], [2, 1, 0]]),
       ("t2", "b", "test", [[0, 2, 1], [0, 2, -1]])]


def six_store(path):
    clips = []
    for vid, label, split, frames in SIX:
        feats = np.zeros((len(frames), D))
        feats[:, :3] = frames
        clips.append((vid, label, vid, split, feats))
    return write_store(path, clips)


def hand_votes(query, bank, labels, k, temperature):
    """Vote shares of classes a, b: the k most cosine-similar bank vectors, each weighing exp(cos / T)."""
    unit = lambda v: np.asarray(v, float) / np.linalg.norm(v)  # noqa: E731
    sims = sorted(((float(unit(query) @ unit(v)), label) for v, label in zip(bank, labels)), reverse=True)[:k]
    votes = {"a": 0.0, "b": 0.0}
    for sim, label in sims:
        votes[label] += np.exp(sim / temperature)
    total = sum(votes.values())
    return [votes["a"] / total, votes["b"] / total]


def test_knn_votes_match_a_hand_computation_on_six_videos(tmp_path):
    store = six_store(tmp_path / "six")
    fit(store, TrainConfig(head="knn", k=3, temperature=0.5), tmp_path / "run")
    means = {vid: np.mean(frames, 0) for vid, _, _, frames in SIX}
    bank = ["a1", "a2", "b1", "b2"]  # refit: the final head remembers train + val
    p = split_predictions(tmp_path / "run", split="test")
    assert p.ids == ["t1", "t2"] and p.labels == ["a", "b"]
    for vid, probs in zip(p.ids, p.probs):
        expected = hand_votes(means[vid], [means[v] for v in bank], [v[0] for v in bank], 3, 0.5)
        np.testing.assert_allclose(probs, expected, rtol=1e-5)
    # metrics.json's val comes from the early head, which remembers train only: b2 is not its own neighbour
    model, ckpt = load_run(tmp_path / "run")
    early = load_early_head(tmp_path / "run", ckpt)
    b2 = np.zeros((2, D), np.float32)
    b2[:, :3] = SIX[3][3]
    expected = hand_votes(means["b2"], [means[v] for v in bank[:3]], ["a", "a", "b"], 3, 0.5)
    np.testing.assert_allclose(predict_features(early, ckpt, [b2])[0], expected, rtol=1e-5)
    own = hand_votes(means["b2"], [means[v] for v in bank], ["a", "a", "b", "b"], 3, 0.5)
    np.testing.assert_allclose(predict_features(model, ckpt, [b2])[0], own, rtol=1e-5)


def test_knn_scores_like_the_linear_head_on_separable_classes(tmp_path):
    store = write_store(tmp_path / "blob", blob_clips())
    linear = fit(store, TrainConfig(head="linear", **SMALL), tmp_path / "lin").metrics
    knn = fit(store, TrainConfig(head="knn"), tmp_path / "knn").metrics
    assert knn["test"]["accuracy"] >= 0.9 and knn["test"]["accuracy"] >= linear["test"]["accuracy"] - 0.1
    assert (knn["n_params"], knn["epochs_run"], knn["best_epoch"]) == (0, 0, 0)


def test_knn_on_a_pooled_store_votes_as_on_its_source(tmp_path):
    store = write_store(tmp_path / "blob", blob_clips())
    pooled = pool_store(store, tmp_path / "pooled").out
    cfg = TrainConfig(head="knn", k=5, temperature=0.1)
    fit(store, cfg, tmp_path / "frames")
    fit(pooled, cfg, tmp_path / "rows")
    a, b = (split_predictions(tmp_path / name) for name in ("frames", "rows"))
    assert a.ids == b.ids
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-2)  # the pooled rows are float16-rounded means
    assert (a.probs.argmax(1) == b.probs.argmax(1)).all()


def test_a_multilabel_knn_run_reports_map_and_a_tuned_threshold(tmp_path):
    rng = np.random.default_rng(0)
    clips = []
    for i in range(64):
        has = rng.random(3) < 0.5
        has[i % 3] = True
        feats = rng.normal(0, 0.5, (5, D))
        feats[:, :3] += np.array(has) * 2.0
        clips.append((f"m{i}", "|".join(n for n, h in zip("xyz", has) if h), f"g{i}", "test" if i % 4 == 0
                      else "train", feats))
    metrics = fit(write_store(tmp_path / "ml", clips), TrainConfig(head="knn", k=10), tmp_path / "run").metrics
    assert metrics["task"] == "multilabel" and metrics["test"]["mAP"] > 0.9
    assert 0.05 <= metrics["threshold"] <= 0.95


def test_a_knn_run_is_a_run_like_any_other(tmp_path):
    runner = CliRunner()
    store = write_store(tmp_path / "blob", blob_clips())
    runs = tmp_path / "runs"
    for head in ("knn", "linear"):
        res = runner.invoke(cli.app, ["fit-head", str(store), "--head", head, "--k", "5", "--temperature", "0.1",
                                      "--epochs", "5", "--out", str(runs / head)])
        assert res.exit_code == 0, res.output
    names = {p.name for p in (runs / "knn").iterdir()}
    assert {"config.json", "splits.json", "history.csv", "metrics.json", "head.pt"} <= names
    assert "curves.png" not in names  # no epochs to draw
    config = json.loads((runs / "knn" / "config.json").read_text())
    assert (config["train"]["k"], config["train"]["temperature"]) == (5, 0.1)
    metrics = json.loads((runs / "knn" / "metrics.json").read_text())
    res = runner.invoke(cli.app, ["evaluate", str(runs / "knn"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["accuracy"] == metrics["test"]["accuracy"]
    rows = json.loads(runner.invoke(cli.app, ["runs", str(runs), "--json"]).stdout)
    assert {r["name"]: r["head"] for r in rows} == {"knn": "knn", "linear": "linear"}
    res = runner.invoke(cli.app, ["fuse", str(runs / "knn"), str(runs / "linear"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(runs / "knn" / "head.pt", weights_only=True)
    assert ckpt["head_config"]["kind"] == "knn" and ckpt["state_dict"]["bank"].shape[1] == D


def test_a_loaded_knn_head_predicts_the_stored_clips_as_evaluate_scores_them(tmp_path):
    store = write_store(tmp_path / "blob", blob_clips())
    fit(store, TrainConfig(head="knn", k=7), tmp_path / "run")
    model, ckpt = load_run(tmp_path / "run")
    p = split_predictions(tmp_path / "run")
    feats = [open_store(store).features(v) for v in p.ids]
    np.testing.assert_allclose(predict_features(model, ckpt, feats), p.probs, rtol=1e-5, atol=1e-6)
    assert evaluate(tmp_path / "run").metrics["accuracy"] == pytest.approx(float((p.probs.argmax(1) == p.targets)
                                                                                 .mean()))


def test_knn_flags_are_checked_and_several_stores_refused(tmp_path):
    with pytest.raises(HeadError, match="--k 0 must be at least 1"):
        TrainConfig(head="knn", k=0)
    with pytest.raises(HeadError, match="--temperature 0 must be > 0"):
        TrainConfig(head="knn", temperature=0)
    store = write_store(tmp_path / "blob", blob_clips(per_class=6))
    with pytest.raises(HeadError, match="--head knn votes with one store's labels"):
        fit([store, store], TrainConfig(head="knn"), tmp_path / "run")
