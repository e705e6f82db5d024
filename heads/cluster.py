"""Cluster evaluation: how well do a store's embeddings group by label, with no head trained at all?

Here: the points, the estimator (ClusterModel, a scikit-learn estimator) and the runner (cluster_eval, configured by
heads.config.ClusterConfig); the label metrics are in heads.metrics, the pictures in heads.plots.

Pipeline (kept deliberately plain so it equals a direct scikit-learn computation):

    items of --split ─► points ─► [PCA(-whiten) ─► L2] ─► KMeans(k, n_init, random_state) ─► metrics, plots
      level=video: each clip's frames pooled (mean | max), then L2-normalised       (one point per clip)
      level=frame: every stored frame L2-normalised, labelled with its clip's label (one point per frame)

Decisions:
- Multi-label items are scored by their *first* label; items with no label are left out of the label metrics
  (and counted as `n_unlabelled`). With no labels at all, only label-free numbers are reported: inertia,
  silhouette, cluster sizes and the clip ids nearest each centroid.
- `seeds=N` repeats k-means with random_state seed, seed+1, ..., seed+N-1; every scalar metric is reported as
  mean and sample std (ddof=1, as fit-head --seeds; N=1 gives 0) over seeds. Sizes, nearest clips, plots and
  assignments come from the first seed, so `seed` alone reproduces them.
- Frame-level sets of more than MINIBATCH_ABOVE points use MiniBatchKMeans; video level always uses KMeans.
- Rows past --memory-budget stream from the shards (heads.cluster_stream): video-level points are pooled as they go
  by (the same points, the same KMeans); frame-level ones are fit by `ClusterModel.fit_stream` (restarts on a
  sample, then MiniBatchKMeans.partial_fit over every frame), and metrics.json's config says
  "data_source": "stream".
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import normalize

from featstore import Loaded, open_store
from featstore.finite import finite_rows
from featstore.settings import check_choice
from heads.budget import budget_bytes
from heads.cluster_stream import FrameStream, frame_stream, pooled_clips, rows_bytes, sample_size
from heads.config import POOLS, ClusterConfig, ClusterError
from heads.metrics import clustering_metrics, mean_std, retrieval_precision, silhouette
from heads.plots import plot_contingency, plot_scatter, plot_sweep
from heads.rundir import check_run_dir, staged_run, write_json

MINIBATCH_ABOVE = 20_000     # frame-level points above which MiniBatchKMeans replaces KMeans
STREAM_PASSES = 2            # frames past --memory-budget: MiniBatchKMeans.partial_fit passes over them
STREAM_BATCH = 4096          # frames per partial_fit step
TSNE_MAX_POINTS = 5_000      # above this the scatter falls back to PCA
HEADLINE = ("nmi", "ari", "purity", "accuracy", "cond_entropy_bits")

Progress = Callable[[dict], None]  # called with {"stage": load|fit|sweep|plot, "done": int, "total": int}


# -- points ------------------------------------------------------------------------------------------
def pool_features(loaded: Loaded, pool: str = "mean") -> np.ndarray:
    """(V, D) one vector per item: the mean or max over its frames (not normalised)."""
    check_choice("--pool", pool, POOLS, ClusterError)
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


@dataclass
class Everything:
    """The labels of every point scored and fitted on: those of the Points in memory, or, for frames streamed
    past --memory-budget, of every frame (the Points then hold a sample)."""
    labels: np.ndarray       # (n,) of the scored points, aligned with their clusters
    fit_labels: np.ndarray   # (n_fit,) of the points fitted on


@dataclass
class StreamedFrames:
    """Frame-level points read from the shards block by block (heads.cluster_stream): the scored and fitted ones."""
    score: FrameStream
    fit: FrameStream         # the same object when they coincide

    def everything(self) -> Everything:
        return Everything(self.score.labels, self.fit.labels)


def make_points(loaded: Loaded, level: str, pool: str) -> Points:
    clip_labels = np.array([(m.labels or [""])[0] for m in loaded.metas], dtype=object)
    clip_X = normalize(pool_features(loaded, pool))
    if level == "video":
        return video_points(loaded.ids, clip_X, clip_labels)
    item = np.repeat(np.arange(len(loaded.ids)), loaded.lengths)
    row = np.arange(len(item)) - loaded.offsets[item]
    return Points(normalize(loaded.features), clip_labels[item], item, row, loaded.ids, clip_X, clip_labels)


def video_points(ids: list[str], clip_X: np.ndarray, clip_labels: np.ndarray) -> Points:
    """One point per clip: its pooled, L2-normalised vector."""
    idx = np.arange(len(ids))
    return Points(clip_X, clip_labels, idx, np.zeros_like(idx), ids, clip_X, clip_labels)


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

    def fit_stream(self, sample: np.ndarray, blocks: Callable[[], Iterable[np.ndarray]]) -> "ClusterModel":
        """Fit on points too many for memory: the `n_init` k-means++ restarts on `sample` (in memory), then
        MiniBatchKMeans from the best centres over every block of `blocks()`, STREAM_PASSES times. No PCA, and no
        `labels_` or `inertia_`: predict the points as they stream by."""
        if self.pca is not None:
            raise ClusterError("--pca needs every point in memory: raise --memory-budget, or use --level video")
        self.pca_ = None
        start = KMeans(n_clusters=self.k, n_init=self.n_init, random_state=self.random_state).fit(sample)
        km = MiniBatchKMeans(n_clusters=self.k, init=start.cluster_centers_, n_init=1, random_state=self.random_state,
                             batch_size=STREAM_BATCH)
        for _ in range(STREAM_PASSES):
            for block in blocks():
                for part in np.array_split(block, max(1, len(block) // STREAM_BATCH)):
                    km.partial_fit(part)
        self.kmeans_, self.cluster_centers_ = km, km.cluster_centers_
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


def _check_k(k: int, n_fit: int, flag: str = "--k") -> None:
    if not 2 <= k <= n_fit:
        raise ClusterError(f"{flag} {k} is out of range: it must be between 2 and the {n_fit} points fitted on")


def _seed_run(model: ClusterModel, fit: Points, score: Points, seed: int) -> tuple[dict, np.ndarray]:
    """Fit one model, score it; returns (metrics, cluster id per scored point)."""
    same = fit is score
    model.fit(fit.X)
    Z = model.embed(score.X)
    clusters = model.labels_ if same else model.kmeans_.predict(Z)
    inertia = model.inertia_ if same else float(-model.kmeans_.score(Z))
    return _run_metrics(inertia, silhouette(Z, clusters, seed), score.labels, clusters, model.k), clusters


def _run_metrics(inertia: float, silhouette_: float | None, labels: np.ndarray, clusters: np.ndarray,
                 k: int) -> dict:
    """One seed's numbers: inertia, silhouette, label agreement over the labelled points, cluster sizes."""
    out = {"inertia": inertia, "silhouette": silhouette_}
    mask = labels != ""
    if mask.any():
        out.update(clustering_metrics(labels[mask], clusters[mask]))
    out["sizes"] = np.bincount(clusters, minlength=k).tolist()
    return out


def _mean_std(per_seed: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for key, value in per_seed[0].items():
        if key in ("seed", "sizes"):
            continue
        vals = [r[key] for r in per_seed if r[key] is not None]
        mean[key], std[key] = mean_std(vals) if vals else (None, None)
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


def _sweep(fit: Points, score: Points, k_range, args: dict, progress) -> list[dict]:
    """Inertia, silhouette (and label agreement) of one seed's k-means for each k of `k_range`."""
    lo, hi, step = (*k_range, 1) if len(k_range) == 2 else k_range
    ks = list(range(lo, hi + 1, step))
    _check_k(hi, len(fit.X), "--k-range upper end")
    rows = []
    for i, k in enumerate(ks):
        model = ClusterModel(k=k, **args)
        m, _ = _seed_run(model, fit, score, args["random_state"])
        rows.append({"k": k, **{key: m.get(key) for key in ("inertia", "silhouette", "nmi", "ari", "accuracy")}})
        progress("sweep", i + 1, len(ks))
    return rows


def cluster_eval(store_path, cfg: ClusterConfig | None = None, out_dir=None, *, force: bool = False,
                 on_progress: Progress | None = None) -> dict:
    """k-means on a store's embeddings, scored against its labels; writes metrics/config/plots to `out_dir`.

    `cfg.k` defaults to the number of distinct (first) labels among the items fitted on; `cfg.k_range=(LO, HI[,
    STEP])` adds a sweep of inertia / silhouette (and NMI with labels) over k. `on_progress` is called with
    {"stage", "done", "total"} as work completes. Returns the dict written to `metrics.json`: `kind` is
    "cluster" and `summary` holds the headline numbers averaged over seeds.
    Raises ClusterError for bad arguments, featstore.StoreError for a missing or unreadable store.
    `out_dir` must be absent, empty or a cluster-eval run (replaced whole) unless `force` (see heads.rundir).
    """
    cfg = cfg or ClusterConfig()

    def progress(stage: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress({"stage": stage, "done": done, "total": total})

    if out_dir is not None:
        check_run_dir(Path(out_dir), "cluster-eval", force)  # before the work: a refusal must not cost it
    score, fit, store_info, frames = _load_points(store_path, cfg, progress)
    every = Everything(score.labels, fit.labels) if frames is None else frames.everything()
    k, k_source = _resolve_k(cfg, every, fit.X.shape[1])
    minibatch = cfg.level == "frame" and (frames is not None or len(fit.X) > MINIBATCH_ABOVE)
    args = dict(n_init=cfg.n_init, pca=cfg.pca, whiten=cfg.whiten, minibatch=minibatch)
    if frames is None:
        per_seed, (model, clusters) = _fit_seeds(fit, score, cfg, k, args, progress)
        shown = clusters
    else:
        per_seed, (model, clusters) = _fit_seeds_streamed(frames, fit, score, cfg, k, progress)
        shown = model.predict(score.X)  # the sample's clusters: what the pictures show
    sweep = _sweep(fit, score, cfg.k_range, {**args, "random_state": cfg.seed}, progress) if cfg.k_range else None
    config = {
        "command": "cluster-eval", "store": str(store_path), **store_info,
        "k": k, "k_source": k_source, "level": cfg.level, "pool": cfg.pool, "split": cfg.split,
        "fit_split": cfg.fit_split, "seeds": cfg.seeds, "seed": cfg.seed, "n_init": cfg.n_init, "pca": cfg.pca,
        "whiten": cfg.whiten, "k_range": list(cfg.k_range) if cfg.k_range else None, "plot": cfg.plot,
        "algorithm": "MiniBatchKMeans" if minibatch else "KMeans", "memory_budget": cfg.memory_budget,
    }
    result = _describe(config, per_seed, model, clusters, score, every, sweep)
    if out_dir is not None:
        with staged_run(out_dir, "cluster-eval", force) as stage:
            _write_outputs(stage, result, score, model.embed(score.X), shown, cfg.plot, cfg.seed, progress)
            if frames is not None:  # every frame's cluster, not only the sample's
                s = frames.score
                _write_assignments(stage / "assignments.csv", s.ids, s.item, s.row, s.labels, clusters)
    return result


def _fit_seeds(fit: Points, score: Points, cfg: ClusterConfig, k: int, args: dict,
               progress) -> tuple[list[dict], tuple[ClusterModel, np.ndarray]]:
    """Metrics of each seed's run, and the first seed's (model, clusters): the run described in detail and drawn."""
    per_seed, runs = [], []
    for i in range(cfg.seeds):
        model = ClusterModel(k=k, random_state=cfg.seed + i, **args)
        metrics, clusters = _seed_run(model, fit, score, cfg.seed + i)
        per_seed.append({"seed": cfg.seed + i, **metrics})
        runs.append((model, clusters))
        progress("fit", i + 1, cfg.seeds)
    return per_seed, runs[0]


def _describe(config: dict, per_seed: list[dict], model: ClusterModel, clusters: np.ndarray, score: Points,
              every: Everything, sweep: list[dict] | None) -> dict:
    """metrics.json: seed means and stds, the first seed's clusters (of every point) and retrieval, the sweep, the
    config; the clips nearest each centroid are found among `score`'s points (a sample, for streamed frames)."""
    mean, std = _mean_std(per_seed)
    labelled = bool((every.labels != "").any())
    clip_mask = score.clip_labels != ""
    retrieval = (retrieval_precision(model.embed(score.clip_X)[clip_mask], score.clip_labels[clip_mask].astype(str))
                 if labelled else {})
    return {
        "kind": "cluster", "head": "kmeans", "store": config["store"], "backbone": config["backbone"],
        "fingerprint": config["fingerprint"], "split": config["split"],
        "summary": {key: mean[key] for key in (HEADLINE if labelled else ("inertia", "silhouette"))},
        "metrics": mean, "std": std, "per_seed": per_seed, "retrieval": retrieval,
        "clusters": {
            "sizes": per_seed[0]["sizes"],
            "nearest_ids": _nearest_clips(model, model.embed(score.X), score),
            "majority_label": _majority_labels(every.labels, clusters, config["k"]) if labelled else None,
        },
        "sweep": sweep,
        "n_items": len(score.ids), "n_points": len(every.labels), "n_fit_points": len(every.fit_labels),
        "n_unlabelled": int((every.labels == "").sum()),
        "config": config, "plots": [],
    }


def _load_points(store_path, cfg: ClusterConfig,
                 progress) -> tuple[Points, Points, dict, StreamedFrames | None]:
    """(points to score, points to fit on (the same object when they coincide), what the store says of itself,
    the streamed frames or None). Rows larger than --memory-budget stream: pooled clip by clip at video level,
    and at frame level the Points are a sample of the StreamedFrames."""
    store = open_store(store_path)
    score_ids, fit_ids = _select_ids(store, cfg.split, cfg.fit_split)
    budget = budget_bytes(cfg.memory_budget)
    stream = rows_bytes(store, score_ids + (fit_ids or [])) > budget
    progress("load", 0, 1)
    frames = None
    if stream and cfg.level == "frame":
        if cfg.k_range or cfg.pca is not None:
            raise ClusterError(f"{'--k-range' if cfg.k_range else '--pca'} at --level frame needs every frame in "
                               f"memory, and they exceed --memory-budget {cfg.memory_budget}: raise it, or use "
                               "--level video")
        score, fit, frames = _stream_frames(store, score_ids, fit_ids, cfg, budget)
    else:
        score = _points(store, score_ids, cfg, budget if stream else None)
        fit = score if fit_ids is None else _points(store, fit_ids, cfg, budget if stream else None)
    progress("load", 1, 1)
    info = {"fingerprint": store.fingerprint, "backbone": store.config.backbone, "weights": store.config.weights,
            "store_config": store.config.to_attrs(), "data_source": "stream" if stream else "memory"}
    return score, fit, info, frames


def _points(store, ids: list[str], cfg: ClusterConfig, budget: int | None) -> Points:
    """The points of `ids`: from the rows in memory, or (video level, with a budget) pooled as they stream by."""
    if budget is None:
        return make_points(finite_rows(store, store.load_all(ids)), cfg.level, cfg.pool)
    return video_points(ids, normalize(pooled_clips(store, ids, cfg.pool, budget)), _first_labels(store, ids))


def _first_labels(store, ids: list[str]) -> np.ndarray:
    return np.array([(store.meta(v).labels or [""])[0] for v in ids], dtype=object)


def _stream_frames(store, score_ids: list[str], fit_ids: list[str] | None, cfg: ClusterConfig,
                   budget: int) -> tuple[Points, Points, StreamedFrames]:
    """Frames past the budget: (a seeded sample of the scored frames, of the fitted ones, all of them streamed)."""
    def sample(stream: FrameStream, ids: list[str]) -> Points:
        where, X = stream.sample(sample_size(len(stream), store.dim, budget), cfg.seed)
        clip_X = normalize(pooled_clips(store, ids, cfg.pool, budget))
        return Points(X, stream.labels[where], stream.item[where], stream.row[where], ids, clip_X,
                      _first_labels(store, ids))

    score = frame_stream(store, score_ids, budget)
    fit = score if fit_ids is None else frame_stream(store, fit_ids, budget)
    score_points = sample(score, score_ids)
    return score_points, score_points if fit is score else sample(fit, fit_ids), StreamedFrames(score, fit)


def _fit_seeds_streamed(frames: StreamedFrames, fit: Points, score: Points, cfg: ClusterConfig, k: int,
                        progress) -> tuple[list[dict], tuple[ClusterModel, np.ndarray]]:
    """_fit_seeds for streamed frames: each seed fit by `fit_stream` from the sample `fit`, every frame scored in
    one more pass (the silhouette on the sample `score`); the first seed's model and clusters of every frame."""
    per_seed, first = [], None
    for i in range(cfg.seeds):
        seed = cfg.seed + i
        model = ClusterModel(k=k, n_init=cfg.n_init, minibatch=True, random_state=seed)
        model.fit_stream(fit.X, frames.fit.blocks)
        clusters, inertia = _predict_stream(model, frames.score)
        metrics = _run_metrics(inertia, silhouette(score.X, model.predict(score.X), seed), frames.score.labels,
                               clusters, k)
        per_seed.append({"seed": seed, **metrics})
        first = first or (model, clusters)
        progress("fit", i + 1, cfg.seeds)
    return per_seed, first


def _predict_stream(model: ClusterModel, frames: FrameStream) -> tuple[np.ndarray, float]:
    """(cluster of every frame (n,), inertia) in one pass over the blocks."""
    clusters, inertia = [], 0.0
    for block in frames.blocks():
        dist = model.kmeans_.transform(block)  # (n, k)
        clusters.append(dist.argmin(1).astype(np.int32))
        inertia += float((dist.min(1) ** 2).sum())
    return np.concatenate(clusters), inertia


def _resolve_k(cfg: ClusterConfig, every: Everything, dim: int) -> tuple[int, str]:
    """(k, where it came from), checked against the points fitted on."""
    k, source, pca, n_fit = cfg.k, "given", cfg.pca, len(every.fit_labels)
    if k is None:
        fit_labels = set(every.fit_labels) - {""}
        if not fit_labels:
            raise ClusterError("the items have no labels, so k cannot be inferred: pass --k N")
        k, source = len(fit_labels), "labels"
        if not 2 <= k <= n_fit:  # no --k was given: say where this k came from
            raise ClusterError(f"k defaults to the number of labels, {k}, which is out of range: it must be between "
                               f"2 and the {n_fit} points fitted on; pass --k N")
    _check_k(k, n_fit)
    if pca is not None and pca > min(n_fit, dim):
        raise ClusterError(f"--pca {pca} is too large: at most {min(n_fit, dim)} components "
                           f"({n_fit} points of dimension {dim})")
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
    _write_assignments(out / "assignments.csv", score.ids, score.item, score.row, score.labels, clusters)
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
    write_json(out / "config.json", result["config"])
    write_json(out / "metrics.json", result)


def _write_assignments(path: Path, ids: list[str], item: np.ndarray, row: np.ndarray, labels: np.ndarray,
                       clusters: np.ndarray) -> None:
    """assignments.csv: each point's clip id, row within the clip, label and cluster."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "row", "label", "cluster"])
        for i in range(len(clusters)):
            w.writerow([ids[item[i]], int(row[i]), labels[i], int(clusters[i])])


def _write_xy(path: Path, score: Points, xy: np.ndarray, method: str) -> None:
    """The scatter's 2-D positions, one row per point (what `explain.thumbnails` draws frames at)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "row", "label", "x", "y", "method"])
        for i in range(len(xy)):
            w.writerow([score.ids[score.item[i]], int(score.row[i]), score.labels[i], f"{xy[i, 0]:.6g}",
                        f"{xy[i, 1]:.6g}", method])


# -- the 2-D map of the points ---------------------------------------------------------------------------
def embed_2d(Z: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """(n, 2) seeded t-SNE (after PCA to 50 dims) for at most TSNE_MAX_POINTS points, else PCA."""
    if method == "tsne" and 4 <= len(Z) <= TSNE_MAX_POINTS:
        X = PCA(50, random_state=seed).fit_transform(Z) if min(Z.shape) > 50 else Z
        perplexity = min(30.0, (len(Z) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X), "t-SNE"
    return PCA(2, random_state=seed).fit_transform(Z), "PCA"
