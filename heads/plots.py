"""PNG plots of a run: learning curves, the confusion matrix, a sweep's heat map, and cluster-eval's scatter,
contingency and k-sweep pictures (matplotlib, Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402


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
    # one square per cell, as imshow draws them: imshow resamples the rates to the canvas (~3000 px a side at 101
    # classes) and colours that, ~200 MB of canvas-sized arrays, more than a streamed run's whole budget
    edges = np.arange(c + 1) - 0.5
    im = ax.pcolormesh(edges, edges, rates, cmap="Blues", vmin=0, vmax=1, antialiased=False, edgecolors="none")
    ax.set_aspect("equal")
    ax.invert_yaxis()
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


# -- cluster-eval's plots (matplotlib's object API: no pyplot global state) ----------------------------------------
LEGEND_MAX = 25              # legends only when there are at most this many labels / clusters


def palette(n: int) -> list:
    """n distinct colours: tab20's dark hues first, then its light ones; turbo beyond 20."""
    if n <= 20:  # tab20 pairs a dark and a light shade: use the ten dark hues first
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [matplotlib.colormaps["tab20"](order[i]) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _contingency(labels: np.ndarray, clusters: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    names = sorted(set(labels))
    row = {name: i for i, name in enumerate(names)}
    cont = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(cont, ([row[x] for x in labels], clusters), 1)
    return names, cont


def hungarian_column_order(cont: np.ndarray) -> list[int]:
    """Clusters (columns) ordered so that the cluster matched to label i comes i-th; the rest follow,
    each placed by its majority label, so that a good clustering shows a diagonal."""
    rows, cols = linear_sum_assignment(cont, maximize=True)
    matched = [int(c) for _, c in sorted(zip(rows, cols))]
    rest = [j for j in range(cont.shape[1]) if j not in matched]
    return matched + sorted(rest, key=lambda j: (int(cont[:, j].argmax()), -int(cont[:, j].sum())))


def _cluster_colours(labels: np.ndarray | None, clusters: np.ndarray, k: int):
    """Colour and legend name per cluster: a cluster takes the colour of the label it is matched to,
    so with a good clustering both panels look alike; unmatched clusters are drawn with crosses."""
    if labels is None:
        return palette(k), [f"c{j}" for j in range(k)], ["o"] * k
    mask = labels != ""
    names, cont = _contingency(labels[mask], clusters[mask], k)
    colours = palette(len(names))
    rows, cols = linear_sum_assignment(cont, maximize=True)
    match = dict(zip(cols.tolist(), rows.tolist()))
    out_c, out_n, out_m = [], [], []
    for j in range(k):
        i = match.get(j, int(cont[:, j].argmax()))
        out_c.append(colours[i])
        out_n.append(f"c{j}: {names[i]}" if j in match else f"c{j} (~{names[i]})")
        out_m.append("o" if j in match else "x")
    return out_c, out_n, out_m


def plot_scatter(path: Path, xy: np.ndarray, labels: np.ndarray | None, clusters: np.ndarray, k: int,
                 title: str) -> None:
    """Two panels, coloured by label and by cluster (one panel without labels)."""
    n_panels = 1 if labels is None else 2
    fig = Figure(figsize=(7.5 * n_panels, 6.5), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    size = 18 if len(xy) <= 1000 else 4
    if labels is not None:
        names = sorted(set(labels) - {""})
        for name, colour in zip(names, palette(len(names))):
            m = labels == name
            axes[0].scatter(xy[m, 0], xy[m, 1], s=size, color=colour, label=name, linewidths=0)
        m = labels == ""
        if m.any():
            axes[0].scatter(xy[m, 0], xy[m, 1], s=size, color="lightgrey", label="(no label)", linewidths=0)
        axes[0].set_title("coloured by label")
        if len(names) <= LEGEND_MAX:
            axes[0].legend(fontsize=6, markerscale=1.5, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    colours, names, markers = _cluster_colours(labels, clusters, k)
    ax = axes[-1]
    for j in range(k):
        m = clusters == j
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=size * (1.6 if markers[j] == "x" else 1), color=colours[j],
                       marker=markers[j], label=names[j], linewidths=0 if markers[j] == "o" else 1)
    ax.set_title("coloured by cluster" + (" (colour of its matched label)" if labels is not None else ""))
    if k <= LEGEND_MAX:
        ax.legend(fontsize=6, markerscale=1.5, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_contingency(path: Path, labels: np.ndarray, clusters: np.ndarray, k: int, title: str) -> None:
    """Heat map, rows = labels, columns = clusters in Hungarian-matched order (a diagonal when good)."""
    names, cont = _contingency(labels, clusters, k)
    order = hungarian_column_order(cont)
    cont = cont[:, order]
    side = min(24.0, 3 + 0.32 * max(len(names), k))
    fig = Figure(figsize=(side + 2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cont, cmap="Blues", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.6, label="points")
    if len(names) <= 60:
        ax.set_yticks(range(len(names)), names, fontsize=7)
    if k <= 60:
        ax.set_xticks(range(k), [f"c{j}" for j in order], fontsize=7, rotation=90)
    if cont.size <= 900:
        top = cont.max()
        for (i, j), v in np.ndenumerate(cont):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                        color="white" if v > 0.5 * top else "black")
    ax.set_xlabel("cluster (ordered by Hungarian match to labels)")
    ax.set_ylabel("label")
    ax.set_title(title)
    fig.savefig(path, dpi=110)


def plot_sweep(path: Path, sweep: list[dict], k: int) -> None:
    """Inertia (left) and silhouette (+ NMI with labels, right) against k; the evaluated k is marked."""
    ks = [r["k"] for r in sweep]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ks, [r["inertia"] for r in sweep], "o-", ms=3)
    ax1.set_ylabel("inertia (sum of squared distances)")
    sil = [np.nan if r["silhouette"] is None else r["silhouette"] for r in sweep]
    ax2.plot(ks, sil, "o-", ms=3, label="silhouette")
    if sweep[0].get("nmi") is not None:
        ax2.plot(ks, [r["nmi"] for r in sweep], "s--", ms=3, label="NMI")
        ax2.legend()
    ax2.set_ylabel("score")
    for ax in (ax1, ax2):
        ax.set_xlabel("k")
        ax.axvline(k, color="grey", lw=0.8, ls=":")
    fig.suptitle("k sweep (first seed)")
    fig.savefig(path, dpi=110)
