"""The flow stream's input for fine-tuning: each TSN segment gives a stack of L flows instead of one frame.

A segment's position p starts L + 1 consecutive frames (p .. p + L, the last frame repeated where the clip is
shorter); the flows between them, computed in the decode worker by pipeline.flow's `FlowComputer` on frames sized
and cropped as extract makes them, become one 2L-channel stack (`pipeline.flow.flow_stack`, TSN's clip and scale).
Segment positions are drawn over the first n - L frames, so every stack sees L real frame steps where it can.
Augmentation (crop, flip) is drawn once per clip and applied to the frames before the flow is computed: the flow of
flipped frames is the flipped flow, its x sign included, which flipping a flow image would have to fix by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FlowInput:
    """How a clip's segments become flow stacks: `stack` flows (L) by `method` (a pipeline.flow FLOW_METHODS)."""
    method: str
    stack: int

    def frame_positions(self, starts: np.ndarray, n_frames: int) -> np.ndarray:
        """(K,) stack starts -> (K * (L + 1),) frame positions, each start and the L frames after it."""
        offsets = np.arange(self.stack + 1)
        return np.clip(starts[:, None] + offsets[None, :], 0, max(n_frames - 1, 0)).reshape(-1)

    def segment_span(self, n_frames: int) -> int:
        """How many first frames segment starts are drawn from: all but the last L (at least one)."""
        return max(n_frames - self.stack, 1)

    def stacks(self, frames: torch.Tensor, computer) -> torch.Tensor:
        """(K * (L + 1), H, W, 3) uint8 -> (K, 2L, H, W) float32 flow stacks in [-1, 1]."""
        from pipeline.flow import flow_stack

        k = len(frames) // (self.stack + 1)
        return flow_stack(computer(frames.reshape(k, self.stack + 1, *frames.shape[1:])))

    def computer(self):
        """The flow method, built in the process that uses it (a decode worker builds its own)."""
        from pipeline.flow import FlowComputer

        return FlowComputer(self.method)

    def check(self, size: int) -> None:
        """Build the method once before any work, so that a missing OpenCV or RAFT weights, or frames RAFT cannot
        take, are refused in one line here rather than inside a decode worker."""
        from pipeline.flow.compute import check_flow_size

        check_flow_size(self.method, size)
        self.computer()
