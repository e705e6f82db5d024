"""PNG plots of a run: learning curves and the confusion matrix (matplotlib, Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def plot_curves(history: list[dict], path: str | Path, metric_name: str = "accuracy",
                best_epoch: int | None = None) -> Path:
    """Train/val loss and the val metric per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if all("train_metric" in r for r in history):  # runs from before train metrics were recorded lack it
        ax_metric.plot(epochs, [r["train_metric"] for r in history], label="train")
    ax_metric.plot(epochs, [r["val_metric"] for r in history], color="tab:green", label="val")
    ax_metric.set(xlabel="epoch", ylabel=metric_name, title=f"train / val {metric_name}")
    ax_metric.legend()
    if best_epoch:
        for ax in (ax_loss, ax_metric):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path, title: str = "confusion") -> Path:
    """Heat map of a confusion matrix, rows normalized to recall, true labels down, predictions across."""
    cm = np.asarray(matrix, dtype=float)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    c = len(labels)
    size = min(4 + 0.3 * c, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), labels, rotation=90, fontsize=max(4, 10 - c // 15))
    ax.set_yticks(range(c), labels, fontsize=max(4, 10 - c // 15))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if c <= 30:  # counts stay legible up to about 30 classes
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_heatmap(values: np.ndarray, row_name: str, rows: list, col_name: str, cols: list, path: str | Path,
                 title: str) -> Path:
    """A 2-D sweep: values (len(rows), len(cols)) as a heat map, each cell annotated, the best one boxed."""
    v = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(cols), 1.5 + 0.6 * len(rows)))
    im = ax.imshow(v, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set(xlabel=col_name, ylabel=row_name, title=title)
    span = np.nanmax(v) - np.nanmin(v) or 1.0
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            ax.text(j, i, f"{v[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if (v[i, j] - np.nanmin(v)) / span > 0.5 else "white")
    i, j = np.unravel_index(np.nanargmax(v), v.shape)
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
