"""Hugging Face transformers models as backbones (`--backbone hf:REPO_ID` or `hf:/path/to/save_pretrained/dir`).

Image models (ViT, DINOv2, SigLIP's or CLIP's vision tower, ...) give one row a frame: the model's own pooled output
(`pooler_output`: ViT's dense+tanh over CLS, DINOv2's normed CLS, SigLIP's attention-pooling head), or the mean of
its tokens where it has no pooler. Video models (a `num_frames` or `frames_per_clip` config: VideoMAE, V-JEPA 2's
encoder) give one row a clip: the mean of their tokens (VideoMAE's classifier pools so; its `fc_norm` belongs to the
classifier), with the clip's length and side read from the config. `--pool cls|mean` takes the CLS token or the mean
of the patch tokens instead (`last_hidden_state`; register and distillation tokens left out).

Preprocessing is the model's image processor as transformers' PIL backend runs it (`backend="pil"`: the reference
its torchvision backend approximates), else its video processor (torchvision only): size, center crop (floor offsets,
as transformers cuts), resample filter, 1/255 rescale, mean and std. The decode stage makes the same resize (the PIL
filter, or transforms.v2's antialiased bilinear on uint8 tensors) and crop, so the pixels are the processor's. The
store records transformers' version, the model's config and the processor's config, and fingerprints them.
Everything is read from one local directory: a save_pretrained directory, or a hub repository's snapshot in the
Hugging Face cache (fetched where there is network). Imported only for an `hf:` name.
"""
from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoVideoProcessor, PretrainedConfig

from pipeline.backbones import (SEED_FOR_RANDOM_INIT, Backbone, BackboneError, BackboneWeights, ClipSpec,
                                Preprocess, file_sha256, seeded)
from pipeline.families import FamilySpec, TokenGrid, token_pools

# PIL's resample codes, as processors record them, and the decode stage's filter of the same name
_RESAMPLE = {0: "pil-nearest", 1: "pil-lanczos", 2: "pil", 3: "pil-bicubic", 4: "pil-box", 5: "pil-hamming"}
# torchvision-backend processors (video processors have no other) resize uint8 tensors, antialiased: bilinear only
_TENSOR_RESAMPLE = {2: "tensor-antialias"}
# The files a hub snapshot needs: configs, processor configs and the weights (no other frameworks' copies)
HUB_FILES = ["*.json", "*.safetensors", "pytorch_model*.bin"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # save_pretrained's single file (shards: an index.json)
# Config keys that say where and by which version a config was written, not what the model is
_VOLATILE = {"_name_or_path", "transformers_version"}
# What `cli.py backbones` lists without --filter: the usual image and video feature extractors on the hub
CURATED = ("facebook/dinov2-small", "facebook/dinov2-base", "facebook/dinov2-with-registers-small",
           "google/vit-base-patch16-224-in21k", "google/siglip-base-patch16-224", "openai/clip-vit-base-patch32",
           "MCG-NJU/videomae-base", "facebook/vjepa2-vitl-fpc64-256")


@contextmanager
def _quiet():
    """transformers' loading without its progress bars and warnings: the library never prints (a missing weight is
    refused here, not warned about)."""
    bars, level = transformers.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.get_verbosity()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _is_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().is_dir()


@lru_cache(maxsize=None)
def source_dir(model: str) -> Path:
    """The local directory the model is read from: the save_pretrained directory named, or the hub repository's
    snapshot in the Hugging Face cache (downloaded where there is network; one line naming what to fetch without)."""
    if _is_local(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise BackboneError(f"--backbone hf:{model}: {path} is not a save_pretrained directory (no config.json)")
        return path.resolve()
    from huggingface_hub import constants, snapshot_download

    try:  # the cached snapshot first: no network round trip (and no retries where there is no network)
        return Path(snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 — hub errors come in many types; all mean "not in the cache"
        pass
    try:
        return Path(snapshot_download(model, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 — hub and HTTP errors come in many types; all mean "not available here"
        raise BackboneError(
            f"cannot get hf:{model} offline ({type(e).__name__}): on a connected machine run `hf download {model}` "
            f"and copy its cache folder models--{model.replace('/', '--')} into {constants.HF_HUB_CACHE}, or "
            "save_pretrained the model and its processor to a directory and pass --backbone hf:/path/to/dir") from None


def names(pattern: str | None) -> list[str]:
    """CURATED, or the names matching `pattern` (fnmatch) among CURATED and the model repositories in the Hugging
    Face cache (the hub's own search needs the network; the listing never asks it)."""
    if pattern is None:
        return list(CURATED)
    return fnmatch.filter(sorted({*CURATED, *_cached_repos()}), pattern)


def _cached_repos() -> list[str]:
    from huggingface_hub import scan_cache_dir

    try:
        return [repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model"]
    except Exception:  # noqa: BLE001 — no cache directory yet, or one being written: nothing cached to list
        return []


def _in_cache(model: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, filename), str)


def weights_local(model: str) -> bool | None:
    """Whether the repository's config and weights are in the Hugging Face cache (None: a local directory, which has
    nothing to download)."""
    if _is_local(model):
        return None
    return _in_cache(model, "config.json") and any(_in_cache(model, f) or _in_cache(model, f"{f}.index.json")
                                                   for f in WEIGHT_FILES)


def undescribed(model: str) -> str | None:
    """Why `cli.py backbones` cannot describe the name here without the network (its config is read from the cached
    snapshot), or None."""
    if _is_local(model) or _in_cache(model, "config.json"):
        return None
    return f"not in the Hugging Face cache: `hf download {model}` (on a connected machine) to describe it"


@lru_cache(maxsize=None)
def _config(model: str) -> PretrainedConfig:
    """The model's config; a two-tower model's (CLIP, SigLIP) vision tower's."""
    directory = source_dir(model)
    with _quiet():
        try:
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
        except (ValueError, OSError) as e:
            raise BackboneError(f"--backbone hf:{model}: {str(e).splitlines()[0][:200]}") from None
    return getattr(config, "vision_config", None) or config


@lru_cache(maxsize=None)
def _processor(model: str):
    """The model's image processor, PIL backend (the one whose resize and crop the decode stage reproduces), else its
    video processor (V-JEPA 2's: torchvision only, whose antialiased tensor resize the decode stage also makes)."""
    directory = source_dir(model)
    with _quiet():
        try:
            return AutoImageProcessor.from_pretrained(directory, backend="pil", local_files_only=True)
        except (ValueError, OSError) as image_error:
            try:
                return AutoVideoProcessor.from_pretrained(directory, local_files_only=True)
            except (ValueError, OSError):
                raise BackboneError(f"--backbone hf:{model} has no image or video processor transformers reads "
                                    f"({str(image_error).splitlines()[0][:120]}): save_pretrained the model's "
                                    "processor beside it") from None


def _frames(config: PretrainedConfig) -> int | None:
    """Frames per clip of a video model's config (VideoMAE's num_frames, V-JEPA 2's frames_per_clip; None: an image
    model)."""
    return getattr(config, "num_frames", None) or getattr(config, "frames_per_clip", None)


@lru_cache(maxsize=None)
def skeleton(model: str) -> nn.Module:
    """The architecture on the meta device (no memory, no init): its config, blocks and shapes without building
    it."""
    config = _config(model)
    with torch.device("meta"), torch.inference_mode(False), _quiet():  # cached: no inference tensors, no graph
        try:
            return AutoModel.from_config(config).requires_grad_(False)
        except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
            raise BackboneError(f"hf:{model} ({config.model_type}) has no AutoModel in transformers "
                                f"{transformers.__version__}: not supported ({str(e).splitlines()[0][:80]})") from None


def _side(model: str) -> int:
    return preprocess(model).crop


def _options(model: str) -> dict:
    """The forward's keyword arguments besides the pixels: position embeddings interpolated to the input's side where
    the model offers that (ViT, SigLIP; DINOv2 always interpolates; at the config's side it changes nothing), and
    V-JEPA 2's predictor skipped (the row is its encoder's)."""
    takes = inspect.signature(skeleton(model).forward).parameters
    return {k: True for k in ("interpolate_pos_encoding", "skip_predictor") if k in takes}


def _trace(model: str, side: int, frames: int | None = None):
    """The model's output for one input of `side` pixels (and `frames` frames, the config's by default, for a video
    model), on the meta device (no compute)."""
    frames = frames or _frames(_config(model))
    shape = (1, 3, side, side) if frames is None else (1, frames, 3, side, side)
    net = skeleton(model)
    return net(**{net.main_input_name: torch.empty(shape, device="meta")}, **_options(model))


@lru_cache(maxsize=None)
def _tokens(model: str) -> tuple[int, int | None]:
    """(the row size of the model's own output, the number of prefix tokens: CLS, registers, distillation), traced
    on the meta device; None where the output has no tokens."""
    config, side, _ = _config(model), _side(model), skeleton(model)  # (an unsupported model refused first)
    try:
        out = _trace(model, side)
    except (RuntimeError, ValueError, TypeError) as e:
        raise BackboneError(f"hf:{model} ({config.model_type}) does not embed framecache's frames or clips "
                            f"({str(e).splitlines()[0][:120]}): not supported") from None
    hidden, pooled = out.last_hidden_state, getattr(out, "pooler_output", None)
    dim = int(pooled.flatten(1).shape[-1]) if pooled is not None else int(hidden.shape[-1] if hidden.ndim == 3
                                                                          else hidden.shape[1])
    patch = getattr(config, "patch_size", None)
    if hidden.ndim != 3 or not isinstance(patch, int):
        return dim, None
    frames = _frames(config)
    patches = (side // patch) ** 2 * (1 if frames is None else frames // getattr(config, "tubelet_size", 1))
    return dim, int(hidden.shape[1]) - patches


@lru_cache(maxsize=None)
def _fixed(model: str, side: int) -> bool:
    """Whether the model takes only its own `side` (and clip length): position embeddings built for them, not
    interpolated (ViT without interpolation, VideoMAE's sinusoid table), traced one patch (and tubelet) larger."""
    config, frames, _ = _config(model), _frames(_config(model)), skeleton(model)  # (refused first, as _tokens)
    try:
        _trace(model, side + 2 * _patch(config), frames and frames + getattr(config, "tubelet_size", 1))
    except (RuntimeError, ValueError):
        return True
    return False


def _patch(config: PretrainedConfig) -> int:
    patch = getattr(config, "patch_size", None)
    return patch if isinstance(patch, int) else 8


@lru_cache(maxsize=None)
def spec(model: str) -> FamilySpec:
    """dim (traced), input side (the processor's crop), clip limits from the config (video models take exactly the
    config's frames and side: their position embeddings are built for them), and the --pool choices."""
    config, side = _config(model), _side(model)
    dim, prefix = _tokens(model)
    frames = _frames(config)
    if frames is None:
        clip = None
    elif _fixed(model, side):  # exactly the config's clip
        clip = ClipSpec(frames, side, True, frames)
    else:  # any clip of whole tubelets and patches; the config's length by default
        clip = ClipSpec(getattr(config, "tubelet_size", 1), _patch(config), False, frames)
    cam = _cam_layer(skeleton(model)) if frames is None and prefix is not None else ""
    return FamilySpec(dim=dim, input_size=side, clip=clip, token_pools=token_pools(prefix), cam_layer=cam)


def _cam_layer(net: nn.Module) -> str:
    """The Grad-CAM default of an image transformer: its last encoder layer's first norm (ViT's
    `layers.N.layernorm_before` in transformers 5, DINOv2's norm1, SigLIP's and CLIP's layer_norm1). The last layer's
    patch tokens reach a CLS row (ViT's pooler, DINOv2's CLS) through nothing, so their gradient is zero, while that
    norm's output feeds the attention the CLS token reads (as timm's default, pipeline/families/timm.py). Named inside
    Rows (`net.`); '' where none is found."""
    layers = [(name, m) for name, m in net.named_modules()
              if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers") and len(m)]
    if not layers:
        return ""
    name, blocks = layers[-1]
    last = len(blocks) - 1
    norm = next((n for n, m in blocks[last].named_children() if isinstance(m, nn.LayerNorm)), None)
    return f"net.{name}.{last}" + (f".{norm}" if norm else "")


def cam_tokens(net: nn.Module) -> TokenGrid | None:
    """An image transformer's prefix tokens (CLS, registers, distillation) and its square patch grid, read off the
    token count (the positions are interpolated to the input's side); None for a video model or one without
    tokens."""
    if not isinstance(net, Rows) or net.video or net.prefix is None:
        return None
    return TokenGrid(net.prefix)


def preprocess(model: str) -> Preprocess:
    """The processor's recipe as a Preprocess (refused, in one line, where framecache cannot reproduce it)."""
    p = _processor(model)
    cfg = p.to_dict()  # sizes as plain dicts, whichever backend
    side, resize = _sizes(model, cfg)
    rescale = cfg["rescale_factor"] if cfg.get("do_rescale") else 1.0
    resample = _RESAMPLE.get(cfg.get("resample")) if p.backend == "pil" else _TENSOR_RESAMPLE.get(cfg.get("resample"))
    if resample is None or abs(rescale - 1 / 255) > 1e-12 or cfg.get("do_pad") or cfg.get("crop_pct") is not None:
        raise BackboneError(f"hf:{model}'s processor ({p.backend} resample {cfg.get('resample')}, rescale {rescale}, "
                            "padding or crop_pct) is not one framecache reproduces (PIL filters, or bilinear tensors; "
                            "1/255; no padding): choose another model")
    mean, std = (tuple(cfg["image_mean"]), tuple(cfg["image_std"])) if cfg.get("do_normalize") \
        else ((0.0,) * 3, (1.0,) * 3)
    return Preprocess(side, resize, mean, std, resample, fixed=_fixed(model, side), crop_floor=True)


def _sizes(model: str, cfg: dict) -> tuple[int, int | tuple[int, int]]:
    """(the model's input side, the resize before the crop) of a processor config: a shortest edge then a square
    center crop, or a square (then cropped or not)."""
    size, crop = cfg.get("size") or {}, (cfg.get("crop_size") or {}) if cfg.get("do_center_crop") else {}
    if crop.get("height") != crop.get("width") or size.get("height") != size.get("width"):
        raise BackboneError(f"hf:{model} takes a non-square input ({crop or size}); framecache embeds square inputs "
                            "(--size): choose another model")
    if set(size) == {"shortest_edge"} and crop:
        return int(crop["height"]), int(size["shortest_edge"])
    if set(size) == {"height", "width"}:
        return int(crop.get("height", size["height"])), (int(size["height"]),) * 2
    raise BackboneError(f"hf:{model}'s processor resizes to {size} without a square crop: framecache reproduces a "
                        "resize to a shortest edge then a center crop, or to a square")


def recipe(model: str) -> dict:
    """What the store records and fingerprints of the model besides its weights: transformers' version, the model's
    config and the processor's (JSON values, as read back)."""
    config = {k: v for k, v in _config(model).to_dict().items() if k not in _VOLATILE}
    made = {"library": "transformers", "version": transformers.__version__, "model": model, "config": config,
            "processor": _processor(model).to_dict()}
    return json.loads(json.dumps(made, sort_keys=True, default=str))


def weights_sha256(directory: Path) -> str:
    """The sha256 of a save_pretrained directory's weights: its weights file's, or, for shards, of each shard's name
    and sha256 in order."""
    index = next((directory / f"{w}.index.json" for w in WEIGHT_FILES if (directory / f"{w}.index.json").is_file()),
                 None)
    if index is None:
        single = next((directory / w for w in WEIGHT_FILES if (directory / w).is_file()), None)
        if single is None:
            raise BackboneError(f"{directory} holds no weights ({' or '.join(WEIGHT_FILES)}): save_pretrained the "
                                "model there, or pass --weights none")
        return file_sha256(single)
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    lines = "".join(f"{s}:{file_sha256(directory / s)}\n" for s in shards)
    return hashlib.sha256(lines.encode()).hexdigest()


def weights_for(name: str, model: str, weights: str) -> BackboneWeights:
    """'none' (seeded random init from the config), DEFAULT (the weights beside the config: the directory's, or the
    hub snapshot's) or another save_pretrained directory of the same architecture. The weights are hashed here,
    once."""
    pre, shape, made = preprocess(model), spec(model), recipe(model)
    if weights.lower() == "none":
        return BackboneWeights(name, shape, weights, f"none(seed={SEED_FOR_RANDOM_INIT})", None, pre, recipe=made)
    if weights.upper() == "DEFAULT":
        path, kind = source_dir(model), "dir:" if _is_local(model) else f"hub:{model}:"
    elif Path(weights).expanduser().is_dir():
        path, kind = Path(weights).expanduser().resolve(), "dir:"
    else:
        raise BackboneError(f"--weights {weights} does not apply to {name}: use DEFAULT (the weights beside its "
                            "config), none, or a save_pretrained directory of the same model")
    sha = weights_sha256(path)
    return BackboneWeights(name, shape, weights, f"{kind}sha256:{sha[:16]}", None, pre, str(path), sha, made)


class Rows(nn.Module):
    """A transformers model whose forward takes framecache's (B, 3, H, W) frames or (B, 3, T, H, W) clips and returns
    the row: the pooled output, or the CLS token / mean of the patch tokens (`pool`)."""

    def __init__(self, net: nn.Module, video: bool, pool: str | None, prefix: int | None, options: dict):
        super().__init__()
        self.net, self.video, self.pool, self.prefix, self.options = net, video, pool, prefix, options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1, 3, 4) if self.video else x  # transformers' video models take (B, T, 3, H, W)
        out = self.net(**{self.net.main_input_name: x}, **self.options)
        tokens = out.last_hidden_state
        if self.pool == "cls":
            return tokens[:, 0]
        pooled = None if self.pool == "mean" else getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        return tokens[:, self.prefix or 0:].mean(1) if tokens.ndim == 3 else tokens.flatten(2).mean(2)


def build(chosen: BackboneWeights, model: str) -> Backbone:
    """The model with the chosen weights, frozen, in eval mode, its forward giving the row."""
    config = _config(model)
    if chosen.file is None:
        net = seeded(lambda: AutoModel.from_config(config))
    else:
        net = _from_dir(chosen, model, config)
    if "skip_predictor" in _options(model):  # V-JEPA 2's pretraining predictor: never run, so not kept either
        net.predictor = nn.Identity()
    net.eval().requires_grad_(False)
    meta = {"library": f"transformers {transformers.__version__}"}
    if chosen.sha256 is not None:
        meta.update(weights_file=chosen.file, weights_sha256=chosen.sha256)
    rows = Rows(net, _frames(config) is not None, chosen.token_pool, _tokens(model)[1], _options(model))
    return Backbone(chosen.name, rows, chosen.preprocess, chosen.dim, chosen.id, False, meta, chosen.spec.clip,
                    chosen.spec.cam_layer)


def _from_dir(chosen: BackboneWeights, model: str, config: PretrainedConfig) -> nn.Module:
    """transformers' own loading, strict: a weight the row needs and the directory lacks is refused, never left at
    random init (the pooler is not needed with --pool)."""
    with _quiet():
        try:
            net, info = AutoModel.from_pretrained(chosen.file, config=config, output_loading_info=True,
                                                  local_files_only=True)
        except (ValueError, OSError, RuntimeError) as e:
            raise BackboneError(f"cannot load {chosen.file} as {chosen.name}: {str(e).splitlines()[0][:200]}") from None
    missing = sorted(k for k in info["missing_keys"] if not (chosen.token_pool and k.startswith("pooler.")))
    bad = missing + sorted(info["mismatched_keys"])
    if bad:
        hint = "; with --pool cls|mean the row needs no pooler" if all(k.startswith("pooler.") for k in bad) else ""
        raise BackboneError(f"{chosen.file} does not fit {chosen.name}: it lacks or mis-shapes {len(bad)} weights "
                            f"({', '.join(map(str, bad[:3]))}){hint}")
    return net
