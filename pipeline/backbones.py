"""Backbone registry: a name maps to a torchvision builder, its weights enum and its embedding size.

`load_backbone(name, weights)` returns the frozen model together with the preprocessing that its
weights define (resize / crop / mean / std from the enum's own `transforms()`), so the two always
travel together. Adding a torchvision image or video model is one line in `REGISTRY`: whether it takes
clips, and which clips (frames, side), is read from its weights (the `VideoClassification` preset and the
`min_temporal_size` / `min_size` meta), not typed here.

A name with a prefix (`timm:convnext_tiny`) selects a family of FAMILIES instead: its own module under
pipeline/families, imported only when such a name is used, answers for the name (pipeline/families/__init__.py).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models import quantization as qmodels
from torchvision.models import video as vmodels
from torchvision.transforms._presets import VideoClassification  # the class video weights' transforms() build

from featstore.errors import FramecacheError
from pipeline.layers import Layer, LayerPool, layer_names, trace_layer

SEED_FOR_RANDOM_INIT = 0  # `--weights none` is always the same network, so one fingerprint = one model
# Frames per clip unless --clip-len says otherwise: torchvision's Kinetics recipes train and score VideoResNet, MViT
# and Swin3D on 16-frame clips (their weights' docs), and 16 is also what MViT's positional encoding is built for.
DEFAULT_CLIP_LEN = 16
# --pool: a token model's row is its CLS token or the mean of its patch tokens (instead of its own pooling)
TOKEN_POOLS = ("cls", "mean")


class BackboneError(FramecacheError, ValueError):
    """A backbone or weights choice that cannot be honoured (the message says what to do instead)."""


@dataclass(frozen=True)
class ClipSpec:
    """The clips a video backbone accepts: at least `min_len` frames of at least `min_size` pixels a side;
    exactly that where `fixed` (a positional encoding built for one input shape)."""
    min_len: int
    min_size: int
    fixed: bool
    default_len: int = DEFAULT_CLIP_LEN

    def check(self, name: str, clip_len: int, size: int) -> None:
        """Raise BackboneError naming the flag and the values this backbone allows."""
        for flag, value, least in (("--clip-len", clip_len, self.min_len), ("--size", size, self.min_size)):
            if self.fixed and value != least:
                raise BackboneError(f"{flag} {value} does not fit {name}: it takes exactly {flag} {least} "
                                    "(its positional encoding is built for that input)")
            if value < least:
                raise BackboneError(f"{flag} {value} is too small for {name}: use {flag} {least} or more")


@dataclass(frozen=True)
class BackboneSpec:
    builder: Callable[..., nn.Module]   # torchvision builder taking `weights=`
    weights: type                       # torchvision WeightsEnum
    dim: int                            # embedding size after the classifier is removed
    head: str                           # attribute holding the classifier, replaced by Identity
    cpu_only: bool = False              # int8 quantized models run on CPU kernels only
    cam_layer: str = ""                 # default Grad-CAM target: the last block with a spatial map
    fixed_clip: bool = False            # the weights' minimal clip is also the only one (MViT)
    token_pools: tuple[str, ...] = ()   # the --pool choices: none here (no registered model has tokens)

    @property
    def input_size(self) -> int:
        """The side of the weights' own input (their preset's crop)."""
        return int(self.weights.DEFAULT.transforms().crop_size[0])

    @property
    def clip(self) -> ClipSpec | None:
        """None for image backbones; for video ones the clip constraints their weights record."""
        member = self.weights.DEFAULT
        if not isinstance(member.transforms(), VideoClassification):
            return None
        return ClipSpec(int(member.meta.get("min_temporal_size", 1)), int(member.meta["min_size"][0]),
                        self.fixed_clip)


REGISTRY: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(models.resnet18, models.ResNet18_Weights, 512, "fc", cam_layer="layer4"),
    "resnet34": BackboneSpec(models.resnet34, models.ResNet34_Weights, 512, "fc", cam_layer="layer4"),
    "resnet50": BackboneSpec(models.resnet50, models.ResNet50_Weights, 2048, "fc", cam_layer="layer4"),
    "resnet101": BackboneSpec(models.resnet101, models.ResNet101_Weights, 2048, "fc", cam_layer="layer4"),
    "resnet152": BackboneSpec(models.resnet152, models.ResNet152_Weights, 2048, "fc", cam_layer="layer4"),
    "quantized_mobilenet_v2": BackboneSpec(partial(qmodels.mobilenet_v2, quantize=True),
                                           qmodels.MobileNet_V2_QuantizedWeights, 1280, "classifier",
                                           cpu_only=True, cam_layer="features.18"),
    "mobilenet_v2": BackboneSpec(models.mobilenet_v2, models.MobileNet_V2_Weights, 1280, "classifier",
                                 cam_layer="features.18"),
    "r3d_18": BackboneSpec(vmodels.r3d_18, vmodels.R3D_18_Weights, 512, "fc", cam_layer="layer4"),
    "mc3_18": BackboneSpec(vmodels.mc3_18, vmodels.MC3_18_Weights, 512, "fc", cam_layer="layer4"),
    "r2plus1d_18": BackboneSpec(vmodels.r2plus1d_18, vmodels.R2Plus1D_18_Weights, 512, "fc", cam_layer="layer4"),
    "s3d": BackboneSpec(vmodels.s3d, vmodels.S3D_Weights, 1024, "classifier", cam_layer="features.15"),
    "mvit_v1_b": BackboneSpec(vmodels.mvit_v1_b, vmodels.MViT_V1_B_Weights, 768, "head", cam_layer="blocks.15",
                              fixed_clip=True),
    "mvit_v2_s": BackboneSpec(vmodels.mvit_v2_s, vmodels.MViT_V2_S_Weights, 768, "head", cam_layer="blocks.15",
                              fixed_clip=True),
    "swin3d_t": BackboneSpec(vmodels.swin3d_t, vmodels.Swin3D_T_Weights, 768, "head", cam_layer="features.6"),
    "swin3d_s": BackboneSpec(vmodels.swin3d_s, vmodels.Swin3D_S_Weights, 768, "head", cam_layer="features.6"),
    "swin3d_b": BackboneSpec(vmodels.swin3d_b, vmodels.Swin3D_B_Weights, 1024, "head", cam_layer="features.6"),
}


# Families of prefixed names: prefix -> (its module, the library it needs, the pip extra that installs that library).
FAMILIES: dict[str, tuple[str, str, str]] = {
    "timm": ("pipeline.families.timm", "timm", "timm"),
    "open_clip": ("pipeline.families.open_clip", "open_clip", "clip"),
    "hf": ("pipeline.families.hf", "transformers", "hf"),
}


def available_backbones() -> list[str]:
    return sorted(REGISTRY)


def family_of(name: str) -> tuple[ModuleType, str] | None:
    """(the family's module, the model name after the prefix) for a prefixed name, imported now; None for a
    torchvision name."""
    prefix, sep, model = name.partition(":")
    if not sep:
        return None
    if prefix not in FAMILIES:
        raise BackboneError(f"unknown backbone family {prefix + ':'!r} in {name!r}: use "
                            f"{', '.join(p + ':NAME' for p in FAMILIES)}, or a torchvision name "
                            f"({', '.join(available_backbones())})")
    module, library, extra = FAMILIES[prefix]
    try:
        return importlib.import_module(module), model
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != library:
            raise
        raise BackboneError(f"--backbone {name} needs {library}, which is not installed: "
                            f"pip install -e \".[{extra}]\"") from None


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect: a `crop` x `crop` RGB image cut from a frame resized to `resize` (the shorter
    side, or an exact (height, width) as the VideoResNet preset's (128, 171)). `resample` is how: 'pil' (PIL
    bilinear, as the image presets on PIL images), 'pil-bicubic' (and the other PIL filters a family's recipe
    names), 'tensor' (torch bilinear without antialias, as the VideoClassification preset on frame tensors) or
    'tensor-antialias' (with it, as transformers' torchvision-backend processors)."""
    crop: int
    resize: int | tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "pil"
    crop_pct: float | None = None   # timm's recipe: at any size the resize is floor(crop / crop_pct)
    fixed: bool = False             # the model takes `crop` only (a positional encoding built for that input)
    crop_floor: bool = False        # the center crop's offset is floor((side - crop) / 2), as transformers cuts;
    #                                 else round() as torchvision's CenterCrop

    def scaled(self, size: int) -> "Preprocess":
        """The same recipe at another input size (keeps the resize/crop ratio, or timm's crop_pct)."""
        if self.fixed and size != self.crop:
            raise BackboneError(f"--size {size} does not fit these weights: they take exactly --size {self.crop} "
                                "(a positional encoding built for that input)")
        if self.crop_pct is not None:  # timm squashes to (side, side) where its resize is a pair
            side = math.floor(size / self.crop_pct)
            resize = (side, side) if isinstance(self.resize, tuple) else side
        elif isinstance(self.resize, tuple):
            resize = tuple(round(size * r / self.crop) for r in self.resize)
        else:
            resize = round(size * self.resize / self.crop)
        return replace(self, crop=size, resize=resize)


@dataclass
class Backbone:
    name: str
    model: nn.Module          # frozen, eval mode, outputs (B, dim)
    preprocess: Preprocess
    dim: int
    weights_id: str           # what identifies the weights in a store fingerprint
    cpu_only: bool = False
    meta: dict = field(default_factory=dict)
    clip: ClipSpec | None = None  # None: an image backbone, (B, 3, H, W); else it takes (B, 3, T, H, W) clips
    cam_layer: str = ""

    @property
    def is_video(self) -> bool:
        return self.clip is not None


def get_spec(name: str) -> BackboneSpec:
    """The registry's spec of `name` (a family's FamilySpec for a prefixed name: dim, clip, cam_layer, cpu_only)."""
    if (family := family_of(name)) is not None:
        return family[0].spec(family[1])
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(available_backbones())}") from None


def _preprocess_of(enum_member) -> Preprocess:
    t = enum_member.transforms()
    if isinstance(t, VideoClassification):
        resize = tuple(int(r) for r in t.resize_size) if len(t.resize_size) == 2 else int(t.resize_size[0])
        return Preprocess(int(t.crop_size[0]), resize, tuple(t.mean), tuple(t.std), "tensor")
    return Preprocess(int(t.crop_size[0]), int(t.resize_size[0]), tuple(t.mean), tuple(t.std))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_dict_from_file(path: Path, name: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "not loadable"
        raise BackboneError(f"cannot load weights file {path}: {str(e).splitlines()[0]}") from None
    # files from before the sidecar name their backbone in the file itself, beside "state_dict" and "config"
    check_made_for(path, name, obj.get("backbone") if isinstance(obj, dict) else None)
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise BackboneError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    if not any(k.startswith("module.") for k in obj):
        return obj  # keep it as is: quantized modules read version info from its `_metadata`
    out = type(obj)((k.removeprefix("module."), v) for k, v in obj.items())
    meta = getattr(obj, "_metadata", None)
    if meta is not None:
        out._metadata = type(meta)((k.removeprefix("module."), v) for k, v in meta.items())
    return out


def check_made_for(path: Path, name: str, made_for: object = None) -> None:
    """A finetune backbone.pt says which backbone it belongs to, not which keys miss: refuse it for another `name`,
    naming its own (`made_for`, or the one in the sidecar backbone.json beside it)."""
    made_for = made_for if isinstance(made_for, str) else _sidecar_backbone(path)
    if isinstance(made_for, str) and made_for != name:
        raise BackboneError(f"{path} holds {made_for} weights (written by finetune), not {name}: "
                            f"pass --backbone {made_for}")


def _sidecar_backbone(path: Path) -> str | None:
    """The backbone named by the `.json` beside a weights file (finetune writes backbone.json), if there is one."""
    try:
        made_for = json.loads(path.with_suffix(".json").read_text()).get("backbone")
    except (OSError, ValueError, AttributeError):
        return None
    return made_for if isinstance(made_for, str) else None


def is_weights_file(weights: str) -> bool:
    """`--weights` names a file (by its suffix, or because it exists) rather than an enum member or 'none'."""
    path = Path(weights).expanduser()
    return path.suffix in {".pth", ".pt", ".bin", ".ckpt"} or path.exists()


def _member(name: str, spec: BackboneSpec, weights: str):
    """The weights enum member whose preset preprocesses for `weights`: the named one, else the DEFAULT's (random
    init and weight files use the architecture's standard preprocessing)."""
    if weights.lower() == "none" or is_weights_file(weights):
        return spec.weights.DEFAULT
    if weights.upper() not in spec.weights.__members__:
        raise BackboneError(f"unknown weights {weights!r} for {name}; use one of {list(spec.weights.__members__)}, "
                            "'none', or a file path")
    return spec.weights[weights.upper()]


def preprocess_for(name: str, weights: str = "DEFAULT") -> Preprocess:
    """What `load_backbone(name, weights).preprocess` will be, without building the model (so decoding can start
    while it builds)."""
    if (family := family_of(name)) is not None:
        return family[0].preprocess(family[1])
    spec = get_spec(name)
    return _preprocess_of(_member(name, spec, weights))


@dataclass(frozen=True)
class BackboneWeights:
    """A backbone and its weights as chosen, before the model is built: what a run decides from (device, precision,
    batch size, preprocessing) and what a store records of them. A weights file is hashed here, once."""
    name: str
    spec: BackboneSpec          # a family's FamilySpec for a prefixed name
    arg: str                    # --weights as given: an enum name, 'none' or a file
    id: str                     # what identifies the weights in a store fingerprint
    member: object              # the weights enum member whose preset preprocesses (the DEFAULT's for none/files;
    #                             None for a family)
    preprocess: Preprocess      # the member's preset, or the family's own recipe
    file: str | None = None     # a weights file's absolute path
    sha256: str | None = None   # and its content's sha256
    recipe: dict | None = None  # a family's library, version, model config and preprocessing (JSON values): the
    #                             store records and fingerprints it
    layer: Layer | None = None  # --layer: rows are this block's output, pooled (None: the model's own row)
    token_pool: str | None = None  # --pool: rows are the CLS token or the patch tokens' mean (None: the model's own)

    @property
    def dim(self) -> int:
        return self.spec.dim if self.layer is None else self.layer.dim

    @property
    def cpu_only(self) -> bool:
        return self.spec.cpu_only

    @property
    def is_video(self) -> bool:
        return self.spec.clip is not None


def weights_for(name: str, weights: str = "DEFAULT", layer: str | None = None,
                token_pool: str | None = None) -> BackboneWeights:
    """`name` with `weights` (enum name such as DEFAULT/IMAGENET1K_V2, 'none', or a local file), not built yet; its
    rows the pooled output of the block `layer`, or its CLS token / patch tokens' mean (`token_pool`), where given."""
    chosen = _weights(name, weights)
    if token_pool is not None:
        return replace(chosen, token_pool=_token_pool(chosen, token_pool, layer))
    if layer is None:
        return chosen
    skeleton = _skeleton(chosen)
    if layer not in dict(skeleton.named_modules()) or not layer:
        like = difflib.get_close_matches(layer, layer_names(skeleton), n=5, cutoff=0.3)
        raise BackboneError(f"--layer {layer!r} is not a block of {name}" + (f"; similar: {', '.join(like)}"
                            if like else "") + f" (all of them: pipeline.backbones.layers_of({name!r}))")
    side = chosen.preprocess.crop
    shape = (1, 3, side, side) if chosen.spec.clip is None else (1, 3, chosen.spec.clip.min_len, side, side)
    return replace(chosen, layer=trace_layer(skeleton, layer, torch.empty(shape, device="meta")))


def _token_pool(chosen: BackboneWeights, pool: str, layer: str | None) -> str:
    """`pool` where the model's output has tokens to pool that way; else one line saying what applies."""
    allowed = chosen.spec.token_pools
    if layer is not None:
        raise BackboneError(f"--pool {pool} and --layer {layer}: a layer's tokens are always averaged; drop one")
    if not allowed:
        raise BackboneError(f"--pool {pool} does not apply to {chosen.name}: its output has no tokens (a CNN); "
                            "its row is its own pooled vector (drop --pool)")
    if pool not in allowed:
        raise BackboneError(f"--pool {pool} does not apply to {chosen.name}: it has no CLS token; use --pool "
                            f"{' or '.join(allowed)}")
    return pool


def layers_of(name: str) -> list[str]:
    """The block names `--layer` accepts for `name`."""
    return layer_names(_skeleton(_weights(name, "none")))


def _skeleton(chosen: BackboneWeights) -> nn.Module:
    """The architecture on the meta device, classifier removed: its blocks and shapes without building it."""
    if (family := family_of(chosen.name)) is not None:
        return family[0].skeleton(family[1])
    if chosen.spec.cpu_only:
        raise BackboneError(f"--layer does not apply to {chosen.name} (int8 modules): use its float twin")
    with torch.device("meta"), torch.inference_mode(False):  # traced later: no inference tensors, no graph
        model = chosen.spec.builder(weights=None).requires_grad_(False)
    setattr(model, chosen.spec.head, nn.Identity())
    return model


def _weights(name: str, weights: str) -> BackboneWeights:
    if (family := family_of(name)) is not None:
        return family[0].weights_for(name, family[1], weights)
    spec = get_spec(name)
    member = _member(name, spec, weights)
    pre = _preprocess_of(member)
    if weights.lower() == "none":
        return BackboneWeights(name, spec, weights, f"none(seed={SEED_FOR_RANDOM_INIT})", member, pre)
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file {path} does not exist")
        sha = file_sha256(path)  # hashed once: the id takes its prefix, the store config all of it
        return BackboneWeights(name, spec, weights, f"file:sha256:{sha[:16]}", member, pre, str(path.resolve()), sha)
    return BackboneWeights(name, spec, weights, f"{member.__class__.__name__}.{member.name}", member, pre)


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` under SEED_FOR_RANDOM_INIT, leaving the global random state as it was: `--weights none`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED_FOR_RANDOM_INIT)
        return build()


def _build(chosen: BackboneWeights) -> nn.Module:
    """The model with its classifier, with the chosen weights."""
    spec, member = chosen.spec, chosen.member
    if chosen.arg.lower() == "none":
        return seeded(partial(spec.builder, weights=None))
    if chosen.file is not None:
        return _from_file(chosen.name, spec, Path(chosen.arg).expanduser())
    try:
        return spec.builder(weights=member)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; hub raises RuntimeError on bad downloads
        raise BackboneError(
            f"cannot get {chosen.name} {member.name} weights offline ({str(e).splitlines()[0][:80]}): download "
            f"{member.url} on a connected machine and pass --weights /path/to/{Path(member.url).name}, "
            f"or put the file in {torch.hub.get_dir()}/checkpoints/") from None


def _from_file(name: str, spec: BackboneSpec, path: Path) -> nn.Module:
    model = spec.builder(weights=None)
    state = _state_dict_from_file(path, name)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise BackboneError(f"{path} does not fit {name}: {str(e).splitlines()[1].strip()[:160]}") from None
    # A backbone-only file (classifier dropped) is fine; anything else means the wrong architecture.
    missing = [k for k in missing if not k.startswith(spec.head + ".")]
    if missing or unexpected:
        bad = (missing + unexpected)[:3]
        raise BackboneError(f"{path} does not fit {name}: mismatched keys {bad} "
                            f"({len(missing)} missing, {len(unexpected)} unexpected)")
    return model


def load_backbone(name: str, weights: str = "DEFAULT") -> Backbone:
    """Build `name` with `weights` (enum name such as DEFAULT/IMAGENET1K_V2, 'none', or a local file), frozen."""
    return build_backbone(weights_for(name, weights))


def build_backbone(chosen: BackboneWeights) -> Backbone:
    """The chosen backbone built with its weights, classifier removed, frozen, in eval mode (its rows the chosen
    layer's, pooled, where there is one)."""
    family = family_of(chosen.name)
    backbone = family[0].build(chosen, family[1]) if family is not None else _torchvision_backbone(chosen)
    if chosen.layer is None:
        return backbone
    layer = chosen.layer
    return replace(backbone, model=LayerPool(backbone.model, layer.name, layer.channels_last),
                   cam_layer=f"model.{layer.name}")


def _torchvision_backbone(chosen: BackboneWeights) -> Backbone:
    spec = chosen.spec
    model = _build(chosen)
    setattr(model, spec.head, nn.Identity())
    model.eval().requires_grad_(False)
    meta = {"categories": len(chosen.member.meta.get("categories", []))}
    if chosen.sha256 is not None:  # where the file was and what it holds: a store can find it again
        meta.update(weights_file=chosen.file, weights_sha256=chosen.sha256)
    return Backbone(chosen.name, model, chosen.preprocess, chosen.dim, chosen.id, spec.cpu_only, meta, spec.clip,
                    spec.cam_layer)
