"""Backbone families beyond torchvision: a prefixed name (`timm:convnext_tiny`) selects one (pipeline.backbones.
FAMILIES), and its module here is imported only then, so a torchvision run never imports the family's library.

Each family module answers, for the model name after the prefix:
    spec(model) -> FamilySpec                                 what the registry knows of a torchvision backbone
    preprocess(model) -> Preprocess                           the library's own eval recipe
    skeleton(model) -> nn.Module                              the architecture on the meta device (for --layer)
    weights_for(name, model, weights) -> BackboneWeights      'none' (seeded random init), a file, or the library's
                                                              default weights (found or fetched; one line without)
    build(chosen, model) -> Backbone                          the frozen model whose forward gives the row
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.backbones import TOKEN_POOLS, ClipSpec


@dataclass(frozen=True)
class FamilySpec:
    """The registry's spec of a family's model: its row and what it takes, read from the library, not typed here."""
    dim: int                    # row size (the pooled pre-logits vector)
    input_size: int             # the side of its own input (its recipe's crop)
    cam_layer: str = ""         # default Grad-CAM target: the last block with a spatial map
    clip: ClipSpec | None = None  # None: an image model; else the clips it takes
    cpu_only: bool = False      # families have no int8-only kernels
    token_pools: tuple[str, ...] = ()  # the --pool choices: cls and/or mean where the output has tokens


def token_pools(prefix_tokens: int | None) -> tuple[str, ...]:
    """The --pool choices of a model whose output has `prefix_tokens` (CLS, registers) before its patch tokens: none
    without tokens (None), the mean only without a CLS token."""
    if prefix_tokens is None:
        return ()
    return TOKEN_POOLS if prefix_tokens > 0 else ("mean",)
