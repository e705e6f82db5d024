"""What a fine-tuning run is configured with, and the choice tables behind its flags.

Light on purpose, like heads.config: `cli.py` builds the finetune command's options and defaults from these
without importing the training code (torchvision transforms, scikit-learn, matplotlib) on every command.
"""
from __future__ import annotations

from dataclasses import dataclass

from featstore.errors import FramecacheError
from featstore.settings import check_settings, setting
from heads.config import SPLITS
from heads.kinds import HEAD_KINDS
from pipeline.decode import CROPS
from pipeline.device import PRECISIONS
from pipeline.extract import DEFAULT_FLOW, DEFAULT_FLOW_STACK, MODALITIES
from pipeline.flow.compute import FLOW_METHODS

OBJECTIVES = ("supervised", "temporal")
SCHEDULERS = ("cosine", "plateau", "none")
BN_MODES = ("frozen", "partial", "train")
# The default --lr (finetune.md, "Measured"): a trained head is fine-tuned gently, as the backbone at a tenth of
# it; a new head must first learn something.
TRAINED_HEAD_LR = 3e-5
NEW_HEAD_LR = 1e-3


class FinetuneError(FramecacheError, ValueError):
    """A fine-tuning run that cannot be done as asked; the message names the flag or file and what to do."""


@dataclass
class FinetuneConfig:
    # supervised (labels, TSN segments) | temporal (InfoNCE on frame pairs)
    objective: str = setting("supervised", "supervised (labels, TSN segments) | temporal (InfoNCE, no labels).",
                             choices=OBJECTIVES)
    backbone: str = setting("resnet50", "A float image backbone: resnet18/50, mobilenet_v2, ..., timm:NAME.")
    # as for extract: enum name, none, or a file (a finetune backbone.pt too)
    weights: str = setting("DEFAULT", "DEFAULT, an enum name, none, or a file.")
    # rgb frames | flow stacks (the flow stream: TSN's cross-modality init from the RGB --weights)
    modality: str = setting("rgb", "rgb frames, or flow: TSN's flow stream (stacks of --flow-stack flows).",
                            choices=MODALITIES)
    flow: str = setting(DEFAULT_FLOW, "--modality flow: the optical flow method (RAFT with its DEFAULT weights).",
                        choices=FLOW_METHODS)
    flow_stack: int = setting(DEFAULT_FLOW_STACK, "--modality flow: flows per stack (L: 2L input channels).", ge=1)
    # a fit-head run on a store of this backbone/weights; else a new head
    init_head: str | None = setting(None, "Start from this fit-head run's head (same backbone/weights/input).")
    head: str = setting("linear", "New head's kind when no --init-head.", choices=HEAD_KINDS)
    # without --init-head: fit --head on the frozen backbone's features first, then fine-tune from it (LP-FT)
    probe: bool = setting(True, "Without --init-head: start from a probe of the frozen backbone.")
    hidden: int = setting(256, "", ge=1)  # the new head's width; the temporal projection's hidden width
    segments: int = setting(8, "TSN segments per clip.", ge=1)  # K TSN segments per clip (supervised)
    # TSN tests on 25 frames; sequence heads read the K they were trained on
    eval_segments: int = setting(25, "Segment centres a pooling head is evaluated on.", ge=1)
    pos_window: float = setting(1.0, "temporal: most seconds between positives.", gt=0)  # of a positive pair
    tau: float = setting(0.1, "temporal: InfoNCE temperature.", gt=0)
    proj_dim: int = setting(128, "temporal: projection size.", ge=1)
    split: str = setting("official", "As fit-head: official, group, stratified.", choices=SPLITS)
    val_frac: float = setting(0.2, "", ge=0.01, le=0.9)  # as fit-head
    test_frac: float = setting(0.2, "", ge=0.01, le=0.9)  # as fit-head
    epochs: int = setting(10, "Upper bound; early stopping ends sooner.", ge=1)
    # peak, after warm-up; None: TRAINED_HEAD_LR from a trained head (the probe's, --init-head's), else NEW_HEAD_LR
    lr: float | None = setting(None, "Head learning rate (default: 3e-5 from a trained head, else 1e-3).", gt=0)
    backbone_lr_mult: float = setting(0.1, "Backbone lr = lr x this (0: frozen).", ge=0)
    weight_decay: float = setting(1e-4, "", ge=0)  # AdamW, decoupled; weight matrices and kernels only
    batch_size: int = setting(8, "Clips per step.", ge=1)  # x segments frames through the backbone
    # cosine (to 0 at the last epoch) | plateau (halve when val stalls) | none
    scheduler: str = setting("cosine", "After --warmup.", choices=SCHEDULERS)
    warmup: float = setting(1.0, "Epochs of linear warm-up.", ge=0)  # from 0
    patience: int = setting(5, "Epochs without improvement before stopping.", ge=1)  # a better validation score
    refit: bool = setting(True, "As fit-head: then retrain on train+val for the best epoch count.")
    clip_grad: float = setting(1.0, "Max gradient norm (0: off).", ge=0)  # global norm
    # freeze the backbone up to and including this stage
    freeze_until: str | None = setting(None, "Freeze the backbone up to this stage (layer2).")
    # BatchNorm: frozen (stats and affine) | partial (TSN: the first one trains) | train
    bn: str = setting("frozen", "BatchNorm: frozen, partial (TSN) or train.", choices=BN_MODES)
    augment: bool = setting(True, "Crop/flip/colour jitter at training.")  # random resized crop, flip, jitter
    label_smoothing: float = setting(0.0, "", ge=0, le=0.5)  # supervised cross-entropy
    # default: the weights' own, or the init head's store's
    size: int | None = setting(None, "Input side (default: the weights' own).", ge=16)
    crop: str = setting("center", "", choices=CROPS)  # as extract
    seed: int = setting(0, "")  # splits, init, data order, frames, augmentation, dropout
    device: str = setting("auto", "auto, cpu, cuda, cuda:i.")
    # auto (bf16 where the device has it) | fp32 | bf16 | fp16
    precision: str = setting("auto", "", choices=PRECISIONS)
    workers: int | None = setting(None, "Decode processes (default: auto).", ge=0)  # None: extract's rule

    def __post_init__(self):
        check_settings(self, FinetuneError)
        if self.modality == "flow" and self.objective != "supervised":
            raise FinetuneError("--modality flow trains with --objective supervised (TSN segments of flow stacks)")
        if self.lr is None:
            self.lr = NEW_HEAD_LR if self.new_head else TRAINED_HEAD_LR

    @property
    def new_head(self) -> bool:
        """Whether training starts from an untrained head (temporal's projection, or --no-probe)."""
        return self.objective == "temporal" or not (self.init_head or self.probe)
        if self.objective == "temporal" and self.batch_size < 2:
            raise FinetuneError("--objective temporal needs --batch-size >= 2: the other clips are the negatives")
