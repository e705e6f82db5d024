"""pipeline.flow: flow between frames, TSN's flow stack, the cross-modality flow-stream backbone."""
import numpy as np
import pytest
import torch

from pipeline.backbones import weights_for
from pipeline.flow import BOUND, FlowComputer, FlowEmbedder, FlowError, cross_modality, flow_backbone, flow_stack


def textured(side: int, seed: int = 0) -> np.ndarray:  # (side, side, 3) uint8, smooth enough for Farneback
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (side // 4, side // 4, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)


def test_farneback_measures_a_shift_of_the_frame_in_pixels():
    pytest.importorskip("cv2")
    first = textured(64)
    frames = torch.from_numpy(np.stack([first, np.roll(first, 2, axis=1), np.roll(first, 2, axis=0)]))[None]
    flows = FlowComputer("farneback")(frames)                          # (1, 2, 64, 64, 2)
    inner = flows[0, :, 16:48, 16:48].mean(dim=(1, 2))                 # (2, 2): mean (x, y) of each flow
    assert flows.shape == (1, 2, 64, 64, 2) and flows.dtype == torch.float32
    assert inner[0, 0] == pytest.approx(2, abs=0.3) and abs(inner[0, 1]) < 0.3     # right by 2
    assert inner[1, 0] == pytest.approx(-2, abs=0.3) and inner[1, 1] == pytest.approx(2, abs=0.3)  # back, down


def test_flow_stack_interleaves_x_and_y_and_clips_at_the_bound():
    flows = torch.zeros(1, 2, 4, 4, 2)
    flows[0, 0, ..., 0], flows[0, 0, ..., 1], flows[0, 1, ..., 0], flows[0, 1, ..., 1] = 5, -10, 3 * BOUND, 0
    stack = flow_stack(flows)                                          # (1, 4, 4, 4)
    assert stack[0, :, 0, 0].tolist() == [5 / BOUND, -10 / BOUND, 1.0, 0.0]


def test_cross_modality_conv_answers_a_stack_of_one_image_as_the_rgb_conv_answers_grey():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=True)
    grey = torch.rand(1, 1, 8, 8)
    inflated = cross_modality(conv, 6)
    # the mean kernel over 6 equal channels sums to 6 x mean = 2 x the RGB kernel's sum over 3 equal channels
    assert torch.allclose(inflated(grey.expand(1, 6, 8, 8)) - conv.bias.view(1, -1, 1, 1),
                          2 * (conv(grey.expand(1, 3, 8, 8)) - conv.bias.view(1, -1, 1, 1)), atol=1e-5)


def test_flow_stream_backbone_takes_2l_channels_and_reloads_its_own_weights_file(tmp_path):
    backbone = flow_backbone(weights_for("resnet18", "none"), stack=3)
    stacks = torch.rand(2, 6, 32, 32) * 2 - 1
    rows = FlowEmbedder(backbone, torch.device("cpu"))(stacks)
    assert backbone.model.conv1.in_channels == 6 and rows.shape == (2, 512)
    torch.save(backbone.model.state_dict(), tmp_path / "flow.pth")
    again = flow_backbone(weights_for("resnet18", str(tmp_path / "flow.pth")), stack=3)
    assert np.allclose(FlowEmbedder(again, torch.device("cpu"))(stacks), rows, atol=1e-5)
    with pytest.raises(FlowError, match="--flow-stack 3"):
        flow_backbone(weights_for("resnet18", str(tmp_path / "flow.pth")), stack=5)


def test_flow_stream_refuses_a_video_backbone_naming_image_ones():
    with pytest.raises(FlowError, match="image backbone"):
        flow_backbone(weights_for("r3d_18", "none"), stack=5)


def test_raft_refuses_frames_too_small_for_its_pyramid():
    with pytest.raises(FlowError, match="at least 128"):
        FlowComputer("raft_small", "none")(torch.zeros(1, 2, 64, 64, 3, dtype=torch.uint8))
