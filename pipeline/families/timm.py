"""timm's image models as backbones (`--backbone timm:NAME`, a tag as in `timm:convnext_tiny.fb_in1k` included).

The row is timm's pooled pre-logits vector (`num_classes=0`), and the preprocessing is timm's eval transform as
`resolve_model_data_config` + `create_transform` make it: the input size, crop_pct (the resize is
floor(size / crop_pct)), center or squash crop, the PIL interpolation, mean and std. The decode stage resizes with
that same PIL filter, so the pixels equal the transform's; the store records timm's version, the model's config and
the data config, and fingerprints them. Imported only for a `timm:` name.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache, partial
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from pipeline.backbones import Backbone, BackboneError, BackboneWeights, Preprocess, seeded
from pipeline.families import FamilySpec, TokenGrid, chosen_weights, token_pools

# timm interpolation names the decode stage resizes with (as the PIL filter of the same name)
_RESAMPLE = {"bilinear": "pil", "bicubic": "pil-bicubic", "nearest": "pil-nearest", "lanczos": "pil-lanczos",
             "box": "pil-box", "hamming": "pil-hamming"}
_GLOBAL_POOL = {"cls": "token", "mean": "avg"}  # --pool as timm's ViT global_pool names it
HUB_FILE = "model.safetensors"  # the file timm's Hugging Face repositories hold the weights in
# What `cli.py backbones` lists without --filter: the usual CNN and ViT feature extractors, self-supervised included
CURATED = ("convnext_tiny", "convnext_small", "efficientnet_b0", "resnet50", "vit_small_patch16_224",
           "vit_base_patch16_224", "vit_small_patch14_dinov2", "vit_base_patch14_dinov2")


@lru_cache(maxsize=None)
def skeleton(model: str) -> nn.Module:
    """The architecture on the meta device, classifier removed (no memory, no init): its config, blocks and shapes
    without building it."""
    try:
        with torch.device("meta"), torch.inference_mode(False):  # cached: never inference tensors, never a graph
            return timm.create_model(model, pretrained=False, num_classes=0).requires_grad_(False)
    except RuntimeError as e:  # "Unknown model (x)", "Invalid pretrained tag (t) for x."
        like = timm.list_models(f"*{model.split('.')[0]}*")[:6]
        raise BackboneError(f"--backbone timm:{model}: {e} in timm {timm.__version__}"
                            + (f"; similar: {', '.join(like)}" if like else "; list them with timm.list_models()")
                            ) from None


@lru_cache(maxsize=None)
def _data_config(model: str) -> dict:
    return resolve_model_data_config(skeleton(model))


@lru_cache(maxsize=None)
def spec(model: str) -> FamilySpec:
    """dim (the forward's row, traced on the meta device), input side and the last feature stage for Grad-CAM."""
    net = skeleton(model)
    side = _data_config(model)["input_size"][-1]
    dim = int(net(torch.empty(1, 3, side, side, device="meta")).shape[-1])
    info = getattr(net, "feature_info", None) or [{}]
    prefix = getattr(net, "num_prefix_tokens", None)  # ViTs (and their kin): --pool picks timm's global_pool
    return FamilySpec(dim=dim, input_size=side, cam_layer=_cam_layer(net, info[-1].get("module", "")),
                      token_pools=token_pools(prefix))


def _cam_layer(net: nn.Module, last: str) -> str:
    """The last feature stage; for a transformer whose row is its class token, the last block's first norm instead:
    the last block's patch tokens reach the row through nothing (its class token alone is read), so their gradient
    is zero, while its norm1 output feeds the attention the class token reads (pytorch-grad-cam's ViT recipe)."""
    block = dict(net.named_modules()).get(last)
    if getattr(net, "global_pool", None) == "token" and hasattr(block, "norm1"):
        return f"{last}.norm1"
    return last


def cam_tokens(net: nn.Module) -> TokenGrid | None:
    """A timm vision transformer's prefix tokens and patch grid (None for a CNN): explain's token -> map reshape."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is None or not hasattr(net, "num_prefix_tokens"):
        return None
    return TokenGrid(int(net.num_prefix_tokens), int(grid[0]), int(grid[1]))


def preprocess(model: str) -> Preprocess:
    """timm's eval transform as a Preprocess (refused, in one line, where framecache cannot reproduce it)."""
    cfg = _data_config(model)
    _, height, width = cfg["input_size"]
    mode, pct, interpolation = cfg["crop_mode"], cfg["crop_pct"], cfg["interpolation"]
    if height != width:
        raise BackboneError(f"timm:{model} takes {height}x{width} input; framecache embeds square inputs "
                            "(--size): choose a model with a square input")
    if mode not in ("center", "squash") or interpolation not in _RESAMPLE:
        raise BackboneError(f"timm:{model}'s eval transform ({mode} crop, {interpolation} interpolation) is not one "
                            "framecache reproduces (center or squash crops, PIL filters): choose another model")
    side = math.floor(height / pct)  # as timm's transforms_imagenet_eval
    return Preprocess(height, side if mode == "center" else (side, side), tuple(cfg["mean"]), tuple(cfg["std"]),
                      _RESAMPLE[interpolation], pct, bool(skeleton(model).pretrained_cfg.get("fixed_input_size")))


def recipe(model: str) -> dict:
    """What the store records and fingerprints of the model besides its weights: timm's version, the model's
    pretrained config and the data config its eval transform is made from (JSON values, as read back)."""
    cfg = {"library": "timm", "version": timm.__version__, "model": model,
           "pretrained_cfg": dict(skeleton(model).pretrained_cfg), "data_config": _data_config(model)}
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def weights_for(name: str, model: str, weights: str) -> BackboneWeights:
    """'none' (seeded random init), a checkpoint file, or DEFAULT: the name's own pretrained weights from the Hugging
    Face cache (fetched where there is network)."""
    return chosen_weights(name, weights, spec(model), preprocess(model), recipe(model),
                          lambda: (_hub_file(name, model), f"hub:{skeleton(model).pretrained_cfg['hf_hub_id']}:"),
                          f"use DEFAULT (timm's pretrained weights for the name's tag, e.g. {name.split('.')[0]}.TAG), "
                          "none, or a checkpoint file")


def names(pattern: str | None) -> list[str]:
    """CURATED, or timm's names matching `pattern` (fnmatch): architectures, or pretrained tags (`name.tag`) where
    the pattern has a dot."""
    if pattern is None:
        return list(CURATED)
    return timm.list_models(pattern, pretrained="." in pattern)


def weights_local(model: str) -> bool | None:
    """Whether the name's pretrained weights are in the Hugging Face cache (None: timm has none for it)."""
    hub_id = skeleton(model).pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, HUB_FILE), str)


def _hub_file(name: str, model: str) -> Path:
    hub_id = skeleton(model).pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        raise BackboneError(f"{name} has no Hugging Face weights in timm {timm.__version__}: pass --weights PATH to "
                            "a checkpoint file, or --weights none")
    from huggingface_hub import constants, hf_hub_download

    try:  # the cached file first: no network round trip (and no retries where there is no network)
        return Path(hf_hub_download(hub_id, HUB_FILE, local_files_only=True))
    except Exception:  # noqa: BLE001 — hub errors come in many types; all mean "not in the cache"
        pass
    try:
        return Path(hf_hub_download(hub_id, HUB_FILE))
    except Exception as e:  # noqa: BLE001 — hub and HTTP errors come in many types; all mean "not available here"
        raise BackboneError(
            f"cannot get {name} weights offline ({type(e).__name__}): download "
            f"https://huggingface.co/{hub_id}/resolve/main/{HUB_FILE} on a connected machine and pass --weights "
            f"/path/to/{HUB_FILE}, or put the repository in {constants.HF_HUB_CACHE} "
            f"(`hf download {hub_id}`)") from None


def build(chosen: BackboneWeights, model: str) -> Backbone:
    """The model with the chosen weights, classifier removed (num_classes=0), frozen, in eval mode."""
    net = seeded(partial(timm.create_model, model, pretrained=False, num_classes=0)) if chosen.file is None \
        else _from_file(chosen, model)
    if chosen.token_pool is not None:  # timm's own pooling of the normed tokens: CLS, or the patch tokens' mean
        net.reset_classifier(0, global_pool=_GLOBAL_POOL[chosen.token_pool])
    net.eval().requires_grad_(False)
    meta = {"library": f"timm {timm.__version__}"}
    if chosen.sha256 is not None:
        meta.update(weights_file=chosen.file, weights_sha256=chosen.sha256)
    return Backbone(chosen.name, net, chosen.preprocess, chosen.dim, chosen.id, False, meta, None,
                    chosen.spec.cam_layer)


def _from_file(chosen: BackboneWeights, model: str) -> nn.Module:
    """timm's own loading (its checkpoint filter adapts position embeddings and old key names), strict: the file's
    classifier, if it has one, is loaded with its own class count and then dropped."""
    try:
        state = timm.models.load_state_dict(chosen.file)
    except Exception as e:  # noqa: BLE001 — torch and safetensors raise many types for a bad file
        raise BackboneError(f"cannot load weights file {chosen.file}: {str(e).splitlines()[0]}") from None
    head = skeleton(model).pretrained_cfg.get("classifier") or ""
    head = head if isinstance(head, str) else head[0]
    classes = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else 0
    try:
        net = timm.create_model(model, pretrained=True, num_classes=classes,
                                pretrained_cfg_overlay={"state_dict": state, "num_classes": classes})
    except RuntimeError as e:  # strict loading: missing, unexpected or mis-shaped keys
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise BackboneError(f"{chosen.file} does not fit {chosen.name}: {' '.join(lines[:2])[:200]}") from None
    net.reset_classifier(0)
    return net
