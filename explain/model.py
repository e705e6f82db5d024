"""A run's backbone and head as one differentiable model: the frames of one video in, one logit vector out.

`predict` embeds a file with its store's recipe (decode, sample, resize/crop, normalize, backbone), rounds the
features to the store's dtype, and lets the head read up to `max_frames` uniformly spaced rows of the clip.
`ComposedModel` does exactly that inside one autograd graph, so a map explains the very number `predict` prints:
pooling heads average over the frames, sequence heads read them in order; either way one (1, C) logit vector.
A flow-stream run's model reads flow stacks instead of pixels (explain.flow).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explain import ExplainError
from explain.flow import FlowVideo, decode_flow
from featstore import StoreConfig
from heads.data import eval_frames
from heads.multitask import is_multitask
from heads.run import load_run
from heads.train import probabilities
from pipeline.backbones import REGISTRY, get_spec
from pipeline.decode import DecodedVideo, Geometry, Sampling, StackSampling, decode_image, decode_video
from pipeline import ExtractConfig, resolve_device, store_backbone, store_geometry
from pipeline.sources import item_kind

STORE_DTYPES = {"float16": torch.float16, "float32": None}  # None: features are stored as computed


class ComposedModel(nn.Module):
    """(T, 3, H, W) float pixels in 0..255 of one video -> (1, C) logits of the run's head; with `flow`, (T, 2L, H, W)
    flow stacks, the flow stream's input as they are.

    Normalization is the extraction's own arithmetic, and features go through the store's dtype with a straight-
    through rounding: the forward values equal what the head read at training time, the gradients stay fp32."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean: tuple, std: tuple,
                 store_dtype: torch.dtype | None, flow: bool = False):
        super().__init__()
        self.backbone, self.head, self.store_dtype, self.flow = backbone, head, store_dtype, flow
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:  # (T, 3, H, W) or (T, 2L, H, W) -> (T, D)
        feats = self.backbone(pixels if self.flow else (pixels - self.mean) / self.std)
        if self.store_dtype is None:
            return feats
        return feats + (feats.to(self.store_dtype).float() - feats).detach()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.features(pixels)
        lengths = torch.tensor([len(feats)], dtype=torch.int64, device=feats.device)
        return self.head(feats[None], lengths)


@dataclass
class RunModel:
    """What explaining a run needs: the composed model and how its store sampled and shaped frames."""
    model: ComposedModel
    labels: list[str]
    task: str
    backbone: str
    sampling: Sampling
    geometry: Geometry
    max_frames: int              # the head reads at most this many frames of a clip (uniformly spaced)
    device: torch.device
    stacks: StackSampling | None = None   # a flow-stream run: where its stacks start and how many flows each holds
    flow: object | None = None            # and the store's flow method (a pipeline.flow FlowComputer)


def check_explainable(config: StoreConfig, run_dir: str | Path) -> None:
    """Refuse stores whose backbone gives no gradients (int8) or whose rows are clips (not supported yet)."""
    name = config.backbone
    spec = get_spec(name)
    if spec.cpu_only:  # int8 kernels: no autograd through them
        twin = name.removeprefix("quantized_")
        use = (f"the float {twin} (e.g. `extract --backbone {twin} --weights mobilenet_v2_float_dequantized.pth`)"
               if twin in REGISTRY else "a float backbone")
        raise ExplainError(f"run {run_dir} was trained on a {name} store, and int8 kernels have no gradients: "
                           f"extract with {use}, fit a head on that store, and explain that run")
    if spec.clip is not None or config.is_clip:
        raise ExplainError(f"run {run_dir} was trained on clip rows ({name}): explain is not supported for clip "
                           "backbones yet (frame stores only)")


def load_run_model(run_dir: str | Path, device: str = "auto", weights: str | None = None) -> RunModel:
    """The run's head behind the backbone that made its store (same weights, checked), fp32, eval mode.

    `weights`: the store's weights file when it is no longer where extract recorded it (its hash is checked)."""
    head, ckpt = load_run(run_dir)
    if is_multitask(ckpt) or ckpt.get("store_config", {}).get("fused_stores"):
        raise ExplainError(f"run {run_dir} was trained on several stores at once: explain a single-store run")
    config = StoreConfig.from_attrs(ckpt["store_config"])
    check_explainable(config, run_dir)
    cfg, backbone = store_backbone(config, device, weights)
    dev = resolve_device(cfg.device, backbone.name, backbone.cpu_only)
    pre = backbone.preprocess
    model = ComposedModel(backbone.model, head, pre.mean, pre.std, STORE_DTYPES[config.dtype],
                          config.is_flow).to(dev).eval()
    stacks, flow = (StackSampling(cfg.sampling, cfg.flow_stack), _flow_method(cfg, dev)) if config.is_flow else \
        (None, None)
    return RunModel(model, list(ckpt["labels"]), ckpt["task"], cfg.backbone, cfg.sampling, store_geometry(config),
                    int(ckpt["train_config"]["max_frames"]), dev, stacks, flow)


def _flow_method(cfg: ExtractConfig, device: torch.device):
    """The flow method a flow store was extracted with (RAFT with its recorded weights), on `device`."""
    from pipeline.flow import FlowComputer, raft_weights

    return FlowComputer(cfg.flow, None if cfg.flow_weights is None else raft_weights(cfg.flow, cfg.flow_weights),
                        device)


def decode_for(run: RunModel, path: str | Path) -> DecodedVideo | FlowVideo:
    """The frames the run's store would hold for `path`, or a flow-stream run's stacks (DecodeError when it
    cannot be read)."""
    if run.stacks is not None:
        return decode_flow(path, run.stacks, run.geometry, run.flow)
    if item_kind(Path(path)) == "image":
        return decode_image(path, run.geometry)
    return decode_video(path, run.sampling, run.geometry)


def head_rows(n_frames: int, max_frames: int) -> np.ndarray:
    """Positions of the sampled frames that the head reads at evaluation: all, or max_frames uniformly spaced."""
    idx, n = eval_frames(torch.tensor([n_frames]), max_frames)
    return idx[0, :int(n[0])].numpy()


def clip_probabilities(logits: torch.Tensor, task: str) -> np.ndarray:
    """(C,) probabilities of one (1, C) logit vector, exactly as predict turns logits into probabilities."""
    return probabilities(logits.detach().float().cpu().numpy(), task)[0]


def model_input(video: DecodedVideo | FlowVideo, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """What the composed model reads of the rows `rows`: pixels (to_pixels), or a flow-stream run's stacks."""
    if isinstance(video, FlowVideo):
        return video.stacks[torch.from_numpy(rows)].to(device)
    return to_pixels(video.frames[rows], device)


def to_pixels(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in 0..255 on `device`."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
