"""Class embeddings for zero-shot classification, from the text tower of the very weights a store was made with.

Only families whose module answers `text_classifier` have a text tower (OpenCLIP); the weights are found and checked
as for re-embedding files (pipeline.extract.store_chosen: the same identity, the same sha256 of a file), so the text
side is the same model as the image side whose rows the store holds.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from featstore import StoreConfig
from pipeline.backbones import BackboneError, family_of
from pipeline.extract import store_chosen


def class_embeddings(config: StoreConfig, classnames: Sequence[str], template: str,
                     weights: str | None = None) -> tuple[torch.Tensor, float]:
    """(embeddings (C, D) of `template` filled with each class name, unit norm; the model's logit scale) from the
    text tower of the store's weights (`weights`: their file, if it moved since extract)."""
    name = config.backbone or "(no backbone recorded)"
    family = family_of(name)
    if family is None or not hasattr(family[0], "text_classifier"):
        raise BackboneError(f"zero-shot needs a store made with a CLIP image tower (--backbone open_clip:ARCH); "
                            f"this store was made with {name}, which has no text tower")
    if config.layer is not None or config.pooled == "max":
        what = f"--layer {config.layer}'s pooled output" if config.layer else "a max over each video's rows"
        raise BackboneError(f"zero-shot compares text with CLIP's image embedding, but this store's rows are {what}: "
                            "use a store extracted without --layer (or pooled with --pool mean)")
    _, chosen = store_chosen(config, weights=weights)
    return family[0].text_classifier(chosen, family[1], list(classnames), template)
