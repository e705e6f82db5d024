"""Optical flow as a modality of extract: flow between consecutive decoded frames (`compute`), TSN's 2L-channel
flow stack (`stack`), and the flow-stream backbone that embeds it (`stream`).

    from pipeline.flow import FlowComputer, flow_stack, flow_backbone, FlowEmbedder
    flows = FlowComputer("farneback")(frames)       # (B, L + 1, H, W, 3) uint8 -> (B, L, H, W, 2) pixels
    rows = FlowEmbedder(flow_backbone(weights_for("resnet18", "none"), 5), torch.device("cpu"))(flow_stack(flows))
"""
from __future__ import annotations

from featstore.lazy import lazy_exports

_EXPORTS = {
    "pipeline.flow.compute": ("CLASSICAL", "FLOW_METHODS", "FlowComputer", "FlowError", "RaftWeights",
                              "flow_between", "raft_weights"),
    "pipeline.flow.stack": ("BOUND", "flow_stack"),
    "pipeline.flow.stream": ("FlowEmbedder", "cross_modality", "first_conv", "flow_backbone"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
