"""fit-head --head knn: the k-nearest-neighbour vote of DINO's evaluations, the standard probe of frozen features
beside the linear head.

No epochs: the head (heads.models.KNNHead) remembers the train clips' unit-norm masked-mean features (a pooled
store's one row per clip) and their labels; a clip's `k` most cosine-similar train clips vote, each with weight
exp(cosine / temperature), and the vote shares are its class probabilities. It is a run like a trained head's:
val is scored by the head that remembers train only (the early head), and with refit (the default) the final head
also remembers val, as a refit head is trained on train + val.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from heads.config import TrainConfig
from heads.data import Source, batches
from heads.metrics import HEADLINE, headline, tune_threshold
from heads.models import HeadError, KNNHead, build_head
from heads.train import TrainResult, evaluate, probabilities
from pipeline.device import resolve_device


def fit_knn(cache: Source, targets: torch.Tensor, task: str, labels: list[str], splits: dict[str, np.ndarray],
            cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
            loss: nn.Module | None = None) -> TrainResult:
    """What `train_head` returns, for `cfg.head == "knn"`: the early head remembers splits['train'], the final
    one train + val with `cfg.refit`; a multilabel threshold is tuned on val (or `cfg.threshold`)."""
    if loss is not None:
        raise HeadError("--head knn votes with one store's labels: fit it on one store at a time "
                        "(several stores share a trained trunk, which a kNN head does not have)")
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    early = remember(cache, targets, splits["train"], task, len(labels), cfg, device)
    logits, y, _ = evaluate(early, batches(cache, targets, splits["val"], 256, cfg.max_frames, device))
    probs = probabilities(logits, task)
    tuned = tune_threshold(y, probs) if task == "multilabel" else 0.5
    threshold = (cfg.threshold or tuned) if task == "multilabel" else 0.5
    final = early
    if cfg.refit:
        final = remember(cache, targets, np.concatenate([splits["train"], splits["val"]]), task, len(labels), cfg,
                         device)
    # one row, phase "index": no training epoch was run (the run's epochs_run is 0)
    row = {"phase": "index", "epoch": 1, "train_loss": math.nan, "train_metric": math.nan, "val_loss": math.nan,
           "val_metric": headline(task, y, probs), "lr": math.nan, "seconds": time.perf_counter() - start}
    if on_epoch is not None:
        on_epoch({**row, "epochs": 1, "best": True, "best_epoch": 0, "metric_name": HEADLINE[task]})
    return TrainResult(final, early, cfg.head_config(cache.dim, len(labels)), [row], 0, threshold,
                       time.perf_counter() - start, tuned)


@torch.no_grad()
def remember(cache: Source, targets: torch.Tensor, idx: np.ndarray, task: str, n_classes: int, cfg: TrainConfig,
             device: torch.device) -> KNNHead:
    """A kNN head holding the clips `idx`: features as every head sees them at eval (up to max_frames uniformly
    spaced frames per clip), their masked mean made unit-norm."""
    head = build_head(cfg.head_config(cache.dim, n_classes)).to(device)
    feats = torch.cat([head.embed(x, n) for x, n, _ in batches(cache, None, idx, 256, cfg.max_frames, device)])
    chosen = targets[torch.as_tensor(np.asarray(idx), dtype=torch.int64)]
    onehot = nn.functional.one_hot(chosen, n_classes) if task == "multiclass" else chosen
    head.remember(feats, onehot, cfg.k, cfg.temperature, task == "multilabel")
    return head.eval()
