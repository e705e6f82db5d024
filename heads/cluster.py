"""Cluster evaluation: how well do a store's embeddings group by label, with no head trained at all?

Pipeline (kept deliberately plain so it equals a direct scikit-learn computation):

    items of --split ─► points ─► [PCA(-whiten) ─► L2] ─► KMeans(k, n_init, random_state) ─► metrics, plots
      level=video: each clip's frames pooled (mean | max), then L2-normalised       (one point per clip)
      level=frame: every stored frame L2-normalised, labelled with its clip's label (one point per frame)

Decisions:
- Multi-label items are scored by their *first* label; items with no label are left out of the label metrics
  (and counted as `n_unlabelled`). With no labels at all, only label-free numbers are reported: inertia,
  silhouette, cluster sizes and the clip ids nearest each centroid.
- `seeds=N` repeats k-means with random_state seed, seed+1, ..., seed+N-1; every scalar metric is reported as
  mean and std (population std, so N=1 gives 0) over seeds. Sizes, nearest clips, plots and assignments come
  from the first seed, so `seed` alone reproduces them.
- Frame-level sets of more than MINIBATCH_ABOVE points use MiniBatchKMeans; video level always uses KMeans.
- `fit_split` fits PCA and centroids on that split's items and scores `split` (default: every other item).
- The 2-D scatter is t-SNE up to TSNE_MAX_POINTS points, PCA beyond (t-SNE is quadratic); both seeded.
  `plot="none"` skips only that scatter; the contingency heat map and sweep plot are cheap and always written.
  In the cluster panel each cluster takes the colour of the label it is Hungarian-matched to.
- k-means runs on the unit sphere: with PCA the projected points are L2-normalised again. Points stay float32
  as the store returns them (float64 would make k-means++ faster but no longer equal the direct computation).
- Items with no frames (failed extractions) are skipped. `assignments.csv` lists each point's cluster.
- `embedding_2d.csv` holds the scatter's 2-D position of each point (`explain.thumbnails` draws frames there).
- Retrieval precision@k is computed on clip vectors (pooled, L2-normalised, after PCA if asked) by cosine
  similarity, a query never retrieving itself; "relevant" means the same first label.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics.cluster import contingency_matrix
from sklearn.preprocessing import normalize

from featstore import Loaded, open_store
from heads.config import LEVELS, PLOTS, POOLS
from featstore.errors import FramecacheError
from heads.rundir import check_run_dir, staged_run

MINIBATCH_ABOVE = 20_000     # frame-level points above which MiniBatchKMeans replaces KMeans
SILHOUETTE_SAMPLE = 5_000    # silhouette on a seeded sample of this many points when there are more
TSNE_MAX_POINTS = 5_000      # above this the scatter falls back to PCA
LEGEND_MAX = 25              # legends only when there are at most this many labels / clusters
RETRIEVAL_KS = (1, 5, 10)
HEADLINE = ("nmi", "ari", "purity", "accuracy", "cond_entropy_bits")

Progress = Callable[[dict], None]  # called with {"stage": load|fit|sweep|plot, "done": int, "total": int}


class ClusterError(FramecacheError, ValueError):
    """A cluster-eval request that cannot be run as asked; the message names the CLI flag to change."""


# -- metrics -----------------------------------------------------------------------------------------
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
    h, c, v = skm.homogeneity_completeness_v_measure(labels, clusters)
    return {
        "nmi": float(skm.normalized_mutual_info_score(labels, clusters)),
        "ami": float(skm.adjusted_mutual_info_score(labels, clusters)),
        "ari": float(skm.adjusted_rand_score(labels, clusters)),
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
        return float(skm.silhouette_score(points, clusters, sample_size=sample, random_state=seed))
    except ValueError:  # the sample happened to hold a single cluster
        return None


# -- points ------------------------------------------------------------------------------------------
def pool_features(loaded: Loaded, pool: str = "mean") -> np.ndarray:
    """(V, D) one vector per item: the mean or max over its frames (not normalised)."""
    if pool not in POOLS:
        raise ClusterError(f"unknown pool {pool!r}: --pool must be one of {', '.join(POOLS)}")
    reduce = np.mean if pool == "mean" else np.max
    out = np.empty((len(loaded.ids), loaded.features.shape[1]), dtype=np.float32)
    for i in range(len(loaded.ids)):
        out[i] = reduce(loaded.item(i), axis=0)
    return out


@dataclass
class Points:
    """What gets clustered: one row per clip (video level) or per frame (frame level)."""
    X: np.ndarray         # (n, D) L2-normalised
    labels: np.ndarray    # (n,) first label of the point's clip, '' when it has none
    item: np.ndarray      # (n,) index into `ids` of the point's clip
    row: np.ndarray       # (n,) frame row within its clip (0 at video level)
    ids: list[str]        # clip ids
    clip_X: np.ndarray    # (V, D) pooled, L2-normalised clip vectors (== X at video level)
    clip_labels: np.ndarray  # (V,)


def make_points(loaded: Loaded, level: str, pool: str) -> Points:
    clip_labels = np.array([(m.labels or [""])[0] for m in loaded.metas], dtype=object)
    clip_X = normalize(pool_features(loaded, pool))
    if level == "video":
        idx = np.arange(len(loaded.ids))
        return Points(clip_X, clip_labels, idx, np.zeros_like(idx), loaded.ids, clip_X, clip_labels)
    item = np.repeat(np.arange(len(loaded.ids)), loaded.lengths)
    row = np.arange(len(item)) - loaded.offsets[item]
    return Points(normalize(loaded.features), clip_labels[item], item, row, loaded.ids, clip_X, clip_labels)


# -- the estimator -----------------------------------------------------------------------------------
class ClusterModel(ClusterMixin, BaseEstimator):
    """k-means on L2-normalised points, after an optional PCA (whitened or not, then re-normalised).

    Learned: `pca_` (None without PCA), `kmeans_`, `cluster_centers_`, `labels_`, `inertia_`.
    """

    def __init__(self, k: int = 8, n_init: int = 10, pca: int | None = None, whiten: bool = False,
                 minibatch: bool = False, random_state: int | None = None):
        self.k = k
        self.n_init = n_init
        self.pca = pca
        self.whiten = whiten
        self.minibatch = minibatch
        self.random_state = random_state

    def fit(self, X, y=None) -> "ClusterModel":
        self.pca_ = None
        if self.pca is not None:
            self.pca_ = PCA(n_components=self.pca, whiten=self.whiten, random_state=self.random_state).fit(X)
        if self.minibatch:
            km = MiniBatchKMeans(n_clusters=self.k, n_init=self.n_init, random_state=self.random_state,
                                 batch_size=4096)
        else:
            km = KMeans(n_clusters=self.k, n_init=self.n_init, random_state=self.random_state)
        self.kmeans_ = km.fit(self.embed(X))
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.labels_ = self.kmeans_.labels_
        self.inertia_ = float(self.kmeans_.inertia_)
        return self

    def embed(self, X) -> np.ndarray:
        """The space k-means works in: X itself, or its PCA projection re-normalised to unit length."""
        if self.pca_ is None:
            return X
        return normalize(self.pca_.transform(X).astype(np.float32))

    def predict(self, X) -> np.ndarray:
        return self.kmeans_.predict(self.embed(X))


# -- cluster_eval ------------------------------------------------------------------------------------
def _select_ids(store, split: str | None, fit_split: str | None) -> tuple[list[str], list[str] | None]:
    """(ids to score, ids to fit on or None when they are the same)."""
    ids = [v for v in store.ids() if store.meta(v).length > 0]
    if not ids:
        raise ClusterError(f"store {store.path} has no items with features: extract some first")
    split_of = {v: store.meta(v).split for v in ids}
    known = sorted(set(split_of.values()))

    def pick(name: str, flag: str) -> list[str]:
        chosen = [v for v in ids if split_of[v] == name]
        if not chosen:
            raise ClusterError(f"no items with split {name!r} in {store.path}: {flag} must be one of {known}")
        return chosen

    if fit_split is None:
        return (ids if split is None else pick(split, "--split")), None
    fit = pick(fit_split, "--fit-split")
    score = pick(split, "--split") if split is not None else [v for v in ids if split_of[v] != fit_split]
    if not score:
        raise ClusterError(f"every item is in split {fit_split!r}: pass --split to say which items to score")
    return score, fit


def _check_args(level, pool, seeds, n_init, pca, whiten, k_range, plot) -> None:
    if level not in LEVELS:
        raise ClusterError(f"unknown level {level!r}: --level must be one of {', '.join(LEVELS)}")
    if pool not in POOLS:
        raise ClusterError(f"unknown pool {pool!r}: --pool must be one of {', '.join(POOLS)}")
    if plot not in PLOTS:
        raise ClusterError(f"unknown plot {plot!r}: --plot must be one of {', '.join(PLOTS)}")
    if seeds < 1:
        raise ClusterError(f"--seeds must be at least 1, got {seeds}")
    if n_init < 1:
        raise ClusterError(f"--n-init must be at least 1, got {n_init}")
    if pca is not None and pca < 1:
        raise ClusterError(f"--pca must be a positive number of components, got {pca}")
    if whiten and pca is None:
        raise ClusterError("--whiten needs --pca N (the number of components to keep and whiten)")
    if k_range is not None and not (len(k_range) in (2, 3) and 2 <= k_range[0] <= k_range[1]
                                    and (len(k_range) == 2 or k_range[2] >= 1)):
        raise ClusterError(f"--k-range must be LO:HI or LO:HI:STEP with 2 <= LO <= HI, got {k_range}")


def _check_k(k: int, n_fit: int, flag: str = "--k") -> None:
    if not 2 <= k <= n_fit:
        raise ClusterError(f"{flag} {k} is out of range: it must be between 2 and the {n_fit} points fitted on")


def _seed_run(model: ClusterModel, fit: Points, score: Points, same: bool, seed: int) -> tuple[dict, np.ndarray]:
    """Fit one model, score it; returns (metrics, cluster id per scored point)."""
    model.fit(fit.X)
    Z = model.embed(score.X)
    clusters = model.labels_ if same else model.kmeans_.predict(Z)
    inertia = model.inertia_ if same else float(-model.kmeans_.score(Z))
    out = {"inertia": inertia, "silhouette": silhouette(Z, clusters, seed)}
    mask = score.labels != ""
    if mask.any():
        out.update(clustering_metrics(score.labels[mask], clusters[mask]))
    out["sizes"] = np.bincount(clusters, minlength=model.k).tolist()
    return out, clusters


def _mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for key, value in per_seed[0].items():
        if key in ("seed", "sizes"):
            continue
        vals = [r[key] for r in per_seed if r[key] is not None]
        mean[key] = float(np.mean(vals)) if vals else None
        std[key] = float(np.std(vals)) if vals else None
    return mean, std


def _nearest_clips(model: ClusterModel, Z: np.ndarray, points: Points, top: int = 3) -> list[list[str]]:
    """For each centroid, the ids of the `top` distinct clips with a point nearest it."""
    dist = model.kmeans_.transform(Z)                                          # (n, k)
    out = []
    for c in range(dist.shape[1]):
        found: list[str] = []
        for i in np.argsort(dist[:, c], kind="stable"):
            vid = points.ids[points.item[i]]
            if vid not in found:
                found.append(vid)
            if len(found) == top:
                break
        out.append(found)
    return out


def _sweep(fit: Points, score: Points, same: bool, k_range, args: dict, progress) -> list[dict]:
    lo, hi, step = (*k_range, 1) if len(k_range) == 2 else k_range
    ks = list(range(lo, hi + 1, step))
    _check_k(hi, len(fit.X), "--k-range upper end")
    rows = []
    for i, k in enumerate(ks):
        model = ClusterModel(k=k, **args)
        m, _ = _seed_run(model, fit, score, same, args["random_state"])
        rows.append({"k": k, **{key: m.get(key) for key in ("inertia", "silhouette", "nmi", "ari", "accuracy")}})
        progress("sweep", i + 1, len(ks))
    return rows


def cluster_eval(store_path, out_dir=None, k: int | None = None, level: str = "video", pool: str = "mean",
                 split: str | None = None, fit_split: str | None = None, seeds: int = 1, seed: int = 0,
                 n_init: int = 10, pca: int | None = None, whiten: bool = False, k_range=None,
                 plot: str = "tsne", on_progress: Progress | None = None, force: bool = False) -> dict:
    """k-means on a store's embeddings, scored against its labels; writes metrics/config/plots to `out_dir`.

    `k` defaults to the number of distinct (first) labels among the items fitted on. `k_range=(LO, HI[, STEP])`
    adds a sweep of inertia / silhouette (and NMI with labels) over k. `on_progress` is called with
    {"stage", "done", "total"} as work completes. Returns the dict written to `metrics.json`: `kind` is
    "cluster" and `summary` holds the headline numbers averaged over seeds.
    Raises ClusterError for bad arguments, featstore.StoreError for a missing or unreadable store.
    `out_dir` must be absent, empty or a cluster-eval run (replaced) unless `force` (see heads.rundir).
    """
    def progress(stage: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress({"stage": stage, "done": done, "total": total})

    _check_args(level, pool, seeds, n_init, pca, whiten, k_range, plot)
    if out_dir is not None:
        check_run_dir(Path(out_dir), "cluster-eval", force)  # before the work: a refusal must not cost it
    score, fit, store_info = _load_points(store_path, split, fit_split, level, pool, progress)
    same = fit is score
    k, k_source = _resolve_k(k, fit, pca)
    minibatch = level == "frame" and len(fit.X) > MINIBATCH_ABOVE
    args = dict(n_init=n_init, pca=pca, whiten=whiten, minibatch=minibatch)

    per_seed, runs = [], []
    for i in range(seeds):
        model = ClusterModel(k=k, random_state=seed + i, **args)
        metrics, clusters = _seed_run(model, fit, score, same, seed + i)
        per_seed.append({"seed": seed + i, **metrics})
        runs.append((model, clusters))
        progress("fit", i + 1, seeds)
    mean, std = _mean_std(per_seed)
    model, clusters = runs[0]  # the first seed's run is the one described in detail and drawn
    Z = model.embed(score.X)
    labelled = bool((score.labels != "").any())
    clip_mask = score.clip_labels != ""
    retrieval = (retrieval_precision(model.embed(score.clip_X)[clip_mask], score.clip_labels[clip_mask].astype(str))
                 if labelled else {})
    sweep = _sweep(fit, score, same, k_range, {**args, "random_state": seed}, progress) if k_range else None

    config = {
        "command": "cluster-eval", "store": str(store_path), **store_info,
        "k": k, "k_source": k_source, "level": level, "pool": pool, "split": split, "fit_split": fit_split,
        "seeds": seeds, "seed": seed, "n_init": n_init, "pca": pca, "whiten": whiten,
        "k_range": list(k_range) if k_range else None, "plot": plot,
        "algorithm": "MiniBatchKMeans" if minibatch else "KMeans",
    }
    result = {
        "kind": "cluster", "head": "kmeans", "store": str(store_path), "backbone": store_info["backbone"],
        "fingerprint": store_info["fingerprint"], "split": split,
        "summary": {key: mean[key] for key in (HEADLINE if labelled else ("inertia", "silhouette"))},
        "metrics": mean, "std": std, "per_seed": per_seed, "retrieval": retrieval,
        "clusters": {
            "sizes": per_seed[0]["sizes"],
            "nearest_ids": _nearest_clips(model, Z, score),
            "majority_label": _majority_labels(score.labels, clusters, k) if labelled else None,
        },
        "sweep": sweep,
        "n_items": len(score.ids), "n_points": len(score.X), "n_fit_points": len(fit.X),
        "n_unlabelled": int((score.labels == "").sum()),
        "config": config, "plots": [],
    }
    if out_dir is not None:
        with staged_run(out_dir, "cluster-eval", force) as stage:
            _write_outputs(stage, result, score, Z, clusters, plot, seed, progress)
    return result


def _load_points(store_path, split, fit_split, level, pool, progress) -> tuple[Points, Points, dict]:
    """(points to score, points to fit on (the same object when they coincide), what the store says of itself)."""
    with open_store(store_path) as store:
        score_ids, fit_ids = _select_ids(store, split, fit_split)
        progress("load", 0, 1)
        score = make_points(store.load_all(score_ids), level, pool)
        fit = score if fit_ids is None else make_points(store.load_all(fit_ids), level, pool)
        progress("load", 1, 1)
        info = {"fingerprint": store.fingerprint, "backbone": store.config.backbone,
                "weights": store.config.weights, "store_config": store.config.to_attrs()}
    return score, fit, info


def _resolve_k(k: int | None, fit: Points, pca: int | None) -> tuple[int, str]:
    """(k, where it came from), checked against the points fitted on."""
    source = "given"
    if k is None:
        fit_labels = set(fit.labels) - {""}
        if not fit_labels:
            raise ClusterError("the items have no labels, so k cannot be inferred: pass --k N")
        k, source = len(fit_labels), "labels"
    _check_k(k, len(fit.X))
    if pca is not None and pca > min(fit.X.shape):
        raise ClusterError(f"--pca {pca} is too large: at most {min(fit.X.shape)} components "
                           f"({len(fit.X)} points of dimension {fit.X.shape[1]})")
    return k, source


def _majority_labels(labels: np.ndarray, clusters: np.ndarray, k: int) -> list[str | None]:
    out = []
    for c in range(k):
        members = labels[(clusters == c) & (labels != "")]
        values, counts = np.unique(members.astype(str), return_counts=True)
        out.append(str(values[counts.argmax()]) if len(values) else None)
    return out


def _write_outputs(out: Path, result: dict, score: Points, Z: np.ndarray, clusters: np.ndarray,
                   plot: str, seed: int, progress) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "assignments.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "row", "label", "cluster"])
        for i in range(len(score.X)):
            w.writerow([score.ids[score.item[i]], int(score.row[i]), score.labels[i], int(clusters[i])])
    k = result["config"]["k"]
    labels = score.labels.astype(str)
    mask = labels != ""
    plots = []
    progress("plot", 0, 1)
    if plot != "none":
        xy, method = embed_2d(Z, plot, seed)
        title = f"{result['config']['level']} level, k={k}, {method} of {len(Z)} points"
        plot_scatter(out / "embedding.png", xy, labels if mask.any() else None, clusters, k, title)
        _write_xy(out / "embedding_2d.csv", score, xy, method)
        plots.append("embedding.png")
    if mask.any():
        m = result["per_seed"][0]
        title = f"label x cluster (seed {seed}): accuracy {m['accuracy']:.3f}, NMI {m['nmi']:.3f}"
        plot_contingency(out / "contingency.png", labels[mask], clusters[mask], k, title)
        plots.append("contingency.png")
    if result["sweep"]:
        plot_sweep(out / "sweep.png", result["sweep"], k)
        plots.append("sweep.png")
    progress("plot", 1, 1)
    result["plots"] = plots
    (out / "config.json").write_text(json.dumps(result["config"], indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")


def _write_xy(path: Path, score: Points, xy: np.ndarray, method: str) -> None:
    """The scatter's 2-D positions, one row per point (what `explain.thumbnails` draws frames at)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "row", "label", "x", "y", "method"])
        for i in range(len(xy)):
            w.writerow([score.ids[score.item[i]], int(score.row[i]), score.labels[i], f"{xy[i, 0]:.6g}",
                        f"{xy[i, 1]:.6g}", method])


# -- plots (matplotlib's object API: no pyplot global state, no display needed) -----------------------
def embed_2d(Z: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """(n, 2) seeded t-SNE (after PCA to 50 dims) for at most TSNE_MAX_POINTS points, else PCA."""
    if method == "tsne" and 4 <= len(Z) <= TSNE_MAX_POINTS:
        X = PCA(50, random_state=seed).fit_transform(Z) if min(Z.shape) > 50 else Z
        perplexity = min(30.0, (len(Z) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X), "t-SNE"
    return PCA(2, random_state=seed).fit_transform(Z), "PCA"


def palette(n: int) -> list:
    import matplotlib

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
    from matplotlib.figure import Figure

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
    from matplotlib.figure import Figure

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
    from matplotlib.figure import Figure

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
