"""Two streams: late fusion's TSN weights for an RGB and a flow run, and the refusal of stores of other sampling."""
import json

import numpy as np
import pytest
from helpers import SMALL, blob_clips, invoke, tiny_config, write_store

from heads.fusion import fuse_runs
from heads.models import HeadError
from heads.run import fit_head
from heads.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {**SMALL, "epochs": 10, "patience": 10}


@pytest.fixture(scope="module")
def every_2_store(tiny_store, tmp_path_factory):
    """tiny_store's clips extracted again with every 2nd frame: the same videos and labels, other sampling."""
    from pipeline.decode import Sampling
    from pipeline.extract import extract
    from pipeline.sources import load_source

    store = tmp_path_factory.mktemp("every2") / "store"
    extract(load_source(tiny_store.parent / "m.csv"), store, tiny_config(dtype="float16", sampling=Sampling(every=2)))
    return store


def test_concat_fusion_of_stores_sampled_differently_is_refused_naming_the_setting(tiny_store, every_2_store,
                                                                                    tmp_path):
    res = invoke("fit-head", "--store", tiny_store, "--store", every_2_store, "--fuse", "concat",
                 "--out", tmp_path / "r")
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = " ".join(res.output.split())  # rich wraps the one line at the terminal's width
    assert "same sampling" in line and "every: 1 vs 2" in line
    assert not (tmp_path / "r").exists()


def test_late_fusion_of_runs_on_stores_sampled_differently_is_refused(tiny_run, every_2_store, tmp_path):
    assert invoke("fit-head", every_2_store, "--epochs", "2", "--out", tmp_path / "b").exit_code == 0
    with pytest.raises(HeadError, match=r"fuse .* needs stores of the same sampling; .* differ in every: 1 vs 2: "):
        fuse_runs([tiny_run, tmp_path / "b"], tmp_path / "f")
    assert not (tmp_path / "f").exists()


@pytest.fixture(scope="module")
def rgb_and_flow_runs(tmp_path_factory):
    """A linear head on an RGB store and one on a flow store (modality recorded as extract --modality flow does) of
    the same synthetic clips: fuse must tell the streams apart by the store's config alone."""
    root = tmp_path_factory.mktemp("streams")
    for name, seed in (("rgb", 0), ("flow", 1)):
        config = {"backbone": "synthetic", "every": 1, **({"modality": "flow"} if name == "flow" else {})}
        clips = [(vid, label, group, split, f + np.random.default_rng(seed).normal(0, 1, f.shape))
                 for vid, label, group, split, f in blob_clips(per_class=12)]
        fit_head(write_store(root / name, clips, config), TrainConfig(head="linear", **FAST), root / f"run-{name}")
    return root


def test_fusing_an_rgb_and_a_flow_run_weighs_them_1_to_1_5_by_default(rgb_and_flow_runs):
    rgb, flow = rgb_and_flow_runs / "run-rgb", rgb_and_flow_runs / "run-flow"
    assert fuse_runs([rgb, flow], rgb_and_flow_runs / "f1")["weights"] == pytest.approx([0.4, 0.6])
    assert fuse_runs([flow, rgb], rgb_and_flow_runs / "f2")["weights"] == pytest.approx([0.6, 0.4])
    given = fuse_runs([rgb, flow], rgb_and_flow_runs / "f3", weights=[1, 1])
    assert given["weights"] == [0.5, 0.5]  # --weights wins
    res = invoke("fuse", rgb, flow, "--out", rgb_and_flow_runs / "f4")
    assert res.exit_code == 0 and "weights 0.40,0.60" in res.output
    assert json.loads((rgb_and_flow_runs / "f4" / "config.json").read_text())["weights"] == pytest.approx([0.4, 0.6])


def test_fusing_two_rgb_runs_weighs_them_alike(rgb_and_flow_runs, tmp_path):
    rgb = rgb_and_flow_runs / "run-rgb"
    other = tmp_path / "lin2"
    fit_head(rgb_and_flow_runs / "rgb", TrainConfig(head="mlp", **FAST), other)
    assert fuse_runs([rgb, other], tmp_path / "f")["weights"] == [0.5, 0.5]


@pytest.fixture(scope="module")
def flow_store(tiny_store, tmp_path_factory):
    """tiny_store's clips as a Farneback flow store of the same sampling (every frame, 32 px)."""
    pytest.importorskip("cv2")
    from pipeline.extract import extract
    from pipeline.sources import load_source

    store = tmp_path_factory.mktemp("flow") / "store"
    extract(load_source(tiny_store.parent / "m.csv"), store, tiny_config(dtype="float16", modality="flow",
                                                                          flow_stack=2))
    return store


def test_an_rgb_and_a_flow_store_of_one_sampling_fuse_both_ways(tiny_store, tiny_run, flow_store, tmp_path):
    assert invoke("fit-head", flow_store, "--epochs", "2", "--out", tmp_path / "flow").exit_code == 0
    late = fuse_runs([tiny_run, tmp_path / "flow"], tmp_path / "late")
    assert late["weights"] == pytest.approx([0.4, 0.6]) and late["n_common"] == 2
    res = invoke("fit-head", "--store", tiny_store, "--store", flow_store, "--fuse", "concat", "--epochs", "2",
                 "--out", tmp_path / "concat")
    assert res.exit_code == 0, res.output
    fused = json.loads((tmp_path / "concat" / "metrics.json").read_text())
    assert fused["fusion"]["n_common"] == 8 and fused["fusion"]["label_mismatches"] == 0


@pytest.mark.slow  # two extracts and three heads on 32 motion-only clips: ~20 s
def test_on_motion_only_classes_two_streams_score_at_least_the_flow_stream(tmp_path):
    """Issue 21's check: clips that differ only in motion. RGB alone is near chance; the fusions must not lose what
    the flow stream finds (late fusion at TSN's 1 : 1.5, and the concatenated features)."""
    pytest.importorskip("cv2")
    from data.motion import make_motion_dataset
    from heads.fusion import fit_fused
    from pipeline.decode import Sampling
    from pipeline.extract import extract
    from pipeline.sources import load_source

    items = load_source(make_motion_dataset(tmp_path / "clips", n_per_class=8, frames=12, size=64,
                                            directions=("left", "right")))
    cfg = TrainConfig(head="linear", epochs=60, patience=60, device="cpu")
    for name, extra in (("rgb", {}), ("flow", {"modality": "flow", "flow_stack": 3})):
        extract(items, tmp_path / name, tiny_config(sampling=Sampling(every=4), size=64, **extra))
        fit_head(tmp_path / name, cfg, tmp_path / f"run-{name}")
    late = fuse_runs([tmp_path / "run-rgb", tmp_path / "run-flow"], tmp_path / "late")
    concat = fit_fused([tmp_path / "rgb", tmp_path / "flow"], cfg, tmp_path / "concat")
    flow = late["alone"][str(tmp_path / "run-flow")]["accuracy"]
    assert flow >= 0.9 and late["test"]["accuracy"] >= flow and concat["test"]["accuracy"] >= flow, \
        (late["alone"], late["test"]["accuracy"], concat["test"]["accuracy"])
