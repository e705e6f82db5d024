"""What a fine-tuning run is configured with, and the choice tables behind its flags.

Light on purpose, like heads.config: `cli.py` builds the finetune command's options and defaults from these
without importing the training code (torchvision transforms, scikit-learn, matplotlib) on every command.
"""
from __future__ import annotations

from dataclasses import dataclass

from featstore.errors import FramecacheError
from heads.config import SPLITS
from heads.models import HEADS
from pipeline.device import PRECISIONS

OBJECTIVES = ("supervised", "temporal")
SCHEDULERS = ("cosine", "plateau", "none")
BN_MODES = ("frozen", "partial", "train")


class FinetuneError(FramecacheError, ValueError):
    """A fine-tuning run that cannot be done as asked; the message names the flag or file and what to do."""


@dataclass
class FinetuneConfig:
    objective: str = "supervised"   # supervised (labels, TSN segments) | temporal (InfoNCE on frame pairs)
    backbone: str = "resnet50"      # a registry name (float models only)
    weights: str = "DEFAULT"        # as for extract: enum name, none, or a file (a finetune backbone.pt too)
    init_head: str | None = None    # a fit-head run on a store of this backbone/weights; else a new head
    head: str = "linear"            # the new head's kind (a key of heads.models.HEADS)
    hidden: int = 256               # the new head's width; the temporal projection's hidden width
    segments: int = 8               # K TSN segments per clip (supervised)
    eval_segments: int = 25         # segment centres a pooling head is evaluated on (TSN tests on 25 frames);
                                    # sequence heads read the K they were trained on
    pos_window: float = 1.0         # temporal: most seconds between the two frames of a positive pair
    tau: float = 0.1                # temporal: InfoNCE temperature
    proj_dim: int = 128             # temporal: projection output size
    split: str = "official"         # official | group | stratified, as fit-head
    val_frac: float = 0.2           # as fit-head
    test_frac: float = 0.2          # as fit-head
    epochs: int = 10                # upper bound; early stopping may end sooner
    lr: float = 1e-3                # head learning rate (peak, after warm-up)
    backbone_lr_mult: float = 0.1   # backbone lr = lr * this (0: the backbone stays frozen)
    weight_decay: float = 1e-4      # AdamW, decoupled; weight matrices and kernels only
    batch_size: int = 8             # clips per step (x segments frames through the backbone)
    scheduler: str = "cosine"       # cosine (to 0 at the last epoch) | plateau (halve when val stalls) | none
    warmup: float = 1.0             # epochs of linear warm-up from 0
    patience: int = 5               # epochs without a better validation score before stopping
    refit: bool = True              # as fit-head: then retrain on train + val for the best epoch count
    clip_grad: float = 1.0          # max global gradient norm (0: off)
    freeze_until: str | None = None  # freeze the backbone up to and including this stage (e.g. layer2)
    bn: str = "frozen"              # BatchNorm: frozen (stats and affine) | partial (TSN: the first one trains) | train
    augment: bool = True            # random resized crop, flip, colour jitter at training
    label_smoothing: float = 0.0    # supervised cross-entropy
    size: int | None = None         # input side (default: the weights' own, or the init head's store's)
    crop: str = "center"            # as extract
    seed: int = 0                   # splits, init, data order, frames, augmentation, dropout
    device: str = "auto"            # auto | cpu | cuda | cuda:i
    precision: str = "auto"         # auto (bf16 where the device has it) | fp32 | bf16 | fp16
    workers: int | None = None      # decode processes (None: extract's rule)

    def __post_init__(self):
        choices = {"objective": OBJECTIVES, "split": SPLITS, "scheduler": SCHEDULERS, "bn": BN_MODES, "head": HEADS,
                   "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise FinetuneError(f"--{name} {getattr(self, name)!r} is not valid; choose one of: "
                                    f"{', '.join(allowed)}")
        for name in ("segments", "eval_segments", "epochs", "batch_size", "patience", "hidden", "proj_dim"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        for name in ("lr", "pos_window", "tau"):
            if not getattr(self, name) > 0:
                raise FinetuneError(f"--{name.replace('_', '-')} {getattr(self, name)} must be > 0")
        for name in ("backbone_lr_mult", "weight_decay", "warmup", "clip_grad"):
            if getattr(self, name) < 0:
                raise FinetuneError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 0")
        if self.objective == "temporal" and self.batch_size < 2:
            raise FinetuneError("--objective temporal needs --batch-size >= 2: the other clips are the negatives")
