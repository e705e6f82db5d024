"""explain on a flow-stream run: the flow stacks its store's rows were embedded from, and what the PNG shows.

The model's input is each row's stack of L flows (pipeline.decode.StackStream: the sampled frame and the L frames
after it, flow by the store's method, TSN's scale), so its logits are predict's on a flow store. A stack has 2L
channels and no picture, so the maps are drawn over the stack's middle flow as colour
(torchvision.utils.flow_to_image: hue is the direction, saturation the speed), one scale for the whole video as the
maps have: a still frame is white, the fastest motion of the video the most saturated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.decode import Geometry, StackSampling, StackStream, no_motion
from pipeline.sources import item_kind


@dataclass
class FlowVideo:
    """One video as a flow-stream run reads it: a stack per sampled frame, and the picture of each."""
    stacks: torch.Tensor        # (T, 2L, H, W) float32 in [-1, 1]: the model's input
    frames: np.ndarray          # (T, H, W, 3) uint8: each stack's middle flow as colour (what the PNG shows)
    frame_index: np.ndarray     # (T,) position of each stack's first frame in the video


def decode_flow(path: str | Path, stacks: StackSampling, geometry: Geometry, computer) -> FlowVideo:
    """The flow stacks a store of `stacks` and `geometry` holds for `path`, by `computer` (a pipeline.flow
    FlowComputer); DecodeError when it cannot be read, or is a still image (no motion)."""
    if item_kind(Path(path)) == "image":
        raise no_motion(path, "a flow-stream run reads")
    from pipeline.flow import flow_stack

    clips = list(StackStream(path, stacks, geometry))
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))         # (T, L + 1, H, W, 3) uint8
    # clone: RAFT computes under inference_mode, whose tensors autograd (grad-cam's pass) refuses to save
    stacked = flow_stack(computer(frames)).clone()                        # (T, 2L, H, W)
    return FlowVideo(stacked, flow_images(stacked), np.array([c.frame_index for c in clips], dtype=np.int64))


def flow_images(stacks: torch.Tensor) -> np.ndarray:
    """(T, 2L, H, W) flow stacks -> (T, H, W, 3) uint8: the middle flow of each (flow L // 2, channels x, y) in
    flow_to_image's colours, scaled by the largest motion among all T."""
    from torchvision.utils import flow_to_image

    middle = stacks.shape[1] // 2 // 2
    return flow_to_image(stacks[:, 2 * middle:2 * middle + 2].float()).permute(0, 2, 3, 1).numpy()
