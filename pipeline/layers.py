"""`--layer NAME`: a row that is one named block's output, globally average-pooled, instead of the model's own pooled
vector. The block is found by its module name (`model.named_modules()`: `layer3`, `features.14`, `stages.2`,
`blocks.6`), so one mechanism serves torchvision and every family."""
from __future__ import annotations

import torch
from torch import nn


def pool(out: torch.Tensor | tuple) -> torch.Tensor:
    """(B, C, H, W) or (B, C, T, H, W) maps -> (B, C), the mean over all but the channels; a transformer block's
    (B, N, D) tokens -> (B, D), the mean over the tokens; (B, D) as it is."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim == 3:
        return out.mean(1)
    return out.flatten(2).mean(2) if out.ndim > 2 else out


class LayerPool(nn.Module):
    """`model` whose forward returns `layer`'s output, pooled (the model still runs to its end: the hook keeps what
    the block gave on the way)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model, self.layer = model, layer
        self._out: torch.Tensor | None = None
        self.hook = model.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output) -> None:
        self._out = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        out, self._out = self._out, None
        return pool(out)


def layer_names(model: nn.Module) -> list[str]:
    """Every named block of `model`, in forward-definition order (what --layer accepts)."""
    return [name for name, _ in model.named_modules() if name]


def layer_dim(skeleton: nn.Module, layer: str, example: torch.Tensor) -> int:
    """The pooled row size of `layer`, traced on the meta device (no compute, no memory)."""
    probe = LayerPool(skeleton, layer)
    try:
        return int(probe(example).shape[-1])
    finally:
        probe.hook.remove()  # the skeleton is cached: leave it as it was
