"""One training loop for every head: `train_one_epoch`, `evaluate`, and `train_head` around them.

Early stopping watches the validation headline metric (accuracy, or mAP for multilabel; ties go
to the lower validation loss), keeps the best weights in memory and restores them at the end.
With `refit` (the default) the head is then retrained from the same init on train + val for that
many epochs, replaying the learning rates: on small caches the clips val held out are worth more
as training data than as a fixed early-stopped model (UCF101 dev cache: 0.61 -> 0.71 for the linear head).
With the same seed on CPU, a run is repeatable bit for bit.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from heads.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from heads.data import Augment, Cache, Source, batches, feature_stats
from heads.metrics import HEADLINE, headline, multiclass_metrics, multilabel_metrics, tune_threshold
from heads.models import MEMORY_HEADS, HeadConfig, build_head
from pipeline.device import resolve_device

@dataclass
class TrainResult:
    model: nn.Module       # the final head, in eval mode: refit on train + val, or `early` without refit
    early: nn.Module       # the early-stopped head (best val epoch), what val metrics are honest for
    head_config: HeadConfig
    history: list[dict]    # one row per epoch, phase "fit" then "refit"
    best_epoch: int
    threshold: float       # multilabel decision threshold: tuned on val, or --threshold (0.5 for multiclass)
    seconds: float
    tuned_threshold: float = 0.5  # the val-tuned threshold, reported next to a fixed one


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as a checkpoint or a kept-best snapshot holds them: on the CPU, a copy that training cannot change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def train_one_epoch(model: nn.Module, data: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    seen: list | None = None) -> float:
    """One pass over the training batches; returns the mean loss per clip. `seen` collects (logits, targets)
    of every batch, as the model saw them while training (augmented, dropout on): the train metric."""
    model.train()
    total, n = 0.0, 0
    for x, lengths, y in data:
        out = model(x, lengths)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        n += len(y)
        if seen is not None:
            seen.append((out.detach().float().cpu(), y.cpu()))
    return total / max(n, 1)


def train_metric(task: str, seen: list) -> float:
    """The headline metric over the batches of one training epoch."""
    logits = torch.cat([s[0] for s in seen]).numpy()
    return headline(task, torch.cat([s[1] for s in seen]).numpy(), probabilities(logits, task))


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable,
             loss_fn: Callable | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(logits (N, C), targets or None, mean loss or nan) over batches, in eval mode."""
    model.eval()
    logits, targets, total = [], [], 0.0
    for x, lengths, y in data:
        out = model(x, lengths)
        logits.append(out.float().cpu())
        if y is not None:
            targets.append(y.cpu())
            if loss_fn is not None:
                total += float(loss_fn(out, y)) * len(y)
    n = sum(len(t) for t in logits)
    y_all = torch.cat(targets).numpy() if targets else None
    return torch.cat(logits).numpy(), y_all, total / n if (targets and loss_fn and n) else math.nan


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    t = torch.from_numpy(logits)
    return (torch.softmax(t, 1) if task == "multiclass" else torch.sigmoid(t)).numpy()


def score(task: str, y: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float = 0.5,
          tuned: float | None = None, fixed: float = 0.5) -> dict:
    if task == "multiclass":
        return multiclass_metrics(y, probs, labels)
    return multilabel_metrics(y, probs, labels, threshold, tuned=tuned, fixed=fixed)


def make_loss(task: str, cfg: TrainConfig, train_targets: torch.Tensor, n_classes: int,
              device: torch.device) -> nn.Module:
    if task == "multiclass":
        weight = None
        if cfg.class_weights:
            counts = torch.bincount(train_targets, minlength=n_classes).float()
            weight = (counts.sum() / (n_classes * counts.clamp_min(1))).to(device)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    pos_weight = None
    if cfg.class_weights:
        pos = train_targets.sum(0)
        pos_weight = ((len(train_targets) - pos) / pos.clamp_min(1)).to(device)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices only: biases, norm gains, positions and CLS token keep their scale."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim == 2]
    keep = [p for p in model.parameters() if p.requires_grad and p.ndim != 2]
    params = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.99, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.scheduler == "plateau":
        # On the val loss, not the metric: on a small val set accuracy sits flat for many epochs while
        # the loss still falls, and halving then would freeze the head early.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                          patience=cfg.lr_patience or max(1, cfg.patience // 3))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "exp":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    return None


def train_head(cache: Source, targets: torch.Tensor, task: str, labels: list[str], splits: dict[str, np.ndarray],
               cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None,
               loss: nn.Module | None = None) -> TrainResult:
    """Train `cfg.head` on splits['train'], early-stop on splits['val'] and restore the best weights;
    with `cfg.refit`, then retrain from the same init on train + val for the best epoch count.
    `loss` replaces the task's loss (multi-task training masks each clip's logits to its own dataset's).
    A memory head (--head knn) is fit by heads.knn instead: no epochs, the same TrainResult."""
    if cfg.head in MEMORY_HEADS:
        from heads.knn import fit_knn

        return fit_knn(cache, targets, task, labels, splits, cfg, on_epoch, loss)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and isinstance(cache, Cache):  # a streamed store's batches go to the GPU one by one
        cache = Cache(**{**vars(cache), "features": cache.features.to(device)})  # gather on the GPU
    gen = torch.Generator().manual_seed(cfg.seed)
    model, loss_fn, aug = prepare_head(cache, targets, task, splits["train"], cfg, len(labels), device)
    loss_fn = loss_fn if loss is None else loss
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer)
    metric_name = HEADLINE[task]

    def val_batches():
        return batches(cache, targets, splits["val"], cfg.batch_size, cfg.max_frames, device)

    history, best, best_state, best_epoch, stale = [], (-math.inf, math.inf), None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_data = batches(cache, targets, splits["train"], cfg.batch_size, cfg.max_frames, device,
                             train=True, gen=gen, aug=aug)
        seen: list = []
        train_loss = train_one_epoch(model, train_data, loss_fn, optimizer, seen)
        logits, y, val_loss = evaluate(model, val_batches(), loss_fn)
        metric = headline(task, y, probabilities(logits, task))
        lr = optimizer.param_groups[0]["lr"]
        improved = (metric, -val_loss) > (best[0], -best[1])  # a tie on the metric goes to the lower loss
        if improved:
            best, best_epoch, stale = (metric, val_loss), epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        row = {"phase": "fit", "epoch": epoch, "train_loss": train_loss, "train_metric": train_metric(task, seen),
               "val_loss": val_loss, "val_metric": metric, "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch({**row, "epochs": cfg.epochs, "best": improved, "best_epoch": best_epoch,
                      "metric_name": metric_name})
        if scheduler is not None:
            scheduler.step(val_loss) if cfg.scheduler == "plateau" else scheduler.step()
        if stale >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    threshold = tuned = 0.5
    if task == "multilabel":
        logits, y, _ = evaluate(model, val_batches())
        tuned = tune_threshold(y, probabilities(logits, task))
        threshold = cfg.threshold or tuned
    final = model
    if cfg.refit:
        lrs = [r["lr"] for r in history[:best_epoch]]
        final = _refit(cache, targets, task, np.concatenate([splits["train"], splits["val"]]), cfg,
                       len(labels), lrs, device, on_epoch, history, loss)
    return TrainResult(final, model, cfg.head_config(cache.dim, len(labels)), history, best_epoch, threshold,
                       time.perf_counter() - start, tuned)


def prepare_head(cache: Source, targets: torch.Tensor, task: str, idx: np.ndarray, cfg: TrainConfig,
                 n_classes: int, device: torch.device) -> tuple[nn.Module, nn.Module, Augment]:
    """A new head (same init for the same seed) normalized with the frames of `idx`, its loss and augmentation."""
    torch.manual_seed(cfg.seed)
    model = build_head(cfg.head_config(cache.dim, n_classes))
    mean, std = feature_stats(cache, idx)
    if cfg.normalize == "scalar":  # keeps the dims' relative scales: rare, noisy dims are not blown up
        std = std.pow(2).mean().sqrt().expand_as(std)
    if cfg.normalize != "none":
        model.input.set_stats(mean, std)
    aug = Augment(cfg.frame_dropout, std * cfg.noise_std if cfg.noise_std else None, cfg.sampling)
    return model.to(device), make_loss(task, cfg, targets[idx], n_classes, device), aug


def _refit(cache: Source, targets: torch.Tensor, task: str, idx: np.ndarray, cfg: TrainConfig, n_classes: int,
           lrs: list[float], device: torch.device, on_epoch: Callable | None, history: list[dict],
           loss: nn.Module | None = None) -> nn.Module:
    """Retrain on `idx` (train + val) for len(lrs) epochs, replaying the learning rates the fit phase used."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model, loss_fn, aug = prepare_head(cache, targets, task, idx, cfg, n_classes, device)
    loss_fn = loss_fn if loss is None else loss
    optimizer = make_optimizer(cfg, model)
    for epoch, lr in enumerate(lrs, 1):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        data = batches(cache, targets, idx, cfg.batch_size, cfg.max_frames, device, train=True, gen=gen, aug=aug)
        seen: list = []
        train_loss = train_one_epoch(model, data, loss_fn, optimizer, seen)
        row = {"phase": "refit", "epoch": epoch, "train_loss": train_loss, "train_metric": train_metric(task, seen),
               "val_loss": math.nan, "val_metric": math.nan, "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch({**row, "epochs": len(lrs), "best": False, "best_epoch": len(lrs), "metric_name": ""})
    return model.eval()
