"""heads.data, heads.train, heads.run on tiny synthetic stores written with StoreWriter."""
import csv
import json

import numpy as np
import pytest
import torch

from heads.data import (Augment, batches, build_vocab, detect_task, encode_targets, eval_frames, load_cache,
                        make_splits, train_frames)
from heads.models import HEADS, HeadError
from heads.run import evaluate_run, fit_head, list_runs, load_run, predict_features
from heads.train import TrainConfig, cpu_state
from helpers import SMALL, D, blob_clips, write_store

pytestmark = pytest.mark.usefixtures("one_thread")


def order_clips(n=96, seed=0):
    """The same frames in opposite temporal order: a rising vs a falling ramp on dim 0, noise elsewhere."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n):
        up = i % 2 == 0
        t = int(rng.integers(6, 13))
        feats = rng.normal(0, 0.3, (t, D))
        feats[:, 0] = np.linspace(-1, 1, t) * (1 if up else -1)
        clips.append((f"v{i}", "up" if up else "down", f"g{i // 4}", "test" if i % 8 >= 6 else "train", feats))
    return clips


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("blob") / "store", blob_clips())


@pytest.fixture(scope="module")
def blob_run(blob_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lin"
    metrics = fit_head(blob_store, TrainConfig(head="linear", **SMALL), out)
    return out, metrics


# -- data: loading, task, splits -------------------------------------------------------------------
def test_load_cache_keeps_clips_ragged(blob_store):
    cache = load_cache(blob_store)
    assert len(cache) == 48 and cache.dim == D
    assert int(cache.lengths.sum()) == cache.features.shape[0]
    assert torch.equal(cache.offsets[1:], torch.cumsum(cache.lengths, 0)[:-1])


def test_task_detection():
    assert detect_task([["a"], ["b"]]) == "multiclass"
    assert detect_task([["a"], ["a", "b"]]) == "multilabel"
    with pytest.raises(HeadError, match="--task multilabel"):
        detect_task([["a"], ["a", "b"]], "multiclass")


def test_group_split_never_puts_a_group_on_two_sides(tmp_path):
    cache = load_cache(write_store(tmp_path / "s", blob_clips(per_class=20, split=False)))
    for seed in range(3):
        splits = make_splits(cache, "group", 0.2, 0.2, seed)
        sides = [{cache.groups[i] for i in splits[name]} for name in ("train", "val", "test")]
        assert all(len(s) > 0 for s in sides)
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sorted(np.concatenate(list(splits.values()))) == list(range(len(cache)))


def test_stratified_split_keeps_every_class_in_train(tmp_path):
    clips = blob_clips(n_classes=4, per_class=6, split=False)
    clips += [("rare0", "rare", "", "", np.zeros((3, D))), ("rare1", "rare", "", "", np.ones((3, D)))]
    cache = load_cache(write_store(tmp_path / "s", clips))
    for seed in range(5):
        splits = make_splits(cache, "stratified", 0.2, 0.2, seed)
        assert {cache.labels[i][0] for i in splits["train"]} == set(build_vocab(cache.labels))


def test_official_split_uses_the_split_column_and_carves_val_from_train(blob_store):
    cache = load_cache(blob_store)
    splits = make_splits(cache, "official", 0.2, 0.2, 0)
    assert {cache.splits[i] for i in splits["test"]} == {"test"}
    assert {cache.splits[i] for i in np.concatenate([splits["train"], splits["val"]])} == {"train"}
    assert len(splits["val"]) > 0


def test_a_class_without_training_clips_is_refused_by_name(tmp_path):
    clips = blob_clips(split=True) + [("lonely", "only_in_test", "gx", "test", np.zeros((4, D)))]
    cache = load_cache(write_store(tmp_path / "s", clips))
    with pytest.raises(HeadError, match="'only_in_test'"):
        make_splits(cache, "official", 0.2, 0.2, 0)


def test_group_split_without_groups_names_the_alternative(tmp_path):
    clips = [(v, label, "", s, f) for v, label, _, s, f in blob_clips()]
    cache = load_cache(write_store(tmp_path / "s", clips))
    with pytest.raises(HeadError, match="--split stratified"):
        make_splits(cache, "group", 0.2, 0.2, 0)


# -- batching --------------------------------------------------------------------------------------
def test_batches_pad_to_their_own_longest_clip(blob_store):
    cache = load_cache(blob_store)
    y = encode_targets(cache.labels, build_vocab(cache.labels), "multiclass")
    idx = np.arange(len(cache))
    for (x, lengths, _), chunk in zip(batches(cache, y, idx, 5, max_frames=64), np.array_split(idx, range(5, 48, 5))):
        assert x.shape[1] == int(cache.lengths[chunk].max()) and torch.equal(lengths, cache.lengths[chunk])
        for row, n, i in zip(x, lengths, chunk):
            assert torch.equal(row[:n], cache.features[cache.offsets[i]:cache.offsets[i] + n])  # eval: every frame
            assert torch.all(row[n:] == 0)
    x, lengths, _ = next(iter(batches(cache, y, idx[:4], 4, max_frames=3)))
    assert x.shape[1] == 3 and torch.all(lengths <= 3)


def test_eval_frames_are_uniform_and_train_frames_sorted_and_in_range():
    lengths = torch.tensor([10, 4, 1])
    idx, n = eval_frames(lengths, 5)
    assert n.tolist() == [5, 4, 1]
    assert idx[0].tolist() == [1, 3, 5, 7, 9] and idx[1, :4].tolist() == [0, 1, 2, 3]
    gen = torch.Generator().manual_seed(0)
    for aug in (Augment(), Augment(sampling="contiguous"), Augment(frame_dropout=0.9)):
        for _ in range(20):
            idx, n = train_frames(lengths, 5, gen, aug)
            for row, k, length in zip(idx, n, lengths):
                chosen = row[:k]
                assert 1 <= k <= min(5, int(length))
                assert torch.all(chosen[1:] > chosen[:-1]) and int(chosen.max()) < length
                if aug.sampling == "contiguous":
                    assert torch.all(chosen[1:] - chosen[:-1] == 1)


# -- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_beats_chance(blob_store, tmp_path, head):
    metrics = fit_head(blob_store, TrainConfig(head=head, refit=False, **SMALL), tmp_path / head)
    assert metrics["test"]["accuracy"] >= 0.75  # chance is 1/3
    assert metrics["head"] == head and metrics["n_params"] > 0


def test_order_only_task_needs_an_order_aware_head(tmp_path):
    store = write_store(tmp_path / "order", order_clips())
    acc = {}
    for head in ("linear", "lstm", "gru", "transformer"):
        cfg = TrainConfig(head=head, refit=False, **{**SMALL, "epochs": 40, "patience": 40})
        acc[head] = fit_head(store, cfg, tmp_path / head)["test"]["accuracy"]
    assert acc["lstm"] >= 0.95 and acc["gru"] >= 0.95 and acc["transformer"] >= 0.9, acc
    assert acc["linear"] <= 0.75, acc  # the ramps have the same mean: a pooling head can only guess


def test_multilabel_run_reports_map_and_a_tuned_threshold(tmp_path):
    rng = np.random.default_rng(0)
    clips = []
    for i in range(64):
        has = rng.random(3) < 0.5
        has[i % 3] = True  # every clip has a label, some have two or three
        feats = rng.normal(0, 0.5, (5, D))
        feats[:, :3] += np.array(has) * 2.0
        label = "|".join(n for n, h in zip("xyz", has) if h)
        clips.append((f"m{i}", label, f"g{i}", "test" if i % 4 == 0 else "train", feats))
    metrics = fit_head(write_store(tmp_path / "ml", clips), TrainConfig(head="mlp", **SMALL), tmp_path / "run")
    assert metrics["task"] == "multilabel"
    assert metrics["test"]["mAP"] > 0.9 and metrics["test"]["micro_f1"] > 0.8
    assert 0.05 <= metrics["threshold"] <= 0.95 and "precision@1" in metrics["test"]


def test_same_seed_same_run(blob_store, tmp_path):
    cfg = TrainConfig(head="gru", frame_dropout=0.2, noise_std=0.1, **{**SMALL, "epochs": 5})
    a = fit_head(blob_store, cfg, tmp_path / "a")
    b = fit_head(blob_store, cfg, tmp_path / "b")
    assert a["test"] == b["test"] and a["val"] == b["val"]
    sa, sb = (torch.load(tmp_path / n / "head.pt", weights_only=True)["state_dict"] for n in "ab")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = fit_head(blob_store, TrainConfig(**{**vars(cfg), "seed": 1}), tmp_path / "c")
    sc = torch.load(tmp_path / "c" / "head.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def history(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_rmsprop_learns_and_train_accuracy_is_recorded(blob_store, tmp_path):
    m = fit_head(blob_store, TrainConfig(head="linear", optimizer="rmsprop", **SMALL), tmp_path / "r")
    assert m["test"]["accuracy"] > 0.6
    rows = history(tmp_path / "r")
    assert all(0 <= float(r["train_metric"]) <= 1 for r in rows)
    assert float(rows[-1]["train_metric"]) > float(rows[0]["train_metric"]) or float(rows[0]["train_metric"]) == 1


def test_scheduler_flags_set_the_decay(blob_store, tmp_path):
    cfg = TrainConfig(head="linear", scheduler="exp", lr_gamma=0.5, refit=False, **{**SMALL, "epochs": 4,
                                                                                     "patience": 4})
    fit_head(blob_store, cfg, tmp_path / "exp")
    lrs = [float(r["lr"]) for r in history(tmp_path / "exp")]
    assert lrs == pytest.approx([3e-3 * 0.5 ** i for i in range(4)])
    cfg = TrainConfig(head="linear", lr_factor=0.1, lr_patience=1, refit=False, **{**SMALL, "lr": 1e-6})
    fit_head(blob_store, cfg, tmp_path / "plateau")  # lr 1e-6: the val loss barely moves, so the lr drops
    ratios = {round(lr / 1e-6, 6) for lr in (float(r["lr"]) for r in history(tmp_path / "plateau"))}
    assert ratios <= {1.0, 0.1, 0.01, 0.001, 0.0001, 1e-05, 1e-06} and len(ratios) > 1


def test_bad_flags_are_named():
    with pytest.raises(HeadError, match="--optimizer 'adagrad'.*adamw, adam, sgd, rmsprop"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(HeadError, match="--val-frac 1.5"):
        TrainConfig(val_frac=1.5)


@pytest.mark.parametrize("flags, message", [({"lr_factor": 1.5}, "--lr-factor 1.5"),
                                            ({"lr_gamma": 0.0}, "--lr-gamma 0.0"),
                                            ({"threshold": 1.2}, "--threshold 1.2")])
def test_bad_knobs_are_named(flags, message):
    with pytest.raises(HeadError, match=message):
        TrainConfig(**flags)


# -- runs: files, checkpoint, evaluate, predict, list ------------------------------------------------
def test_run_directory_has_every_file(blob_run):
    out, metrics = blob_run
    for name in ("config.json", "splits.json", "history.csv", "metrics.json", "head.pt", "curves.png",
                 "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["store_fingerprint"] == metrics["store_fingerprint"] and saved["backbone"] == "synthetic"
    assert set(saved["test"]) >= {"accuracy", "top5_accuracy", "macro_f1", "per_class", "confusion"}
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["head"] == "linear" and config["store_config"]["backbone"] == "synthetic"
    phases = [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert phases.count("fit") == metrics["epochs_run"] and phases.count("refit") == metrics["best_epoch"]


def test_checkpoint_round_trip_predicts_the_same(blob_store, blob_run):
    out, metrics = blob_run
    ckpt = torch.load(out / "head.pt", weights_only=True)  # plain types and tensors only
    assert set(ckpt) >= {"state_dict", "head_config", "train_config", "labels", "task", "threshold",
                         "store_fingerprint", "store_config"}
    model, ckpt = load_run(out)
    cache = load_cache(blob_store)
    feats = [cache.features[o:o + n].numpy() for o, n in zip(cache.offsets, cache.lengths)]
    probs = predict_features(model, ckpt, feats)
    assert probs.shape == (len(cache), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    again = evaluate_run(out)
    assert again["accuracy"] == metrics["test"]["accuracy"]
    test_ids = set(json.loads((out / "splits.json").read_text())["test"])
    test = [i for i, v in enumerate(cache.ids) if v in test_ids]
    y = np.array([ckpt["labels"].index(cache.labels[i][0]) for i in test])
    assert (probs[test].argmax(1) == y).mean() == pytest.approx(metrics["test"]["accuracy"])
    assert evaluate_run(out, split="all")["n"] == len(cache)
    with pytest.raises(HeadError, match="'holdout'.*a split the store has: test, train"):
        evaluate_run(out, split="holdout")
    with pytest.raises(HeadError, match=r"expects \(T, 8\)"):
        predict_features(model, ckpt, [np.zeros((4, 5), np.float32)])


def test_a_store_with_other_settings_is_refused_naming_the_setting(blob_run, tmp_path):
    out, _ = blob_run
    other = write_store(tmp_path / "other", blob_clips(), config={"backbone": "synthetic", "every": 5})
    with pytest.raises(HeadError, match="every: store has 5, this run has 1"):
        evaluate_run(out, other)


def test_empty_test_split_reports_val_only(tmp_path):
    clips = [(v, label, g, "train", f) for v, label, g, _, f in blob_clips()]
    metrics = fit_head(write_store(tmp_path / "s", clips), TrainConfig(**{**SMALL, "epochs": 3}), tmp_path / "r")
    assert metrics["test"] is None and metrics["eval_split"] == "val" and "test split is empty" in metrics["note"]
    assert metrics["metric"] == metrics["val"]["accuracy"]


def test_list_runs_sorts_by_a_metric(blob_store, tmp_path):
    for name, head in (("a_lin", "linear"), ("b_mlp", "mlp")):
        fit_head(blob_store, TrainConfig(head=head, **{**SMALL, "epochs": 2}), tmp_path / name)
    rows = list_runs(tmp_path, sort_by="n_params")
    assert [r["name"] for r in rows] == ["b_mlp", "a_lin"]  # the MLP has more parameters
    assert rows[0]["head"] == "mlp" and rows[0]["backbone"] == "synthetic" and rows[0]["accuracy"] is not None


def test_cpu_state_is_a_cpu_copy_that_training_cannot_change():
    model = torch.nn.Linear(3, 2)
    state = cpu_state(model.state_dict())
    with torch.no_grad():
        model.weight.add_(1.0)
    assert state["weight"].device.type == "cpu" and not torch.equal(state["weight"], model.weight)


def test_stratified_split_keeps_groups_together_as_group_does_and_carves_clips_without_groups(tmp_path):
    """What docs/heads.md says (issue 24): stratified is group-aware when the store has groups; group refuses none."""
    cache = load_cache(write_store(tmp_path / "g", blob_clips(split=False)))
    stratified, group = (make_splits(cache, name, 0.2, 0.2, 0) for name in ("stratified", "group"))
    assert all(np.array_equal(stratified[k], group[k]) for k in ("train", "val", "test"))
    sides = [{cache.groups[i] for i in stratified[k]} for k in ("train", "val", "test")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    no_groups = [(vid, label, "", s, f) for vid, label, _, s, f in blob_clips(split=False)]
    cache = load_cache(write_store(tmp_path / "n", no_groups))
    assert len(make_splits(cache, "stratified", 0.2, 0.2, 0)["test"]) > 0
    with pytest.raises(HeadError, match="--split group: the store has no group"):
        make_splits(cache, "group", 0.2, 0.2, 0)
