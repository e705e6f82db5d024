"""Class activation maps of a composed model with pytorch-grad-cam, one scale for all frames of a video.

The backbone is frozen (no parameter requires grad) and the pixels need none, so the target layer's output would
not require grad and grad-cam would silently collect no gradient (its hook skips such tensors). A forward hook,
registered before grad-cam's own, makes that output a leaf that requires grad: gradients then flow from the logit
down to the target layer and stop there, so a backward pass costs the layers above it only.

grad-cam scales every image of a batch to [0, 1] on its own, which would make a frame with no evidence look as hot
as the decisive one. The frames of a video are one input here, so the raw maps are taken from the same CAM object
(`get_cam_image` on the activations and gradients it recorded) and scaled together; each frame's share of the
total evidence is reported beside its map.

Transformer blocks output (B, N, D) tokens, not maps: the backbone's family says where they lie on the image
(`cam_tokens`, pipeline/families/__init__.py), and its TokenGrid is grad-cam's reshape_transform. On a `--layer`
store the backbone is a LayerPool: layers are named inside it, and the default is the layer its rows come from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain import INSTALL_HINT, METHODS, ExplainError
from explain.model import ComposedModel
from pipeline.backbones import family_of, get_spec
from pipeline.families import TokenGrid
from pipeline.layers import LayerPool


@dataclass
class Maps:
    """Maps of one target class over the frames of one video."""
    target: int              # class index the maps explain
    cams: np.ndarray         # (T, H, W) float32 in [0, 1], one scale for every frame
    share: np.ndarray        # (T,) each frame's share of the positive evidence (sums to 1, or all 0 if none)


def cam_class(method: str) -> type:
    """The pytorch_grad_cam class of `--method`; a one-line install hint when the package is missing."""
    if method not in METHODS:
        raise ExplainError(f"--method {method!r} is not a method; choose one of: {', '.join(METHODS)}")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ExplainError(INSTALL_HINT) from None
    return getattr(pytorch_grad_cam, METHODS[method])


def layer_choices(backbone: nn.Module) -> list[str]:
    """Module names worth offering for --layer: the stages and blocks (two levels deep), not removed heads."""
    return [name for name, m in backbone.named_modules()
            if name and name.count(".") <= 1 and not isinstance(m, nn.Identity)]


def cam_net(backbone: nn.Module) -> nn.Module:
    """The model whose module names --layer takes: the one inside a `--layer` store's LayerPool."""
    return backbone.model if isinstance(backbone, LayerPool) else backbone


def default_layer(backbone: nn.Module, backbone_name: str) -> str:
    """--layer's default: the block a `--layer` store's rows come from, else the registry's cam_layer."""
    return backbone.layer if isinstance(backbone, LayerPool) else get_spec(backbone_name).cam_layer


def token_grid(backbone: nn.Module, backbone_name: str) -> TokenGrid | None:
    """Where the backbone's tokens lie on the image, as its family says (None: a CNN, or a torchvision name)."""
    family = family_of(backbone_name)
    tokens = getattr(family[0], "cam_tokens", None) if family is not None else None
    return tokens(cam_net(backbone)) if tokens is not None else None


def find_layer(backbone: nn.Module, name: str, backbone_name: str) -> nn.Module:
    backbone = cam_net(backbone)
    modules = dict(backbone.named_modules())
    if not name or name not in modules:
        raise ExplainError(f"--layer {name!r} is not a module of {backbone_name}; valid layers: "
                           f"{', '.join(layer_choices(backbone))} (or any deeper name of model.named_modules())")
    return modules[name]


def _output_requires_grad(module: nn.Module, inputs, output):
    return output if output.requires_grad else output.detach().requires_grad_(True)


def compute_maps(model: ComposedModel, pixels: torch.Tensor, layer_name: str, backbone_name: str, method: str,
                 targets: list[int | None]) -> tuple[torch.Tensor, list[Maps]]:
    """((1, C) logits, Maps per target) for one video given as (T, 3, H, W) pixels. Runs fp32 with autograd.

    A target of None means the top class of the logits."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = cam_class(method)
    layer = find_layer(model.backbone, layer_name, backbone_name)
    # first of all hooks: grad-cam's, and a LayerPool's that keeps the output as the row, must see the leaf
    hook = layer.register_forward_hook(_output_requires_grad, prepend=True)
    grid = token_grid(model.backbone, backbone_name)
    cam = cls(model=model, target_layers=[layer], reshape_transform=grid.to_map if grid is not None else None)
    maps, logits = [], None
    try:
        # cuDNN's RNN backward refuses eval mode; the plain kernels give the same numbers (no-op on CPU).
        with torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            for target in targets:
                try:
                    cam(input_tensor=pixels, targets=None if target is None else [ClassifierOutputTarget(target)])
                except RuntimeError as e:
                    if "in-place" not in str(e) and "inplace" not in str(e):
                        raise
                    raise ExplainError(f"--layer {layer_name}: the next operation changes its output in place, "
                                       "so its gradient cannot be read; choose the block that contains it") from None
                logits = cam.outputs.detach()
                target = int(logits[0].argmax()) if target is None else target
                maps.append(_scaled_maps(cam, pixels, layer, layer_name, target))
    finally:
        cam.activations_and_grads.release()
        hook.remove()
    return logits, maps


def _scaled_maps(cam, pixels: torch.Tensor, layer: nn.Module, layer_name: str, target: int) -> Maps:
    recorded = cam.activations_and_grads
    if not recorded.activations or not recorded.gradients:  # never silent: an empty map would look like "nothing"
        raise RuntimeError(f"grad-cam recorded no gradient at {layer_name}")
    acts, grads = recorded.activations[0], recorded.gradients[0]
    if acts.ndim != 4 or acts.shape[-1] * acts.shape[-2] < 2:
        raise ExplainError(f"--layer {layer_name} outputs {tuple(acts.shape)}, not a spatial map: choose a "
                           "convolutional stage or a transformer block")
    raw = cam.get_cam_image(pixels, layer, None, acts.float().numpy(), grads.float().numpy(), False)
    raw = np.maximum(raw, 0).astype(np.float32)  # (T, h, w); Grad-CAM keeps positive evidence only
    total = float(raw.sum())
    share = raw.sum(axis=(1, 2)) / total if total > 0 else np.zeros(len(raw), np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(raw)[:, None], size=tuple(pixels.shape[-2:]),
                                         mode="bilinear", align_corners=False)[:, 0].numpy()
    top = float(up.max())
    return Maps(target, up / top if top > 0 else up, share.astype(np.float32))
