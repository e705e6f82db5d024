"""heads.fusion: late fusion of runs and concat fusion of two stores, on tiny synthetic HDF5 stores."""
import json

import numpy as np
import pytest

from heads.fusion import fuse_runs
from heads.models import HeadError
from heads.run import fit_head, list_runs
from heads.train import TrainConfig
from helpers import SMALL, blob_clips, invoke, write_store

pytestmark = pytest.mark.usefixtures("one_thread")

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
    res = invoke("fuse", two_runs / "runs" / "lin", tmp_path / "two", "--out", tmp_path / "f")
    assert res.exit_code == 1 and "different label sets" in res.output and "Traceback" not in res.output


def split_view_stores(root, n=48, seed=0):
    """Dim 0: store A holds y + z, store B holds z (z large, per clip); the other dims are noise. Each store alone
    is near chance, A - B is the label."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for i in range(n):
        y = i % 2
        t = int(rng.integers(3, 7))
        fa, fb = rng.normal(0, 1, (t, D)), rng.normal(0, 1, (t, D))
        z = rng.normal(0, 6)
        fa[:, 0], fb[:, 0] = (2 * y - 1) + z + rng.normal(0, 0.05, t), z + rng.normal(0, 0.05, t)
        split = "test" if i % 4 < 2 else "train"
        a.append((f"v{i}", f"c{y}", f"g{i}", split, fa))
        b.append((f"v{i}", f"c{y}", f"g{i}", split, fb))
    a.append(("only_a", "c0", "ga", "train", rng.normal(0, 1, (3, D))))
    return write_store(root / "a", a, {"backbone": "netA", "every": 1}), write_store(root / "b", b,
                                                                                   {"backbone": "netB", "every": 1})


D = 8


def test_concat_fusion_separates_what_neither_store_can_alone(tmp_path):
    from heads.fusion import fit_fused

    a, b = split_view_stores(tmp_path, n=80)
    # the label lies in one direction of tiny variance (A - B): no weight decay, a large step
    cfg = TrainConfig(head="linear", **{**SMALL, "epochs": 60, "patience": 60, "lr": 0.1, "weight_decay": 0.0})
    alone = [fit_head(s, cfg, tmp_path / f"alone{i}")["test"]["accuracy"] for i, s in enumerate((a, b))]
    fused = fit_fused([a, b], cfg, tmp_path / "fused")
    assert max(alone) < 0.7 and fused["test"]["accuracy"] > 0.9
    assert fused["fusion"]["left_out"] == {str(a): 1, str(b): 0}
    assert fused["fusion"]["left_out_examples"][str(a)] == ["only_a"] and fused["backbone"] == "netA+netB"
    res = invoke("evaluate", tmp_path / "fused")
    assert res.exit_code == 1 and "joined (--fuse)" in res.output


def test_sequence_heads_align_the_second_store_by_time(tmp_path):
    """B samples twice as often as A and starts later: each A frame gets B's nearest frame in time."""
    from featstore import StoreWriter, VideoRecord
    from heads.fusion import fused_cache

    for name, times in (("a", np.array([0.0, 0.42, 0.86, 1.24])), ("b", np.arange(0.1, 1.4, 0.2))):
        with StoreWriter(tmp_path / name, config={"backbone": name}, fingerprint_keys=["backbone"], dim=1) as w:
            for vid in ("x", "y"):
                w.add(VideoRecord(vid, label=vid, split="train", features=times[:, None].astype(np.float32),
                                  frame_index=np.arange(len(times)), time_s=times))
    _, cache, _ = fused_cache([tmp_path / "a", tmp_path / "b"], "lstm")
    assert cache.lengths.tolist() == [4, 4] and cache.dim == 2
    b_part = cache.features[:4, 1].numpy()  # B's times, divided by one scale factor
    np.testing.assert_allclose(b_part / b_part[0] * 0.1, [0.1, 0.5, 0.9, 1.3], atol=2e-3)  # nearest in time


def test_fusion_without_common_ids_is_refused_in_one_line(tmp_path):
    a = write_store(tmp_path / "a", blob_clips(per_class=4))
    b = write_store(tmp_path / "b", [(f"other{i}", *rest) for i, (_, *rest) in enumerate(blob_clips(per_class=4))])
    res = invoke("fit-head", "--store", a, "--store", b, "--fuse", "concat", "--out", tmp_path / "r")
    assert res.exit_code == 1 and "share no video id" in res.output and "Traceback" not in res.output
    with pytest.raises(HeadError, match="exactly two stores"):
        from heads.fusion import fused_cache
        fused_cache([a], "linear")
