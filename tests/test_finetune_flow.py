"""finetune --modality flow: TSN segments of flow stacks train the flow stream, whose backbone.pt extract embeds with."""
import json

import numpy as np
import pytest
import torch

from helpers import extract_flags, invoke

from data.synth import make_temporal_dataset
from featstore import open_store
from finetune import FinetuneConfig, finetune
from finetune.config import FinetuneError
from finetune.data import ClipFrames, FrameSampler
from finetune.flow import FlowInput
from pipeline.backbones import weights_for
from pipeline.decode import Geometry
from pipeline.sources import load_source

pytest.importorskip("cv2")  # Farneback: the offline flow method

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_FLOW = dict(backbone="resnet18", weights="none", size=32, crop="none", segments=2, precision="fp32", workers=0,
                 batch_size=4, modality="flow", flow_stack=2, eval_segments=4, refit=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Discs that grow or shrink (and ramps that brighten or darken): the classes differ in their motion."""
    return make_temporal_dataset(tmp_path_factory.mktemp("ftflow") / "clips", n_per_class=4, frames=6, size=32,
                                 seed=2)


@pytest.fixture(scope="module")
def flow_run(clips, tmp_path_factory):
    run = tmp_path_factory.mktemp("ftflow_run") / "flow"
    with torch.random.fork_rng(devices=[]):
        metrics = finetune(load_source(clips), FinetuneConfig(**TINY_FLOW, epochs=1), run)
    return run, metrics


def test_a_flow_segment_is_a_stack_of_the_flows_after_its_frame(clips):
    items = load_source(clips)
    flow = FlowInput("farneback", 2)
    data = ClipFrames(items, [0], Geometry(32, 32, "none"), FrameSampler("segments", 3, random=False), False, 0, flow)
    _, stacks, error = data[0]
    assert error == "" and stacks.shape == (3, 4, 32, 32) and stacks.dtype == torch.float32
    assert stacks.abs().max() <= 1 and stacks.abs().max() > 0  # TSN's scale, and the disc moves
    # 6 frames, stacks of 2 flows: segment starts are drawn from the first 4 frames, each with the 2 after it
    assert flow.frame_positions(np.array([0, 1, 3]), 6).tolist() == [0, 1, 2, 1, 2, 3, 3, 4, 5]
    assert flow.frame_positions(np.array([0]), 2).tolist() == [0, 1, 1]  # a short clip repeats its last frame


def test_a_still_image_is_a_failed_clip_of_a_flow_run(tmp_path):
    from PIL import Image

    from pipeline.sources import Item

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "still.png")
    item = Item(id="still", path=str(tmp_path / "still.png"), labels=("a",), kind="image")
    data = ClipFrames([item], [0], Geometry(32, 32, "none"), FrameSampler("segments", 2), False, 0,
                      FlowInput("farneback", 2))
    assert data[0][1] is None and "a still image has no motion" in data[0][2]


@pytest.mark.slow  # one epoch and its checkpoints, then an extract: ~10 s
def test_finetune_trains_a_flow_stream_that_extract_embeds_with(clips, flow_run, tmp_path):
    run, metrics = flow_run
    assert metrics["n_train"] and metrics["test"]["n"] and not metrics["failed"]
    saved = torch.load(run / "backbone.pt", weights_only=True)
    assert saved["conv1.weight"].shape[1] == 4  # 2 flows: x and y each
    config = json.loads((run / "config.json").read_text())
    assert metrics["extract_flags"] == "--modality flow --flow farneback --flow-stack 2"
    assert config["finetune"]["modality"] == "flow" and config["extract"].endswith(metrics["extract_flags"])
    from pipeline.flow import flow_backbone

    loaded = flow_backbone(weights_for("resnet18", str(run / "backbone.pt")), 2)  # what extract --weights builds
    assert torch.equal(loaded.model.conv1.weight, saved["conv1.weight"])  # taken as it is, not re-initialised
    res = invoke("extract", clips, *extract_flags(every=2, weights=str(run / "backbone.pt")),
                 *metrics["extract_flags"].split(), "--store", tmp_path / "store")
    assert res.exit_code == 0, res.output
    store = open_store(tmp_path / "store").config
    assert store.is_flow and store.flow_stack == 2 and store.weights == f"file:sha256:{metrics['backbone_sha256'][:16]}"


def test_flow_trains_only_the_supervised_objective_and_raft_sizes_are_checked_before_any_work(clips, tmp_path):
    with pytest.raises(FinetuneError, match="--modality flow trains with --objective supervised"):
        FinetuneConfig(**{**TINY_FLOW, "objective": "temporal"})
    res = invoke("finetune", clips, "--modality", "flow", "--flow", "raft_small", "--backbone", "resnet18",
                 "--weights", "none", "--size", "32", "--out", tmp_path / "r")
    assert res.exit_code == 1 and "--flow raft_small takes frames" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
