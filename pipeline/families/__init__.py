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
from pathlib import Path
from typing import Callable

from pipeline.backbones import (SEED_FOR_RANDOM_INIT, TOKEN_POOLS, BackboneError, BackboneWeights, ClipSpec,
                                Preprocess, file_sha256, is_weights_file)


@dataclass(frozen=True)
class FamilySpec:
    """The registry's spec of a family's model: its row and what it takes, read from the library, not typed here."""
    dim: int                    # row size (the pooled pre-logits vector)
    input_size: int             # the side of its own input (its recipe's crop)
    cam_layer: str = ""         # default Grad-CAM target: the last block with a spatial map
    clip: ClipSpec | None = None  # None: an image model; else the clips it takes
    cpu_only: bool = False      # families have no int8-only kernels
    token_pools: tuple[str, ...] = ()  # the --pool choices: cls and/or mean where the output has tokens


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
