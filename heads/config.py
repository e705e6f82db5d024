"""What a head run is configured with, and the choice tables behind its flags.

Kept free of scikit-learn and matplotlib so that `cli.py` can build its options from these tables without
paying for stage two's imports on every command (`extract` starts in about the time torch takes to import).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from heads.models import HEADS, HeadConfig, HeadError

TASKS = ("auto", "multiclass", "multilabel")
SPLITS = ("official", "group", "stratified")
SAMPLINGS = ("random", "contiguous")
LEVELS = ("video", "frame")  # video: one pooled point per clip; frame: every sampled frame
POOLS = ("mean", "max")
PLOTS = ("tsne", "pca", "none")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("plateau", "cosine", "exp", "none")
NORMALIZE = ("scalar", "dim", "none")


@dataclass
class TrainConfig:
    head: str = "linear"           # a key of heads.models.HEADS
    task: str = "auto"             # auto | multiclass | multilabel (auto: multilabel if any clip has 2+ labels)
    split: str = "official"        # official (store's split column) | group | stratified
    val_frac: float = 0.2          # share of train held out for early stopping (rounded to 1/k)
    test_frac: float = 0.2         # share held out as test by --split group/stratified
    epochs: int = 100              # upper bound; early stopping usually ends sooner
    lr: float = 3e-3               # peak learning rate
    batch_size: int = 32           # clips per batch
    optimizer: str = "adamw"       # adamw | adam | sgd (momentum 0.9, nesterov) | rmsprop (alpha 0.99)
    weight_decay: float = 1.0      # decoupled for adamw (shrinks by lr*wd a step), L2 for adam/sgd
    scheduler: str = "plateau"     # plateau (halve when the val loss stalls) | cosine | exp | none
    patience: int = 20             # epochs without improvement (a better val metric, or as good with a lower loss)
    lr_factor: float = 0.5         # plateau: multiply the lr by this when the val loss stalls
    lr_patience: int = 0           # plateau: epochs of stalled val loss before that (0: patience // 3)
    lr_gamma: float = 0.95         # exp: multiply the lr by this every epoch
    threshold: float = 0.0         # multilabel decision threshold: 0 tunes it on val for micro-F1, else fixed
    max_frames: int = 64           # frames sampled per clip (random at train time, uniform at eval)
    seed: int = 0                  # splits, init, shuffling, sampling, dropout
    label_smoothing: float = 0.0   # multiclass cross-entropy only
    class_weights: bool = False    # weigh classes (pos_weight for multilabel) by inverse train frequency
    device: str = "auto"           # auto (cuda when present) | cpu | cuda | cuda:N
    hidden: int = 256              # head width (MLP, RNN hidden size, transformer width)
    layers: int = 1                # head depth
    bidirectional: bool = False    # rnn / gru / lstm
    dropout: float = 0.0           # head dropout (frame_dropout already regularizes every head)
    proj_dim: int = 0              # project frames to this many dims first (0: no projection)
    heads: int = 4                 # transformer attention heads
    pool: str = "mean"             # transformer pooling: mean | cls
    normalize: str = "scalar"      # center each dim, divide by one std for all dims (scalar), per dim (dim) | none
    frame_dropout: float = 0.5     # train-time augmentation: drop frames with this probability
    noise_std: float = 0.0         # train-time augmentation: gaussian noise, in units of the normalizing std
    sampling: str = "random"       # train-time frame sampling: random (sorted subset) | contiguous
    refit: bool = True             # after early stopping, retrain on train + val for the best epoch count
    skip_unlabelled: bool = False  # leave out clips without a label instead of refusing (multiclass needs one each)

    def __post_init__(self):
        choices = {"head": HEADS, "task": TASKS, "split": SPLITS, "optimizer": OPTIMIZERS,
                   "scheduler": SCHEDULERS, "sampling": SAMPLINGS, "pool": ("mean", "cls"),
                   "normalize": NORMALIZE}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise HeadError(f"--{name} {getattr(self, name)!r} is not valid; choose one of: {', '.join(allowed)}")
        for name in ("val_frac", "test_frac"):
            if not 0 < getattr(self, name) < 1:
                raise HeadError(f"--{name.replace('_', '-')} {getattr(self, name)} must be between 0 and 1")
        for name in ("epochs", "batch_size", "patience", "max_frames", "hidden", "layers", "heads"):
            if getattr(self, name) < 1:
                raise HeadError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if self.lr <= 0:
            raise HeadError(f"--lr {self.lr} must be > 0")
        for name in ("lr_factor", "lr_gamma"):
            if not 0 < getattr(self, name) < 1:
                raise HeadError(f"--{name.replace('_', '-')} {getattr(self, name)} must be between 0 and 1")
        if self.lr_patience < 0:
            raise HeadError(f"--lr-patience {self.lr_patience} must be >= 0 (0: --patience // 3)")
        if not 0 <= self.threshold < 1:
            raise HeadError(f"--threshold {self.threshold} must be in (0, 1), or 0 to tune it on val")
        for name in ("weight_decay", "proj_dim", "noise_std"):
            if getattr(self, name) < 0:
                raise HeadError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 0")
        for name in ("dropout", "frame_dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise HeadError(f"--{name.replace('_', '-')} {getattr(self, name)} must be in [0, 1)")

    def head_config(self, in_dim: int, n_classes: int) -> HeadConfig:
        shared = {f.name for f in fields(HeadConfig)} & {f.name for f in fields(TrainConfig)}
        return HeadConfig(kind=self.head, in_dim=in_dim, n_classes=n_classes, max_len=self.max_frames,
                          **{k: getattr(self, k) for k in shared})


