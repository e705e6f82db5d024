"""OpenCLIP image towers as backbones (`--backbone open_clip:ARCH`, or `open_clip:ARCH/TAG` for one of its pretrained
tags), and their text towers for zero-shot classifiers (heads/zeroshot.py).

The row is OpenCLIP's `encode_image` with `normalize=False`: the pooled, projected image embedding, kept unnormalised
(zero-shot normalises it). The preprocessing is OpenCLIP's own eval `preprocess`, as `create_model` configures it for
the architecture and the name's tag: the image size, shortest-side resize + center crop or squash, bicubic or bilinear
(the decode stage resizes with the same PIL filter, so the pixels equal the transform's), mean and std. The store
records OpenCLIP's version, the model config and that preprocess config, and fingerprints them. Imported only for an
`open_clip:` name.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import os
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.transform import merge_preprocess_dict
from torch import nn

from pipeline.backbones import Backbone, BackboneError, BackboneWeights, Preprocess, seeded
from pipeline.families import FamilySpec, TokenGrid, chosen_weights

# OpenCLIP interpolation names the decode stage resizes with (as the PIL filter of the same name; OpenCLIP's eval
# transform maps 'random' to bicubic)
_RESAMPLE = {"bicubic": "pil-bicubic", "bilinear": "pil", "random": "pil-bicubic"}
_RESIZE = ("shortest", "squash")  # eval resize modes framecache reproduces ('longest' pads: it does not)
ROW = "encode_image(normalize=False): pooled, projected, not normalised"
CLIP_CACHE = "~/.cache/clip"  # where OpenCLIP keeps weights it downloads from a URL (download_pretrained_from_url)
# What `cli.py backbones` lists without --filter: OpenAI's CLIPs and LAION's OpenCLIPs of the same towers
CURATED = ("ViT-B-32/openai", "ViT-B-16/openai", "ViT-L-14/openai", "ViT-B-32/laion2b_s34b_b79k",
           "ViT-B-16/laion2b_s34b_b88k", "ViT-L-14/laion2b_s32b_b82k", "RN50/openai")


@lru_cache(maxsize=None)
def _names(model: str) -> tuple[str, str | None]:
    """(architecture, pretrained tag) of `ARCH` or `ARCH/TAG`; the tag defaults to the architecture's first one
    (None where OpenCLIP lists none), so the name alone fixes the preprocessing."""
    arch, _, tag = model.partition("/")
    if open_clip.get_model_config(arch) is None:
        like = difflib.get_close_matches(arch, open_clip.list_models(), n=6, cutoff=0.5)
        raise BackboneError(f"--backbone open_clip:{model}: unknown architecture {arch!r} in OpenCLIP "
                            f"{open_clip.__version__}" + (f"; similar: {', '.join(like)}" if like else
                                                          "; list them with open_clip.list_models()"))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and not open_clip.is_pretrained_cfg(arch, tag):
        raise BackboneError(f"--backbone open_clip:{model}: {arch} has no pretrained tag {tag!r}; its tags: "
                            f"{', '.join(tags) or '(none: use --weights PATH or none)'}")
    return arch, tag or (tags[0] if tags else None)


def _tag_cfg(model: str) -> dict:
    arch, tag = _names(model)
    return open_clip.get_pretrained_cfg(arch, tag) if tag else {}


def _create_kwargs(model: str) -> dict:
    """What create_model is given besides the weights: the tag's QuickGELU (OpenCLIP only warns when a tag trained
    with it meets a config without it), its preprocessing, and no separate tower weights (no download)."""
    cfg = _tag_cfg(model)
    return {"force_quick_gelu": bool(cfg.get("quick_gelu", False)), "pretrained_text": False,
            "pretrained_image": False,
            "force_preprocess_cfg": merge_preprocess_dict({}, cfg)}  # the tag's keys only: the size is the tower's


@contextmanager
def _quiet():
    """OpenCLIP logs its notices on the root logger ("No pretrained weights loaded ... initialized randomly" for
    every skeleton, and for the seeded init that --weights none asks for): kept out of the output while it builds."""
    def hush(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}open_clip{os.sep}" not in record.pathname

    root = logging.getLogger()
    root.addFilter(hush)
    try:
        yield
    finally:
        root.removeFilter(hush)


@lru_cache(maxsize=None)
def skeleton(model: str) -> nn.Module:
    """The image tower on the meta device (no memory, no init), its preprocess config set as create_model sets it."""
    try:
        with torch.device("meta"), torch.inference_mode(False), _quiet():  # cached: no inference tensors, no graph
            return open_clip.create_model(_names(model)[0], device="meta",
                                          **_create_kwargs(model)).visual.requires_grad_(False)
    except (RuntimeError, ValueError, OSError) as e:  # a config OpenCLIP cannot build here (a hub text config offline)
        raise BackboneError(f"--backbone open_clip:{model}: OpenCLIP {open_clip.__version__} cannot build it: "
                            f"{str(e).splitlines()[0][:160]}") from None


@lru_cache(maxsize=None)
def spec(model: str) -> FamilySpec:
    """dim (encode_image's size, traced on the meta device), input side and the last block for Grad-CAM."""
    net = skeleton(model)
    side = preprocess(model).crop
    dim = int(net(torch.empty(1, 3, side, side, device="meta")).shape[-1])
    return FamilySpec(dim=dim, input_size=side, cam_layer=_cam_layer(net))


def _cam_layer(net: nn.Module) -> str:
    """A ViT's last residual block; its first norm (`ln_1`) where the row is the class token alone: the last block's
    patch tokens reach that row through nothing, so their gradient is zero, while ln_1's output feeds the attention
    the class token reads (as timm's default, pipeline/families/timm.py). ModifiedResNet: its last stage."""
    if not hasattr(net, "transformer"):
        return "layer4" if hasattr(net, "layer4") else ""  # timm towers name none
    last = f"transformer.resblocks.{len(net.transformer.resblocks) - 1}"
    return f"{last}.ln_1" if net.pool_type == "tok" and net.attn_pool is None else last


def cam_tokens(net: nn.Module) -> TokenGrid | None:
    """A ViT tower's one class token and patch grid (None for a ResNet tower, or blocks run sequence-first)."""
    if not hasattr(net, "transformer") or not net.transformer.batch_first:
        return None
    return TokenGrid(1, int(net.grid_size[0]), int(net.grid_size[1]))


def _preprocess_cfg(model: str) -> dict:
    return dict(skeleton(model).preprocess_cfg)


def preprocess(model: str) -> Preprocess:
    """OpenCLIP's eval transform as a Preprocess (refused, in one line, where framecache cannot reproduce it)."""
    cfg = _preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    mode, interpolation = cfg["resize_mode"], cfg["interpolation"]
    if size[0] != size[1]:
        raise BackboneError(f"open_clip:{model} takes {size[0]}x{size[1]} input; framecache embeds square inputs "
                            "(--size): choose a model with a square input")
    if mode not in _RESIZE or interpolation not in _RESAMPLE:
        raise BackboneError(f"open_clip:{model}'s eval transform ({mode} resize, {interpolation} interpolation) is "
                            "not one framecache reproduces (shortest or squash resizes, bicubic or bilinear): "
                            "choose another model")
    side = int(size[0])
    # the tower takes its config's image size only (positional embeddings, attention pooling): fixed
    return Preprocess(side, side if mode == "shortest" else (side, side), tuple(cfg["mean"]), tuple(cfg["std"]),
                      _RESAMPLE[interpolation], None, True)


def recipe(model: str) -> dict:
    """What the store records and fingerprints of the model besides its weights: OpenCLIP's version, the model
    config, the preprocess config and what the row is (JSON values, as read back)."""
    arch, tag = _names(model)
    cfg = {"library": "open_clip", "version": open_clip.__version__, "model": model, "architecture": arch,
           "pretrained_tag": tag, "model_cfg": open_clip.get_model_config(arch),
           "quick_gelu": _create_kwargs(model)["force_quick_gelu"], "preprocess_cfg": _preprocess_cfg(model),
           "row": ROW}
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def weights_for(name: str, model: str, weights: str) -> BackboneWeights:
    """'none' (seeded random init), a checkpoint file (OpenCLIP's own loading), or DEFAULT: the name's tag's weights
    from the Hugging Face or OpenCLIP cache (fetched where there is network)."""
    arch, tag = _names(model)
    return chosen_weights(name, weights, spec(model), preprocess(model), recipe(model),
                          lambda: (_pretrained_file(name, model), f"hub:{arch}/{tag}:"),
                          "use DEFAULT (the weights of the name's pretrained tag, open_clip:ARCH/TAG), none, or an "
                          "OpenCLIP checkpoint file")


def _pretrained_file(name: str, model: str) -> Path:
    """The tag's checkpoint: from the cache first (no network round trip), else fetched by OpenCLIP; without network,
    one line naming the file to fetch and where to put it."""
    arch, tag = _names(model)
    cfg = _tag_cfg(model)
    if not cfg:
        raise BackboneError(f"OpenCLIP {open_clip.__version__} has no pretrained weights for {arch}: pass --weights "
                            "PATH to an OpenCLIP checkpoint file, or --weights none")
    cached = _cached_file(cfg)
    if cached is not None:
        return cached
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as e:  # noqa: BLE001 — hub, URL and checksum errors come in many types; all mean "not here"
        raise BackboneError(f"cannot get {name} weights offline ({type(e).__name__}): " + _fetch_hint(cfg)) from None


def _hub_file(cfg: dict) -> tuple[str, str]:
    """(Hugging Face repository, file) of a pretrained config ('' where it has none: a URL-only tag)."""
    repo, filename = os.path.split(cfg.get("hf_hub", ""))  # 'org/repo/' or 'org/repo/file', as OpenCLIP reads it
    return repo, filename or (HF_WEIGHTS_NAME if repo else "")


def _cached_file(cfg: dict) -> Path | None:
    """The tag's checkpoint where a cache holds it (the Hugging Face cache, or CLIP_CACHE for a URL-only tag), else
    None; never asks the network."""
    repo, filename = _hub_file(cfg)
    if repo:
        return _hub_cached(repo, filename)
    path = Path(CLIP_CACHE).expanduser() / Path(cfg["url"]).name
    return path if path.is_file() else None


def _hub_cached(repo: str, filename: str) -> Path | None:
    """The file (or its safetensors twin, which OpenCLIP prefers) in the Hugging Face cache, or None."""
    from huggingface_hub import hf_hub_download

    twins = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
    for candidate in (*twins, filename):
        try:
            return Path(hf_hub_download(repo, candidate, local_files_only=True))
        except Exception:  # noqa: BLE001 — hub errors come in many types; all mean "not in the cache"
            continue
    return None


def _fetch_hint(cfg: dict) -> str:
    repo, filename = _hub_file(cfg)
    if repo:
        from huggingface_hub import constants

        return (f"download https://huggingface.co/{repo}/resolve/main/{filename} on a connected machine and pass "
                f"--weights /path/to/{filename}, or put the repository in {constants.HF_HUB_CACHE} "
                f"(`hf download {repo} {filename}`)")
    return (f"download {cfg['url']} on a connected machine and pass --weights /path/to/{Path(cfg['url']).name}, "
            f"or put the file in {CLIP_CACHE}/")


def names(pattern: str | None) -> list[str]:
    """CURATED, or OpenCLIP's pretrained names (`ARCH/TAG`, open_clip.list_pretrained()) matching `pattern`
    (fnmatch)."""
    if pattern is None:
        return list(CURATED)
    return fnmatch.filter([f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained()], pattern)


def weights_local(model: str) -> bool | None:
    """Whether the name's tag's checkpoint is in a cache here (None: OpenCLIP has no weights for it)."""
    cfg = _tag_cfg(model)
    return _cached_file(cfg) is not None if cfg else None


def load_clip(chosen: BackboneWeights, model: str) -> nn.Module:
    """The whole CLIP (image and text towers) with the chosen weights, frozen, in eval mode: OpenCLIP's own
    create_model, loading a checkpoint strictly (a file of another architecture is refused, never loaded in part)."""
    arch = _names(model)[0]
    build = partial(open_clip.create_model, arch, **_create_kwargs(model))
    with _quiet():
        if chosen.file is None:
            net = seeded(build)
        else:
            try:
                net = build(pretrained=chosen.file)
            except Exception as e:  # noqa: BLE001 — torch, safetensors and strict loading raise many types
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                raise BackboneError(f"{chosen.file} does not fit {chosen.name}: "
                                    f"{' '.join(lines[:2])[:200]}") from None
    return net.eval().requires_grad_(False)


def build(chosen: BackboneWeights, model: str) -> Backbone:
    """The image tower with the chosen weights: its forward is encode_image(normalize=False)."""
    meta = {"library": f"open_clip {open_clip.__version__}", "normalised": False}
    if chosen.sha256 is not None:
        meta.update(weights_file=chosen.file, weights_sha256=chosen.sha256)
    return Backbone(chosen.name, load_clip(chosen, model).visual, chosen.preprocess, chosen.dim, chosen.id, False,
                    meta, None, chosen.spec.cam_layer)


def text_classifier(chosen: BackboneWeights, model: str, classnames: list[str],
                    template: str) -> tuple[torch.Tensor, float]:
    """(class embeddings (C, D), unit norm; logit scale) from the same weights' text tower: OpenCLIP's own
    build_zero_shot_classifier with its tokenizer (shipped with the library: no download for CLIP's BPE)."""
    clip = load_clip(chosen, model)
    try:
        tokenizer = open_clip.get_tokenizer(_names(model)[0])
    except Exception as e:  # noqa: BLE001 — a Hugging Face tokenizer not in the cache, offline
        raise BackboneError(f"cannot load {chosen.name}'s tokenizer ({str(e).splitlines()[0][:120]}): run once "
                            "where there is network so the Hugging Face cache holds it") from None
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(clip, tokenizer, classnames, [template])  # (D, C)
    return weights.T.float().contiguous(), float(clip.logit_scale.exp())
