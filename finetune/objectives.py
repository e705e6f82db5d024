"""What fine-tuning minimizes: class labels (supervised) or the temporal coherence of a video (InfoNCE).

An objective turns the network's output for a batch into a loss, and a list of (output, batch) pairs from an
evaluation pass into metrics. Higher `score` is better: it picks the best epoch and drives early stopping.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from finetune.data import Batch
from heads.metrics import multiclass_metrics

class Supervised:
    """Cross-entropy on the clip's class; metrics are fit-head's (accuracy, macro-F1, confusion, ...)."""

    sampler = "segments"
    metric_name = "accuracy"

    def __init__(self, targets: torch.Tensor, labels: list[str], label_smoothing: float = 0.0):
        self.targets, self.labels, self.smoothing = targets, labels, label_smoothing  # targets (V,) int64

    def loss(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:  # out (B, C)
        y = self.targets[batch.index].to(out.device)
        return F.cross_entropy(out.float(), y, label_smoothing=self.smoothing)

    def metrics(self, outputs: list[tuple[torch.Tensor, Batch]]) -> dict:
        if not outputs:
            return {"accuracy": math.nan, "loss": math.nan, "n": 0}
        logits = torch.cat([o.float() for o, _ in outputs])
        index = torch.cat([b.index for _, b in outputs])
        y = self.targets[index]
        loss = float(F.cross_entropy(logits, y))
        found = multiclass_metrics(y.numpy(), torch.softmax(logits, 1).numpy(), self.labels)
        return {**found, "loss": loss, "n": len(y)}

    def score(self, m: dict) -> tuple[float, float]:
        return m["accuracy"], -m["loss"]  # a tie on accuracy goes to the lower loss, as in fit-head


class Temporal:
    """Symmetric InfoNCE: the two frames of a video are positives, the other videos' frames in the batch negatives.

    The projection's outputs are L2-normalized and compared by cosine / tau. Metrics: the loss and the mean
    cosine of positive and of negative pairs (on the projection, what the loss sees)."""

    sampler = "pair"
    metric_name = "cosine gap"

    def __init__(self, tau: float = 0.1):
        self.tau = tau

    def loss(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:  # out (B, 2, P)
        a, b = F.normalize(out.float(), dim=-1).unbind(1)  # (B, P) each
        logits = a @ b.T / self.tau  # (B, B): the diagonal holds the positives
        target = torch.arange(len(a), device=out.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def metrics(self, outputs: list[tuple[torch.Tensor, Batch]]) -> dict:
        losses, pos, neg, n = [], [], [], 0
        for out, batch in outputs:
            if len(batch) < 2:
                continue  # one video has no negatives
            a, b = F.normalize(out.float(), dim=-1).unbind(1)
            cos = a @ b.T  # (B, B)
            off = ~torch.eye(len(a), dtype=torch.bool)
            losses.append(self.loss(out, batch).item() * len(batch))
            pos.append(cos.diagonal().sum().item())
            neg.append(cos[off].mean().item() * len(batch))
            n += len(batch)
        if not n:
            return {"loss": math.nan, "pos_cos": math.nan, "neg_cos": math.nan, "cos_gap": math.nan, "n": 0}
        p, q = sum(pos) / n, sum(neg) / n
        return {"loss": sum(losses) / n, "pos_cos": p, "neg_cos": q, "cos_gap": p - q, "n": n}

    def score(self, m: dict) -> tuple[float, float]:
        return -m["loss"], m["cos_gap"]


def headline(objective: Supervised | Temporal, m: dict) -> float:
    """The number a history row and the curves plot show: accuracy, or the positive-negative cosine gap."""
    value = m.get("accuracy") if isinstance(objective, Supervised) else m.get("cos_gap")
    return float(value) if value is not None else float(np.nan)
