"""Eager bf16 on CPUs without autocast: each BatchNorm folded into the convolution before it, then the weights cast
to bf16 once, for models made only of modules bf16 keeps accurate (convolutions, linear layers, activations,
pooling). Autocast casts every weight again on every call and runs BatchNorm as a pass of its own; on the AMX Xeon
this path ran resnet18 1.31x, resnet50 1.30x and mobilenet_v2 1.35x autocast's images/s at batch 8, cosine to
fp32 unchanged (bench/results/backbone_amx.json, variants eager and autocast; docs/extract.md "Backbone speed on CPU").

Which convolution a BatchNorm follows is read off the traced graph (torch.fx), so the order the model runs its
modules in decides, not the order it declares them in. A model that does not trace, or holds any other module
(LayerNorm, attention, a quantized op), or a hook (--layer's LayerPool keeps a block's output through one, which a
traced copy would not call), is left to autocast.
"""
from __future__ import annotations

import torch
from torch import nn

# Leaf modules a bf16 forward pass keeps within cosine 0.9999 of fp32 once BatchNorm is folded (a BatchNorm that
# follows no convolution stays, in bf16: a per-channel affine map).
BF16_SAFE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
             nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU, nn.Hardtanh,
             nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.Dropout, nn.Identity, nn.Flatten)


def folded_bf16(model: nn.Module) -> nn.Module | None:
    """A bf16 copy of `model` (eval mode) with BatchNorm folded into its convolutions, or None where the model does
    not qualify: it does not trace, holds a module outside BF16_SAFE or has a hook. `model` is not changed."""
    from torch.fx.experimental.optimization import fuse

    if model.training or any(not isinstance(m, BF16_SAFE) for m in _leaves(model)) or _hooked(model):
        return None
    try:
        fused = fuse(model, inplace=False)
    except Exception:  # noqa: BLE001 — not traceable by torch.fx (data-dependent control flow): autocast runs it
        return None
    return fused.to(torch.bfloat16).eval().requires_grad_(False)


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if next(m.children(), None) is None]
