"""The trainable network: a registry backbone applied per frame, then a head over a clip's frames.

`VideoNet(frames (B, T, H, W, 3) uint8) -> head(features (B, T, D), lengths)`: pooling heads average the K
segments (TSN's consensus), sequence heads read them in order (LRCN), the temporal objective's projection head maps
every frame on its own. Normalization with the weights' mean/std happens on the device, as in extract. A flow
stream reads (B, T, 2L, H, W) flow stacks instead, already scaled to [-1, 1] (pipeline.flow.stack).
"""
from __future__ import annotations

import torch
from torch import nn

from finetune.config import BN_MODES, FinetuneError
from pipeline.backbones import REGISTRY, Backbone, BackboneError, get_spec, load_backbone, weights_for

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def trainable_backbone(name: str, weights: str, flow_stack: int | None = None) -> Backbone:
    """`load_backbone`, refusing int8 models (integer weights have no gradients) with the float one to use; with
    `flow_stack` L, the flow-stream backbone (2L input channels, TSN's cross-modality init from RGB `weights`, or a
    flow-stream weights file as it is: pipeline.flow.flow_backbone)."""
    spec = get_spec(name)
    if spec.cpu_only:
        twin = name.removeprefix("quantized_")
        use = (f"fine-tune the float {twin!r} instead (same architecture; e.g. --backbone {twin} --weights "
               f"mobilenet_v2_float_dequantized.pth) and extract with the result" if twin in REGISTRY
               else "choose a float backbone")
        raise BackboneError(f"{name} is an int8 model and cannot be trained: {use}")
    if spec.clip is not None:
        raise BackboneError(f"{name} is a video backbone; finetune trains image backbones frame by frame "
                            "(resnet18/50, mobilenet_v2, ...)")
    if flow_stack is None:
        return load_backbone(name, weights)
    from pipeline.flow import flow_backbone

    return flow_backbone(weights_for(name, weights), flow_stack)


class ProjectionHead(nn.Module):
    """Two-layer MLP applied to each frame on its own: (B, T, D) -> (B, T, P). Dropped when the backbone is saved."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VideoNet(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module, bn: str = "frozen", flow: bool = False):
        super().__init__()
        if bn not in BN_MODES:
            raise FinetuneError(f"--bn {bn!r} is not valid; choose one of: {', '.join(BN_MODES)}")
        self.backbone, self.head, self.flow = backbone.model, head, flow
        pre = backbone.preprocess
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.backbone.requires_grad_(True)
        norms = [m for m in self.backbone.modules() if isinstance(m, _BATCH_NORMS)]
        # partial-BN (TSN): only the first BatchNorm adapts, to the new input distribution; the others keep the
        # pretrained statistics, which a batch of a few clips of one video would only make noisy.
        self.frozen_norms = {"frozen": norms, "partial": norms[1:], "train": []}[bn]
        for m in self.frozen_norms:
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> "VideoNet":
        super().train(mode)
        for m in self.frozen_norms:
            m.eval()  # frozen statistics: running mean/var are used, never updated
        return self

    def embed(self, frames: torch.Tensor) -> torch.Tensor:  # (N, H, W, 3) uint8 or (N, 2L, H, W) flow -> (N, D)
        if self.flow:
            return self.backbone(frames)  # flow stacks are the flow stream's input as they are
        x = frames.permute(0, 3, 1, 2).float()  # NHWC memory read as NCHW = channels_last
        return self.backbone((x - self.mean) / self.std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, 3) uint8 or (B, T, 2L, H, W) flow
        b, t = frames.shape[:2]
        feats = self.embed(frames.flatten(0, 1)).view(b, t, -1).float()  # (B, T, D)
        return self.head(feats, torch.full((b,), t, dtype=torch.int64, device=frames.device))


def stages(backbone: nn.Module) -> list[str]:
    """Names accepted by --freeze-until: the top-level modules, and the blocks of sequential ones (features.3)."""
    names = []
    for name, child in backbone.named_children():
        names.append(name)
        if isinstance(child, nn.Sequential) and not name.startswith("layer"):
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
    return names


def freeze_until(backbone: nn.Module, stage: str) -> int:
    """Freeze every backbone parameter up to and including `stage` (module order = forward order in torchvision's
    CNNs); returns how many parameter tensors were frozen."""
    valid = stages(backbone)
    if stage not in valid:
        raise FinetuneError(f"--freeze-until {stage!r} is not a stage of this backbone; choose one of: "
                            f"{', '.join(valid)}")
    params = list(backbone.named_parameters())
    last = max(i for i, (name, _) in enumerate(params) if name.startswith(stage + "."))
    for _, p in params[:last + 1]:
        p.requires_grad_(False)
    return last + 1


def param_groups(net: VideoNet, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """Head at lr, backbone at lr * mult; weight decay on weight matrices and kernels only (not biases, norms)."""
    groups = []
    for module, rate in ((net.head, lr), (net.backbone, lr * backbone_lr_mult)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.ndim >= 2], "lr": rate, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim < 2], "lr": rate, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]
