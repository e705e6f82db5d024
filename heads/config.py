"""What a head run is configured with, and the choice tables behind its flags.

Kept free of scikit-learn and matplotlib so that `cli.py` can build its options from these tables without
paying for stage two's imports on every command (`extract` starts in about the time torch takes to import).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from featstore.config import POOLS  # the pool command's choices, cluster-eval's --pool too
from featstore.errors import FramecacheError
from featstore.settings import check_settings, setting
from heads.budget import MemoryBudget
from heads.kinds import HEAD_KINDS, MEMORY_HEAD_KINDS, HeadConfig, HeadError

TASKS = ("auto", "multiclass", "multilabel")
SPLITS = ("official", "group", "stratified")
SAMPLINGS = ("random", "contiguous")
LEVELS = ("video", "frame")  # video: one pooled point per clip; frame: every sampled frame
PLOTS = ("tsne", "pca", "none")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("plateau", "cosine", "exp", "none")
NORMALIZE = ("scalar", "dim", "none")
FUSE_MODES = ("concat",)  # fit-head --fuse: how two stores' features of the same videos are joined


@dataclass
class TrainConfig(MemoryBudget):  # memory_budget: where the rows live, not what is learnt (no sweep axis)
    head: str = setting("linear", "Head architecture (knn: a neighbour vote, no training).",
                        choices=(*HEAD_KINDS, *MEMORY_HEAD_KINDS))
    task: str = setting("auto", "auto: multilabel when any item has several labels.", choices=TASKS)
    split: str = setting("official", "official: the store's split column; stratified: by label, no group on "
                         "both sides when the store has groups; group: the same, refused without groups.",
                         choices=SPLITS)
    val_frac: float = setting(0.2, "Share of train for validation.", ge=0.01, le=0.9)  # rounded to 1/k
    test_frac: float = setting(0.2, "Test share (group/stratified).", ge=0.01, le=0.9)
    epochs: int = setting(100, "Upper bound; early stopping ends sooner.", ge=1)
    lr: float = setting(3e-3, "Peak learning rate.", gt=0)
    batch_size: int = setting(32, "Clips per batch.", ge=1)
    # adamw | adam | sgd (momentum 0.9, nesterov) | rmsprop (alpha 0.99)
    optimizer: str = setting("adamw", "", choices=OPTIMIZERS)
    # decoupled for adamw (shrinks by lr*wd a step), L2 for adam/sgd
    weight_decay: float = setting(1.0, "", ge=0)
    # plateau (halve when the val loss stalls) | cosine | exp | none
    scheduler: str = setting("plateau", "", choices=SCHEDULERS)
    # epochs without improvement (a better val metric, or as good with a lower loss)
    patience: int = setting(20, "Epochs without improvement before stopping.", ge=1)
    lr_factor: float = setting(0.5, "plateau: lr multiplier when the val loss stalls.", gt=0, lt=1)
    lr_patience: int = setting(0, "plateau: stalled epochs first (0: patience//3).", ge=0)
    lr_gamma: float = setting(0.95, "exp: lr multiplier per epoch.", gt=0, lt=1)
    threshold: float = setting(0.0, "Multilabel: fixed decision threshold (0: tuned on val).", ge=0, le=1)
    max_frames: int = setting(64, "Frames per clip (random at train, uniform at eval).", ge=1)
    seed: int = setting(0, "")  # splits, init, shuffling, sampling, dropout
    label_smoothing: float = setting(0.0, "", ge=0, le=0.5)  # multiclass cross-entropy only
    class_weights: bool = setting(False, "Weigh classes by inverse frequency.")  # pos_weight for multilabel
    device: str = setting("auto", "auto, cpu, cuda, cuda:i.")
    hidden: int = setting(256, "", ge=1)           # head width (MLP, RNN hidden size, transformer width)
    layers: int = setting(1, "", ge=1)             # head depth
    bidirectional: bool = setting(False, "rnn / gru / lstm.")
    dropout: float = setting(0.0, "", ge=0, le=0.95)  # head dropout (frame_dropout already regularizes every head)
    proj_dim: int = setting(0, "Project frames to this size first (0: off).", ge=0)
    heads: int = setting(4, "", ge=1, cli=False)   # transformer attention heads
    pool: str = setting("mean", "", choices=("mean", "cls"), cli=False)  # transformer pooling
    # center each dim, divide by one std for all dims (scalar), per dim (dim) | none
    normalize: str = setting("scalar", "", choices=NORMALIZE, cli=False)
    frame_dropout: float = setting(0.5, "Train-time frame drop.", ge=0, le=0.95)
    noise_std: float = setting(0.0, "Train-time gaussian noise.", ge=0)  # in units of the normalizing std
    # train-time frame sampling: random (sorted subset) | contiguous
    sampling: str = setting("random", "", choices=SAMPLINGS, cli=False)
    refit: bool = setting(True, "Retrain on train+val for the best epoch count.")
    skip_unlabelled: bool = setting(False, "Leave out clips with an empty label instead of refusing.")
    k: int = setting(20, "knn: train clips that vote for a clip's labels.", ge=1)
    temperature: float = setting(0.07, "knn: a neighbour's vote weighs exp(cosine / temperature).", gt=0)

    def __post_init__(self):
        if self.lr_patience < 0:  # before the generic check: these two messages say what 0 means
            raise HeadError(f"--lr-patience {self.lr_patience} must be >= 0 (0: --patience // 3)")
        if not 0 <= self.threshold < 1:
            raise HeadError(f"--threshold {self.threshold} must be in (0, 1), or 0 to tune it on val")
        check_settings(self, HeadError)
        super().__post_init__()

    def head_config(self, in_dim: int, n_classes: int) -> HeadConfig:
        shared = {f.name for f in fields(HeadConfig)} & {f.name for f in fields(TrainConfig)}
        return HeadConfig(kind=self.head, in_dim=in_dim, n_classes=n_classes, max_len=self.max_frames,
                          **{k: getattr(self, k) for k in shared})


ZERO_SHOT_TEMPLATE = "a video of a person {}."


@dataclass
class ZeroShotConfig:
    """What `cli.py zero-shot` builds (heads.zeroshot): a classifier from the text tower of a CLIP store's weights,
    one prompt per class, no training."""
    labels: str | None = setting(None, "Class names, comma-separated: a,b,c (or --from-store).")
    from_store: bool = setting(False, "The classes are the store's own labels.")
    template: str = setting(ZERO_SHOT_TEMPLATE, "Each class's prompt; {} is replaced by its name.")

    def __post_init__(self):
        if (self.labels is not None) == self.from_store:
            raise HeadError("give the classes one way: --labels a,b,c or --from-store (the store's own labels)")
        if self.template.count("{}") != 1:
            raise HeadError(f"--template {self.template!r} must hold {{}} once, where the class name goes "
                            "(e.g. 'a video of a person {}.')")
        names = self.classes([])
        if self.labels is not None and (len(names) < 2 or len(set(names)) < len(names)):
            raise HeadError(f"--labels {self.labels!r}: give at least 2 different class names, comma-separated")

    def classes(self, store_labels: list[str]) -> list[str]:
        """The class names: --labels as given (order kept), or the store's label vocabulary."""
        if self.labels is None:
            return list(store_labels)
        return [name.strip() for name in self.labels.split(",") if name.strip()]


class ClusterError(FramecacheError, ValueError):
    """A cluster-eval request that cannot be run as asked; the message names the CLI flag to change."""


@dataclass
class ClusterConfig(MemoryBudget):
    """What cluster-eval runs (see heads.cluster): k-means on a store's points, scored against its labels."""
    k: int | None = setting(None, "Clusters (default: number of labels).", ge=2)
    level: str = setting("video", "video: pooled clips; frame: every sampled frame.", choices=LEVELS)
    pool: str = setting("mean", "Pooling of a clip's frames at --level video.", choices=POOLS)
    split: str | None = setting(None, "Cluster only this split (default: all).")
    fit_split: str | None = setting(None, "Fit centroids on this split, score --split.")
    seeds: int = setting(1, "Repeat with this many seeds; report mean ± std.", ge=1)
    seed: int = setting(0, "")  # the first seed: k-means, PCA, silhouette sample, t-SNE
    n_init: int = setting(10, "", ge=1)  # k-means restarts per seed, the best kept
    pca: int | None = setting(None, "Reduce to this many PCA components first.", ge=1)
    whiten: bool = setting(False, "Whiten the PCA components.")
    # (LO, HI) or (LO, HI, STEP): also sweep k; the CLI reads it as LO:HI[:STEP] (parse_k_range)
    k_range: tuple[int, ...] | None = setting(None, "", cli=False)
    plot: str = setting("tsne", "2-D picture of the points.", choices=PLOTS)

    def __post_init__(self):
        check_settings(self, ClusterError)
        super().__post_init__()
        if self.whiten and self.pca is None:
            raise ClusterError("--whiten needs --pca N (the number of components to keep and whiten)")
        r = self.k_range
        if r is not None and not (len(r) in (2, 3) and 2 <= r[0] <= r[1] and (len(r) == 2 or r[2] >= 1)):
            raise ClusterError(f"--k-range must be LO:HI or LO:HI:STEP with 2 <= LO <= HI, got {r}")


def parse_k_range(text: str | None) -> tuple[int, ...] | None:
    """--k-range LO:HI or LO:HI:STEP as the tuple ClusterConfig.k_range takes (checked there)."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(":"))
    except ValueError:
        raise ClusterError(f"--k-range expects LO:HI or LO:HI:STEP such as 5:50, got {text!r}") from None


RUNS = Path("runs")  # where runs go when no --out is given, relative to the working folder


def default_run_dir(kind: str, store: str | Path | None = None) -> Path:
    """A run's folder when --out is not given: runs/<store name>-<kind> (fit-head's kind is its head), or
    runs/<kind> for a run made of other runs (fuse-<runs>)."""
    return RUNS / (kind if store is None else f"{Path(store).stem}-{kind}")
