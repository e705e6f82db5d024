"""Where the errors are: per-class precision / recall / F1 / support and the most confident mistakes of a split.

Multiclass: a clip is a mistake when the top class is not its label; its confidence is the top probability.
Multilabel: every label predicted at the run's threshold that the clip does not have (a false positive) is one
mistake, ranked by its probability; labels missed are visible in the per-class recall.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from heads.plots import plot_confusion
from heads.run import SplitPredictions
from heads.rundir import claim


@dataclass
class ClassRow:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Mistake:
    id: str
    path: str
    true: str          # the clip's labels, '|'-joined
    predicted: str
    prob: float        # probability of `predicted`
    true_prob: float   # probability of the (first) true label


def predicted_matrix(p: SplitPredictions) -> np.ndarray:
    """(N,) top class indices (multiclass) or (N, C) 0/1 at the run's threshold (multilabel)."""
    return p.probs.argmax(1) if p.task == "multiclass" else (p.probs >= p.threshold).astype(int)


def per_class(p: SplitPredictions) -> list[ClassRow]:
    """One row per class of the run, in label order (support 0 for classes absent from the split)."""
    classes = list(range(len(p.labels)))
    kw = {"labels": classes} if p.task == "multiclass" else {}
    prec, rec, f1, sup = precision_recall_fscore_support(np.asarray(p.targets), predicted_matrix(p),
                                                         zero_division=0, **kw)
    return [ClassRow(name, float(prec[i]), float(rec[i]), float(f1[i]), int(sup[i]))
            for i, name in enumerate(p.labels)]


def mistakes(p: SplitPredictions, top: int | None = None) -> list[Mistake]:
    """The wrong predictions, most confident first (ties: clip order); at most `top` of them."""
    index = {name: i for i, name in enumerate(p.labels)}
    found: list[Mistake] = []
    pred = predicted_matrix(p)
    for i, vid in enumerate(p.ids):
        true_prob = float(p.probs[i, index[p.truth[i][0]]])
        if p.task == "multiclass":
            wrong = [int(pred[i])] if pred[i] != p.targets[i] else []
        else:
            wrong = [c for c in np.flatnonzero(pred[i]) if p.labels[c] not in p.truth[i]]
        found += [Mistake(vid, p.paths[i], "|".join(p.truth[i]), p.labels[c], float(p.probs[i, c]), true_prob)
                  for c in wrong]
    found.sort(key=lambda m: -m.prob)  # stable: equal probabilities keep clip order
    return found if top is None else found[:top]


def write_report(p: SplitPredictions, out: Path, split: str, top: int = 50) -> list[Path]:
    """per_class.csv + per_class.png, mistakes.csv (the `top` most confident), confusion.png (multiclass)."""
    claim(out)  # the run's own from now on: rerunning the run replaces it
    out.mkdir(parents=True, exist_ok=True)
    rows = per_class(p)
    written = [_write_csv(out / "per_class.csv", ["label", "precision", "recall", "f1", "support"],
                          [[r.label, f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.f1:.4f}", r.support]
                           for r in rows])]
    written.append(plot_per_class(rows, out / "per_class.png", f"{p.head} on {split} ({len(p.ids)} clips)"))
    written.append(_write_csv(out / "mistakes.csv", ["video", "path", "true", "predicted", "prob", "true_prob"],
                              [[m.id, m.path, m.true, m.predicted, f"{m.prob:.4f}", f"{m.true_prob:.4f}"]
                               for m in mistakes(p, top)]))
    if p.task == "multiclass":
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(p.targets, predicted_matrix(p), labels=list(range(len(p.labels))))
        written.append(plot_confusion(cm.tolist(), p.labels, out / "confusion.png", f"{p.head} on {split}"))
    return written


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def plot_per_class(rows: list[ClassRow], path: Path, title: str) -> Path:
    """Horizontal bars of precision, recall and F1 per class, worst F1 at the top; support in the labels."""
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda r: (r.f1, r.label))
    n = len(rows)
    fig = Figure(figsize=(8, min(3 + 0.32 * n, 40)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    for k, (name, colour) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))):
        ax.barh(y + (k - 1) * 0.27, [getattr(r, name) for r in rows], height=0.27, color=colour, label=name)
    ax.set_yticks(y, [f"{r.label} (n={r.support})" for r in rows], fontsize=max(5, 9 - n // 25))
    ax.invert_yaxis()  # worst F1 first, where the eye starts
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("score")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8, frameon=False)
    ax.set_title(title)
    fig.savefig(path, dpi=100)
    return path
