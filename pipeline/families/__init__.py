"""Backbone families beyond torchvision: a prefixed name (`timm:convnext_tiny`) selects one (pipeline.backbones.
FAMILIES), and its module here is imported only then, so a torchvision run never imports the family's library.

Each family module answers, for the model name after the prefix:
    spec(model) -> FamilySpec                                 what the registry knows of a torchvision backbone
    preprocess(model) -> Preprocess                           the library's own eval recipe
    skeleton(model) -> nn.Module                              the architecture on the meta device (for --layer)
    weights_for(name, model, weights) -> BackboneWeights      'none' (seeded random init), a file, or the library's
                                                              default weights (found or fetched; one line without)
    build(chosen, model) -> Backbone                          the frozen model whose forward gives the row

and, optionally, for transformers whose blocks output tokens (explain's Grad-CAM needs them on the image grid):
    cam_tokens(net) -> TokenGrid | None                       the built model's prefix tokens (class, register,
                                                              distillation) and patch grid; None for a CNN
A family without `cam_tokens` explains convolutional maps only.
and, optionally, for `cli.py backbones` (pipeline/catalog.py; without `names` the family is one line there):
    names(pattern) -> list[str]                               a curated few (pattern None), or the library's names
                                                              matching the fnmatch pattern
    weights_local(model) -> bool | None                       its default weights are on this machine (no network
                                                              asked); None where it has none to download
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.backbones import (SEED_FOR_RANDOM_INIT, TOKEN_POOLS, BackboneError, BackboneWeights, ClipSpec,
                                Preprocess, check_made_for, file_sha256, is_weights_file)


@dataclass(frozen=True)
class FamilySpec:
    """The registry's spec of a family's model: its row and what it takes, read from the library, not typed here."""
    dim: int                    # row size (the pooled pre-logits vector)
    input_size: int             # the side of its own input (its recipe's crop)
    cam_layer: str = ""         # default Grad-CAM target: the last block with a spatial map (or tokens on a grid)
    clip: ClipSpec | None = None  # None: an image model; else the clips it takes
    cpu_only: bool = False      # families have no int8-only kernels
    token_pools: tuple[str, ...] = ()  # the --pool choices: cls and/or mean where the output has tokens


@dataclass(frozen=True)
class TokenGrid:
    """Where a vision transformer's (B, N, D) tokens lie on the image: `prefix` leading tokens that are no patch
    (class, register, distillation tokens), then one token per patch, row by row, on a `rows` x `cols` grid."""
    prefix: int
    rows: int
    cols: int

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D, rows, cols), the prefix dropped (a block's output without a prefix, as the
        patch embedding's, is taken whole); anything else is returned as it is (a CNN's maps)."""
        if tokens.ndim != 3:
            return tokens
        patches = self.rows * self.cols
        if tokens.shape[1] not in (patches, patches + self.prefix):
            raise ValueError(f"{tokens.shape[1]} tokens do not lie on a {self.rows}x{self.cols} grid after "
                             f"{self.prefix} prefix tokens")
        grid = tokens[:, tokens.shape[1] - patches:]  # (B, rows*cols, D)
        return grid.reshape(len(grid), self.rows, self.cols, -1).permute(0, 3, 1, 2)  # (B, D, rows, cols)


def chosen_weights(name: str, weights: str, spec: FamilySpec, preprocess: Preprocess, recipe: dict,
                   default: Callable[[], tuple[Path, str]], refusal: str) -> BackboneWeights:
    """A family's `--weights`: 'none' (seeded random init), a weights file, or DEFAULT (`default()` finds the
    library's own: the file and its id's prefix, e.g. 'hub:ID:'); anything else is refused, saying `refusal`.
    A file is hashed here, once: its sha256 is the weights' identity."""
    if weights.lower() == "none":
        return BackboneWeights(name, spec, weights, f"none(seed={SEED_FOR_RANDOM_INIT})", None, preprocess,
                               recipe=recipe)
    if weights.upper() == "DEFAULT":
        path, kind = default()
    elif is_weights_file(weights) or weights.endswith(".safetensors"):
        path, kind = Path(weights).expanduser(), "file:"
        if not path.is_file():
            raise BackboneError(f"weights file {path} does not exist")
        check_made_for(path, name)  # a finetune backbone.pt of another backbone: name that one
    else:
        raise BackboneError(f"--weights {weights} does not apply to {name}: {refusal}")
    sha = file_sha256(path)
    return BackboneWeights(name, spec, weights, f"{kind}sha256:{sha[:16]}", None, preprocess, str(path.resolve()),
                           sha, recipe)


def token_pools(prefix_tokens: int | None) -> tuple[str, ...]:
    """The --pool choices of a model whose output has `prefix_tokens` (CLS, registers) before its patch tokens: none
    without tokens (None), the mean only without a CLS token."""
    if prefix_tokens is None:
        return ()
    return TOKEN_POOLS if prefix_tokens > 0 else ("mean",)
