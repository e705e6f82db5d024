"""Metrics for clip-level predictions and for clusterings, from sklearn.metrics wherever sklearn has them.

Ranking metrics for multilabel (sklearn has no top-K versions), over samples with at least one
positive label, ranking labels by score (ties: lower label index first):
- precision@K = |top-K ∩ positives| / K, averaged over samples;
- AP@K = (1 / min(K, n_pos)) * sum_{k<=K} precision@k * rel(k), where rel(k) = 1 if the k-th ranked
  label is positive; mAP@K is its mean over samples (the usual "mapk" of recommender benchmarks).
  Reported twice, named by normaliser: `mAP@K_divmin` (÷ min(K, n_pos), = `mAP@K`, kept for older runs) and
  `mAP@K_divK` (÷ K, as in the movie-poster report: a sample with fewer than K positives cannot reach 1).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (accuracy_score, adjusted_mutual_info_score, adjusted_rand_score, average_precision_score,
                             confusion_matrix, f1_score, homogeneity_completeness_v_measure,
                             normalized_mutual_info_score, precision_recall_fscore_support, silhouette_score,
                             top_k_accuracy_score)
from sklearn.metrics.cluster import contingency_matrix

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """accuracy, top-k (k = min(5, C)), macro-F1, per-class report, confusion matrix; y_true (N,), probs (N, C)."""
    c = len(labels)
    classes = list(range(c))
    pred = probs.argmax(1)
    k = min(5, c)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=classes, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "top5_accuracy": _top_k(y_true, probs, k),
        "top_k": k,
        # over the classes present in truth or predictions: a class missing from a small test set is no error
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(labels)},
        "confusion": confusion_matrix(y_true, pred, labels=classes).tolist(),
        "confusion_labels": list(labels),
    }


def _top_k(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    c = probs.shape[1]
    score = probs[:, 1] if c == 2 else probs  # sklearn takes binary problems as one score column
    with warnings.catch_warnings():  # k >= C is trivially 1.0; sklearn says so in a warning
        warnings.filterwarnings("ignore", message=".*'k'.*")
        return float(top_k_accuracy_score(y_true, score, k=k, labels=list(range(c)))) if c > 1 else 1.0


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float,
                       ks: tuple[int, ...] = (1, 3, 5), tuned: float | None = None, fixed: float = 0.5) -> dict:
    """micro/macro F1 and per-label P/R/F1 at `threshold` (the run's decision threshold), micro/macro F1 at the
    val-tuned and at the fixed threshold too (`*_tuned`, `*_fixed`), mAP, mAP@K both ways, precision@K."""
    y_true = np.asarray(y_true).astype(int)
    pred = (probs >= threshold).astype(int)
    has_pos = y_true.sum(0) > 0
    ap = {name: float(average_precision_score(y_true[:, i], probs[:, i]))
          for i, name in enumerate(labels) if has_pos[i]}
    out = {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "mAP": mean_average_precision(y_true, probs),
        "ap_per_label": ap,
        "per_label": _per_label(y_true, pred, labels),
    }
    for name, t in (("tuned", tuned), ("fixed", fixed)):
        if t is not None:
            at = (probs >= t).astype(int)
            out.update({f"{name}_threshold": float(t),
                        f"micro_f1_{name}": float(f1_score(y_true, at, average="micro", zero_division=0)),
                        f"macro_f1_{name}": float(f1_score(y_true, at, average="macro", zero_division=0))})
    for k in (k for k in ks if k <= len(labels)):
        out[f"mAP@{k}"], out[f"precision@{k}"] = ranking_at_k(y_true, probs, k)
        out[f"mAP@{k}_divmin"], out[f"mAP@{k}_divK"] = out[f"mAP@{k}"], ranking_at_k(y_true, probs, k, "k")[0]
    return out


def _per_label(y_true: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    p, r, f, s = precision_recall_fscore_support(y_true, pred, zero_division=0)
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)}


def ranking_at_k(y_true: np.ndarray, probs: np.ndarray, k: int, divide: str = "min") -> tuple[float, float]:
    """(mAP@K, precision@K) as defined in the module docstring; divide: "min" (÷ min(K, n_pos)) or "k" (÷ K)."""
    keep = y_true.sum(1) > 0
    y, s = y_true[keep], probs[keep]
    if len(y) == 0:
        return 0.0, 0.0
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (N, K)
    rel = np.take_along_axis(y, top, axis=1)  # (N, K) 1 where the k-th ranked label is positive
    prec_at = np.cumsum(rel, axis=1) / np.arange(1, k + 1)  # precision@1..K per sample
    ap = (prec_at * rel).sum(1) / (np.minimum(k, y.sum(1)) if divide == "min" else k)
    return float(ap.mean()), float(prec_at[:, -1].mean())


def tune_threshold(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The threshold in 0.05..0.95 that maximizes micro-F1 (ties: the one closest to 0.5)."""
    scores = [f1_score(y_true, probs >= t, average="micro", zero_division=0) for t in THRESHOLDS]
    best = max(scores)
    return float(min((t for t, f in zip(THRESHOLDS, scores) if f == best), key=lambda t: abs(t - 0.5)))


HEADLINE = {"multiclass": "accuracy", "multilabel": "mAP"}


def headline(task: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The one number early stopping watches, cheap enough for every epoch: accuracy, or mAP for multilabel."""
    if task == "multiclass":
        return float(accuracy_score(y_true, probs.argmax(1)))
    return mean_average_precision(y_true, probs)


def mean_std(values) -> tuple[float, float]:
    """The "mean ± std" of every repeated run (fit-head --seeds/--folds, sweep, cluster-eval --seeds): the sample
    std (ddof=1), 0 for a single value."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mean_average_precision(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro average precision over the labels that have positives (0 if none has)."""
    has_pos = np.asarray(y_true).sum(0) > 0
    if not has_pos.any():
        return 0.0
    return float(average_precision_score(y_true[:, has_pos], probs[:, has_pos], average="macro"))


# -- cluster metrics: agreement of cluster ids with labels, and label retrieval (cluster-eval) ---------------------
RETRIEVAL_KS = (1, 5, 10)
SILHOUETTE_SAMPLE = 5_000    # silhouette on a seeded sample of this many points when there are more


def purity(labels, clusters) -> float:
    """Share of points whose cluster's majority label is their own label."""
    cont = contingency_matrix(labels, clusters)
    return float(cont.max(axis=0).sum() / cont.sum())


def hungarian_accuracy(labels, clusters) -> float:
    """Accuracy after the best one-to-one matching of clusters to labels (unmatched points count as wrong)."""
    cont = contingency_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(cont, maximize=True)
    return float(cont[rows, cols].sum() / cont.sum())


def conditional_entropy_bits(labels, clusters) -> float:
    """H(label | cluster) in bits: the label uncertainty left once the cluster is known (0 = pure clusters)."""
    p = contingency_matrix(labels, clusters).astype(np.float64)
    p /= p.sum()
    p_cluster = np.broadcast_to(p.sum(axis=0, keepdims=True), p.shape)
    nz = p > 0
    return float(-(p[nz] * np.log2(p[nz] / p_cluster[nz])).sum())


def entropy_bits(labels) -> float:
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def clustering_metrics(labels, clusters) -> dict:
    """Agreement between true labels and cluster ids; invariant to renaming either."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    h, c, v = homogeneity_completeness_v_measure(labels, clusters)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "v_measure": float(v), "homogeneity": float(h), "completeness": float(c),
        "purity": purity(labels, clusters),
        "accuracy": hungarian_accuracy(labels, clusters),
        "cond_entropy_bits": conditional_entropy_bits(labels, clusters),
        "label_entropy_bits": entropy_bits(labels),
    }


def retrieval_precision(vectors: np.ndarray, labels, ks=RETRIEVAL_KS, chunk: int = 1024) -> dict:
    """precision@k: mean share of each item's k nearest neighbours (cosine, itself excluded) with its label.

    `vectors` must be L2-normalised; k values not below the number of items are skipped.
    """
    labels = np.asarray(labels)
    n = len(vectors)
    ks = [k for k in ks if k < n]
    if not ks:
        return {}
    kmax = max(ks)
    hits = np.empty((n, kmax), dtype=bool)
    for start in range(0, n, chunk):
        sims = vectors[start:start + chunk] @ vectors.T                       # (c, n)
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf                                     # never retrieve yourself
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1), 1)
        hits[start:start + chunk] = labels[top] == labels[start:start + chunk, None]
    return {f"precision@{k}": float(hits[:, :k].mean()) for k in ks}


def silhouette(points: np.ndarray, clusters: np.ndarray, seed: int) -> float | None:
    """Euclidean silhouette (on a seeded sample when large); None when undefined (one cluster, or n clusters)."""
    if not 2 <= len(np.unique(clusters)) <= len(points) - 1:
        return None
    sample = SILHOUETTE_SAMPLE if len(points) > SILHOUETTE_SAMPLE else None
    try:
        return float(silhouette_score(points, clusters, sample_size=sample, random_state=seed))
    except ValueError:  # the sample happened to hold a single cluster
        return None
