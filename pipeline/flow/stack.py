"""TSN's flow-stream input: L consecutive flows become one 2L-channel image, each flow clipped to [-BOUND, BOUND]
pixels and scaled to [-1, 1].

TSN (Wang et al. 2016, after Simonyan & Zisserman 2014) stores each flow as an 8-bit image, x and y mapped linearly
from [-20, 20] to 0..255, and feeds the network those bytes less their mean. We keep the same clip and the same
linear map but skip the 8-bit rounding (it only loses precision): value / 20, clipped, so 0 is still "no motion" and
the bound still marks "fast". Channels interleave x and y per flow, [x1, y1, x2, y2, ...], TSN's order.

The flows are computed on frames already resized and cropped like the RGB path (pipeline.decode Geometry), so a
flow store's rows cover the same pixels as an RGB store's of the same settings, and the vectors are in model-input
pixels (at --size 224, 20 px is about a tenth of the frame).
"""
from __future__ import annotations

import torch

BOUND = 20.0  # pixels: TSN's clip of each flow component


def flow_stack(flows: torch.Tensor) -> torch.Tensor:
    """(B, L, H, W, 2) float flow in pixels -> (B, 2L, H, W) float32 in [-1, 1], channels x1, y1, x2, y2, ..."""
    b, length, h, w, _ = flows.shape
    stacked = flows.permute(0, 1, 4, 2, 3).reshape(b, 2 * length, h, w)  # (B, 2L, H, W), x and y interleaved
    return (stacked.float() / BOUND).clamp_(-1.0, 1.0)
