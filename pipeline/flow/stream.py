"""The flow stream: a registry image backbone whose first convolution takes a 2L-channel flow stack (pipeline.flow.
stack) instead of RGB.

Its weights are the backbone's own RGB weights (an enum member, none, or an RGB weights file) passed through TSN's
cross-modality initialisation: the first convolution's kernels averaged over the colour channels and that mean
replicated over the 2L flow channels (Wang et al. 2016, section 3.2), the rest unchanged. A weights file whose first
convolution already takes 2L channels is a flow-stream model (a flow run of finetune) and is loaded as it is.

    backbone = flow_backbone(weights_for("resnet18", "DEFAULT"), stack=5)
    rows = FlowEmbedder(backbone, device)(flow_stack(flows))     # (B, 2L, H, W) -> (B, D)
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.backbones import Backbone, BackboneWeights, _skeleton, _state_dict_from_file, build_backbone, weights_for
from pipeline.flow.compute import FlowError


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the first 2-D convolution that reads the RGB input: the first, in module order, with 3 input
    channels (the stem of every torchvision and timm image model)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise FlowError("--modality flow needs a backbone whose first layer is a convolution over RGB; this one has none")


def cross_modality(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A copy of `conv` that takes `channels` inputs, each kernel the mean of `conv`'s over its colour channels."""
    inflated = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         conv.groups if conv.groups == 1 else channels, conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        inflated.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(inflated.weight))
        if conv.bias is not None:
            inflated.bias.copy_(conv.bias)
    return inflated


def _inflate(model: nn.Module, channels: int) -> None:
    name, conv = first_conv(model)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, cross_modality(conv, channels))


def flow_backbone(chosen: BackboneWeights, stack: int) -> Backbone:
    """The frozen flow-stream backbone for `chosen` (the weights --weights names) taking `stack` flows (2 x stack
    channels); its `dim` and `cam_layer` are the RGB backbone's."""
    if chosen.is_video or chosen.cpu_only:
        raise FlowError(f"--modality flow embeds flow stacks with an image backbone; {chosen.name} is "
                        f"{'a video' if chosen.is_video else 'an int8'} one: use resnet18, mobilenet_v2, resnet50, ...")
    channels = 2 * stack
    state = _flow_state(chosen, channels)
    backbone = build_backbone(chosen if state is None else weights_for(chosen.name, "none", chosen.layer and
                                                                       chosen.layer.name))
    _inflate(backbone.model, channels)
    if state is not None:
        _load(backbone, state, chosen)
    backbone.model.eval().requires_grad_(False)
    return replace(backbone, weights_id=chosen.id)


def _flow_state(chosen: BackboneWeights, channels: int) -> dict | None:
    """A weights file's state dict where it holds a flow-stream model (its first convolution takes `channels`
    inputs); None for RGB weights (cross-modality initialised instead)."""
    if chosen.file is None:
        return None
    state = _state_dict_from_file(Path(chosen.file), chosen.name)
    name, _ = first_conv(_skeleton(chosen))
    taken = state.get(f"{name}.weight")
    if taken is None or taken.shape[1] == 3:
        return None  # RGB weights (build_backbone checks they fit)
    if taken.shape[1] != channels:
        raise FlowError(f"{chosen.file} is a flow-stream model of {taken.shape[1] // 2} flows, not --flow-stack "
                        f"{channels // 2}: pass --flow-stack {taken.shape[1] // 2}")
    return state


def _load(backbone: Backbone, state: dict, chosen: BackboneWeights) -> None:
    model = backbone.model.model if chosen.layer is not None else backbone.model  # inside LayerPool
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = chosen.spec.head + "."
    bad = [k for k in missing + unexpected if not k.startswith(head)]
    if bad:
        raise FlowError(f"{chosen.file} does not fit {chosen.name}: mismatched keys {bad[:3]} ({len(bad)} in all)")


class FlowEmbedder:
    """(B, 2L, H, W) float flow stacks -> (B, D) float32 rows through the frozen flow-stream backbone on `device`,
    under the autocast of `precision` (bf16, fp16; fp32 runs as it is). Nothing to normalise: stacks are in
    [-1, 1] already. Same calling convention as pipeline.embed.Embedder (needs_calibration, setup_s)."""

    needs_calibration = False
    setup_s = 0.0

    def __init__(self, backbone: Backbone, device: torch.device, precision: str = "fp32"):
        self.model, self.device = backbone.model.to(device).to(memory_format=torch.channels_last), device
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def __call__(self, stacks: torch.Tensor) -> np.ndarray:
        x = stacks.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = self.model(x)
        return out.float().cpu().numpy()
