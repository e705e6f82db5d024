"""explain on a flow-stream run: the composed model reads the store's flow stacks (its logits are predict's), and the
maps are drawn over the stacks' middle flow as colour."""
import json

import numpy as np
import pytest
import torch
from helpers import extract_flags, invoke
from matplotlib.image import imread

from data.synth import make_temporal_dataset
from featstore import StoreConfig
from heads.data import batches, cache_from_arrays
from heads.run import load_run
from heads.train import evaluate
from pipeline.extract import embed_files

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("cv2")  # Farneback

from explain.cam import compute_maps  # noqa: E402  (after the skips)
from explain.flow import FlowVideo, flow_images  # noqa: E402
from explain.model import decode_for, head_rows, load_run_model, model_input  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A linear head on a Farneback flow store (stacks of 2 flows) of growing and shrinking discs, 64 px (resnet18's
    layer4 is then 2x2, the smallest input that still has a spatial map), fp32 so predict's arithmetic is explain's."""
    root = tmp_path_factory.mktemp("explain_flow")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=6, size=64, seed=3)
    res = invoke("extract", manifest, *extract_flags(every=2, size=64, precision="fp32"), "--modality", "flow",
                 "--flow-stack", "2", "--store", root / "store")
    assert res.exit_code == 0, res.output
    res = invoke("fit-head", root / "store", "--epochs", "2", "--out", root / "linear")
    assert res.exit_code == 0, res.output
    rows = manifest.read_text().splitlines()[1:]
    return root / "linear", [str(manifest.parent / r.split(",")[0]) for r in rows]


def test_a_flow_run_is_explained_on_the_stacks_predict_embeds(flow_run):
    run_dir, paths = flow_run
    model, ckpt = load_run(run_dir)
    (record,) = embed_files([paths[0]], StoreConfig.from_attrs(ckpt["store_config"]), "cpu")  # predict's path
    expected, _, _ = evaluate(model, batches(cache_from_arrays([record.features]), None, np.arange(1), 1,
                                             ckpt["train_config"]["max_frames"]))
    run = load_run_model(run_dir, "cpu")
    video = decode_for(run, paths[0])
    assert isinstance(video, FlowVideo) and video.stacks.shape == (3, 4, 64, 64)  # frames 0, 2, 4: 2 flows each
    assert video.frame_index.tolist() == record.frame_index.tolist()
    rows = head_rows(len(video.frames), run.max_frames)
    logits, maps = compute_maps(run.model, model_input(video, rows, run.device), "layer4", "resnet18", "gradcam",
                                [None])
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4, rtol=0)
    assert maps[0].cams.shape == (3, 64, 64) and video.frames.shape == (3, 64, 64, 3)


def test_flow_images_colour_the_middle_flow_by_direction_and_leave_stillness_white():
    stacks = torch.zeros(2, 6, 4, 4)          # 3 flows each; the middle one is channels 2 (x) and 3 (y)
    stacks[0, 2], stacks[1, 2] = 0.5, -0.5    # right, left
    stacks[:, 0] = 1.0                        # the first flow is not the one drawn
    images = flow_images(stacks)
    assert images.shape == (2, 4, 4, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0, 0, 0], images[1, 0, 0])  # opposite directions, other hues
    assert (images[0] == images[0, 0, 0]).all() and images[0, 0, 0].min() < 255  # uniform motion, coloured
    assert (flow_images(torch.zeros(1, 4, 4, 4)) == 255).all()   # no motion: white


def test_explain_draws_a_flow_run_over_its_flow_images(flow_run, tmp_path):
    run_dir, paths = flow_run
    res = invoke("explain", run_dir, paths[0], "--frames", "2", "--out", tmp_path / "maps", "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert 0 < row["prob"] <= 1 and imread(row["png"]).shape[1] > imread(row["png"]).shape[0]
