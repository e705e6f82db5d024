"""`--layer NAME`: a row that is one named block's output, globally average-pooled, instead of the model's own pooled
vector. The block is found by its module name (`model.named_modules()`: `layer3`, `features.14`, `stages.2`,
`blocks.6`), so one mechanism serves torchvision and every family."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layer:
    """The block rows come from, as traced: its name, the pooled row's size, and where its channels are."""
    name: str
    dim: int
    channels_last: bool  # (B, H, W, C) / (B, T, H, W, C) maps, as Swin blocks give them; else (B, C, ...)


def pool(out: torch.Tensor | tuple, channels_last: bool) -> torch.Tensor:
    """Maps -> (B, C), the mean over all but the channels; a transformer block's (B, N, D) tokens -> (B, D), the mean
    over the tokens; (B, D) as it is."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim == 3 or (out.ndim > 3 and channels_last):
        return out.flatten(1, -2).mean(1)
    return out.flatten(2).mean(2) if out.ndim > 2 else out


def _is_channels_last(shape: torch.Size) -> bool:
    """Inputs are square, so a map's two side axes are equal: (.., H, W) last means channels first, (.., H, W, C)
    channels last (a C equal to both sides reads as channels first)."""
    return len(shape) > 3 and shape[-2] != shape[-1] and shape[-3] == shape[-2]


class LayerPool(nn.Module):
    """`model` whose forward returns `layer`'s output, pooled (the model still runs to its end: the hook keeps what
    the block gave on the way)."""

    def __init__(self, model: nn.Module, layer: str, channels_last: bool = False):
        super().__init__()
        self.model, self.layer, self.channels_last = model, layer, channels_last
        self._kept = threading.local()  # per thread: pipeline.lanes runs one module in several threads at once
        self.hook = model.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output) -> None:
        self._kept.out = output

    def taken(self) -> torch.Tensor | tuple | None:
        """What the layer gave in this thread's last forward pass (then forgotten)."""
        out, self._kept.out = getattr(self._kept, "out", None), None
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        return pool(self.taken(), self.channels_last)


def layer_names(model: nn.Module) -> list[str]:
    """Every named block of `model`, in forward-definition order (what --layer accepts)."""
    return [name for name, _ in model.named_modules() if name]


def trace_layer(skeleton: nn.Module, layer: str, example: torch.Tensor) -> Layer:
    """`layer` of `skeleton` traced on the meta device (no compute, no memory): its row size and channel axis."""
    probe = LayerPool(skeleton, layer)
    try:
        skeleton(example)
    finally:
        probe.hook.remove()  # the skeleton is cached: leave it as it was
    out = probe.taken()
    out = out[0] if isinstance(out, (tuple, list)) else out
    channels_last = _is_channels_last(out.shape)
    return Layer(layer, int(pool(out, channels_last).shape[-1]), channels_last)
