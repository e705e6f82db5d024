"""Fusion of two views of the same videos: late (average the runs' probabilities) and feature-level (concat).

Late fusion recomputes each run's test probabilities from its head and store (runs keep no predictions), keeps
the test clips every run has, and scores the weighted mean of the probabilities. The result is a run directory
(metrics.json with the fused and each run's own metrics on the same clips, config.json, confusion.png) that
`runs` lists; it has no head.pt, so evaluate/predict do not apply to it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from featstore import StoreConfig, open_store
from heads.config import FUSE_MODES
from heads.data import Cache, batches, encode_targets, load_cache
from heads.metrics import HEADLINE
from heads.models import HeadError
from heads.plots import plot_confusion
from heads.run import check_store, fit_cache, load_run
from heads.rundir import check_run_dir, staged_run, write_json
from heads.train import TrainConfig, evaluate, probabilities, score


@dataclass
class RunProbs:
    """One run's probabilities on its test clips."""
    run: str
    ids: list[str]
    probs: np.ndarray        # (N, C)
    labels: list[str]
    task: str
    threshold: float
    head: str
    backbone: str | None
    store: str
    config: StoreConfig      # the store's: its sampling and modality


def test_probabilities(run_dir: str | Path) -> tuple[RunProbs, Cache]:
    """Probabilities of a run's head on the test clips recorded in its splits.json, and those clips."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists() and not (run_dir / "head.pt").exists():
        kind = json.loads((run_dir / "metrics.json").read_text()).get("kind")
        if kind in ("repeated", "sweep", "fusion"):
            raise HeadError(f"{run_dir} is a {kind} run without a head of its own: fuse one of its member runs "
                            "(e.g. its seed-0/ or best/seed-0/)")
    model, ckpt = load_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    store = open_store(config["store"])
    check_store(store, ckpt, run_dir)
    ids = json.loads((run_dir / "splits.json").read_text())["test"]
    if not ids:
        raise HeadError(f"run {run_dir} has an empty test split: nothing to fuse")
    cache = load_cache(store, ids)
    logits, _, _ = evaluate(model, batches(cache, None, np.arange(len(cache)), 256,
                                           ckpt["train_config"]["max_frames"]))
    return RunProbs(str(run_dir), cache.ids, probabilities(logits, ckpt["task"]), ckpt["labels"], ckpt["task"],
                    float(ckpt["threshold"]), ckpt["train_config"]["head"], store.config.backbone,
                    str(store.path), store.config), cache


# TSN's two-stream late fusion weighs the flow stream 1.5 to the RGB stream's 1 (Wang et al., ECCV 2016, "Network
# testing")
FLOW_WEIGHT = 1.5


def default_weights(configs: list[StoreConfig]) -> list[float] | None:
    """The weights `fuse` uses without --weights: TSN's 1 (RGB) : 1.5 (flow) where the runs mix the two streams,
    else None (equal)."""
    flows = [c.is_flow for c in configs]
    if all(flows) or not any(flows):
        return None
    return [FLOW_WEIGHT if f else 1.0 for f in flows]


def check_weights(weights: list[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=float)
    if len(w) != n or (w < 0).any() or w.sum() <= 0:
        raise HeadError(f"--weights {','.join(map(str, weights))}: give {n} non-negative numbers, not all 0, "
                        f"one per run (e.g. {','.join(['0.5'] * n) if n == 2 else ','.join(['1'] * n)})")
    return w / w.sum()


def parse_weights(text: str | None) -> list[float] | None:
    """--weights 0.7,0.3 as numbers (checked against the runs by `check_weights`)."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise HeadError(f"--weights expects comma-separated numbers such as 0.5,0.5, got {text!r}") from None


def fuse_runs(run_dirs: list[str | Path], out_dir: str | Path, weights: list[float] | None = None, *,
              force: bool = False) -> dict:
    """Late fusion: the weighted mean of the runs' probabilities on their common test clips, scored and written.

    Without `weights`, runs that mix RGB and flow stores weigh 1 (RGB) : 1.5 (flow), as TSN's two streams; others
    weigh alike. Runs on stores of different sampling are refused (`check_same_sampling`).
    `out_dir` must be absent, empty or a fuse run (replaced whole) unless `force` (see heads.rundir)."""
    start = time.perf_counter()
    check_run_dir(Path(out_dir), "fuse", force)  # before the work: a refusal must not cost it
    if len(run_dirs) < 2:
        raise HeadError("fuse needs at least two runs")
    check_weights(weights, len(run_dirs))  # a bad --weights is refused before the runs are scored
    loaded = [test_probabilities(r) for r in run_dirs]
    runs = [p for p, _ in loaded]
    _check_compatible(runs)
    w = check_weights(weights if weights is not None else default_weights([r.config for r in runs]), len(runs))
    common = sorted(set.intersection(*(set(r.ids) for r in runs)))
    if not common:
        raise HeadError("the runs share no test clip (fusion averages predictions on the same clips): "
                        "fuse runs trained on the same videos")
    first, cache = runs[0], loaded[0][1]
    rows = [{vid: i for i, vid in enumerate(r.ids)} for r in runs]
    probs = [r.probs[[row[v] for v in common]] for r, row in zip(runs, rows)]
    where = {vid: i for i, vid in enumerate(cache.ids)}
    y = encode_targets([cache.labels[where[v]] for v in common], first.labels, first.task).numpy()
    threshold = float(np.dot(w, [r.threshold for r in runs]))
    fused = score(first.task, y, sum(wi * p for wi, p in zip(w, probs)), first.labels, threshold)
    alone = {r.run: score(first.task, y, p, first.labels, r.threshold) for r, p in zip(runs, probs)}
    with staged_run(out_dir, "fuse", force) as out:
        return _write_fusion(out, runs, w, fused, alone, common, start)


def check_same_sampling(a: StoreConfig, b: StoreConfig, name_a: str, name_b: str, what: str) -> None:
    """Refuse two stores whose rows sample other moments (different every/frames/fps/max_frames/clip settings)."""
    diffs = a.sampling_diffs(b)
    if diffs:
        raise HeadError(f"{what} needs stores of the same sampling; {name_a} and {name_b} differ in "
                        f"{'; '.join(diffs)}: extract both with the same --every/--frames/--fps/--max-frames "
                        "and clip settings")


def _check_compatible(runs: list[RunProbs]) -> None:
    first = runs[0]
    for r in runs[1:]:
        if r.store != first.store:
            check_same_sampling(first.config, r.config, first.store, r.store, f"fuse {first.run} {r.run}")
        if r.task != first.task:
            raise HeadError(f"cannot fuse a {first.task} run ({first.run}) with a {r.task} run ({r.run})")
        if r.labels != first.labels:
            only_a = sorted(set(first.labels) - set(r.labels))[:5]
            only_b = sorted(set(r.labels) - set(first.labels))[:5]
            raise HeadError(f"runs {first.run} and {r.run} have different label sets (only in the first: "
                            f"{only_a or '-'}; only in the second: {only_b or '-'}): fuse runs of the same classes")


def _write_fusion(out: Path, runs: list[RunProbs], w: np.ndarray, fused: dict, alone: dict, common: list[str],
                  start: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    first = runs[0]
    name = HEADLINE[first.task]
    metrics = {
        "kind": "fusion", "fuse": "late", "runs": [r.run for r in runs], "weights": w.tolist(),
        "task": first.task, "head": "+".join(r.head for r in runs),
        "backbone": "+".join(dict.fromkeys(str(r.backbone) for r in runs)), "split": "test",
        "eval_split": "test", "metric_name": name, "metric": fused[name], "test": fused, "val": None,
        "alone": alone, "n_common": len(common), "n_left_out": {r.run: len(r.ids) - len(common) for r in runs},
        "labels": first.labels, "store": first.store, "seconds": time.perf_counter() - start,
    }
    write_json(out / "config.json", {"fuse": "late", "runs": metrics["runs"], "weights": metrics["weights"]})
    write_json(out / "metrics.json", metrics)
    (out / "test_ids.json").write_text(json.dumps(common) + "\n")
    if first.task == "multiclass":
        plot_confusion(fused["confusion"], first.labels, out / "confusion.png",
                       f"late fusion of {len(runs)} runs on test")
    return metrics


# -- feature fusion: two stores of the same videos, concatenated -------------------------------------------------
POOLED_HEADS = ("linear", "mlp")  # order-blind heads: one pooled row per clip from each store suffices


@dataclass
class FusedStore:
    """Stands in for a Store where a run records its features' origin: both stores' configs."""
    path: str
    fingerprint: str
    config: StoreConfig
    fingerprint_keys: list[str]
    dim: int


@dataclass
class FusionReport:
    stores: list[str]
    n_common: int
    only_in: dict[str, list[str]]   # store -> ids it alone has (left out)
    label_mismatches: int           # common ids whose labels differ (the first store's are used)


def fused_cache(store_paths: list[str | Path], head: str, mode: str = "concat") -> tuple[FusedStore, Cache,
                                                                                          FusionReport]:
    """One cache of the clips both stores hold: pooled (linear/mlp) or B aligned to A's frames by time_s."""
    if mode not in FUSE_MODES:
        raise HeadError(f"--fuse {mode!r} is not a fusion; choose one of: {', '.join(FUSE_MODES)}")
    if len(store_paths) != 2:
        raise HeadError(f"--fuse {mode} takes exactly two stores (got {len(store_paths)})")
    a, b = (open_store(p) for p in store_paths)
    check_same_sampling(a.config, b.config, str(a.path), str(b.path), f"--fuse {mode}")
    ids_a, ids_b = a.ids(), set(b.ids())
    common = [v for v in ids_a if v in ids_b]
    if not common:
        raise HeadError(f"stores {a.path} and {b.path} share no video id: --fuse needs the same videos embedded "
                        "twice (extract one source with two backbones)")
    ca, cb = load_cache(a, common), load_cache(b, common)
    common = [v for v in ca.ids if v in set(cb.ids)]  # clips with frames in both
    ca, cb = load_cache(a, common), load_cache(b, common)
    assert ca.ids == cb.ids  # load_cache keeps the order of the ids it is given
    report = FusionReport([str(a.path), str(b.path)], len(common),
                          {str(a.path): sorted(set(ids_a) - set(common)), str(b.path): sorted(ids_b - set(common))},
                          sum(x != y for x, y in zip(ca.labels, cb.labels)))
    fa, fb = _unit_scale(ca.features), _unit_scale(cb.features)
    if head in POOLED_HEADS:
        rows = torch.cat([_pool(fa, ca), _pool(fb, cb)], dim=1)
        lengths = torch.ones(len(common), dtype=torch.int64)
    else:
        picks = torch.cat([_nearest(a.time_s(v), b.time_s(v)) + int(cb.offsets[i]) for i, v in enumerate(common)])
        rows, lengths = torch.cat([fa, fb[picks]], dim=1), ca.lengths
    cache = Cache(rows, torch.cumsum(lengths, 0) - lengths, lengths, ca.ids, ca.labels, ca.groups, ca.splits)
    return _fused_store(a, b, mode, int(rows.shape[1])), cache, report


def _unit_scale(features: torch.Tensor) -> torch.Tensor:
    """Divide a store's features by one number (their RMS per-dimension std): two backbones' features then weigh
    alike in the concatenation, whatever their scales (label-free, so it may use every clip)."""
    f = features.float()
    return f / f.std(0).pow(2).mean().sqrt().clamp_min(1e-8)


def _pool(features: torch.Tensor, cache: Cache) -> torch.Tensor:
    """(V, D) mean over each clip's frames."""
    clip = torch.repeat_interleave(torch.arange(len(cache)), cache.lengths)
    sums = torch.zeros(len(cache), features.shape[1]).index_add_(0, clip, features)
    return sums / cache.lengths[:, None].float()


def _nearest(t_a: np.ndarray, t_b: np.ndarray) -> torch.Tensor:
    """For each time in t_a, the index of the nearest time in t_b (both ascending; ties: the earlier)."""
    right = np.clip(np.searchsorted(t_b, t_a), 1, len(t_b) - 1) if len(t_b) > 1 else np.zeros(len(t_a), int)
    left = np.maximum(right - 1, 0)
    take_right = np.abs(t_b[right] - t_a) < np.abs(t_a - t_b[left])
    return torch.from_numpy(np.where(take_right, right, left).astype(np.int64))


def _fused_store(a, b, mode: str, dim: int) -> FusedStore:
    import hashlib

    fp = hashlib.sha256(f"{mode}:{a.fingerprint}:{b.fingerprint}".encode()).hexdigest()[:16]
    config = a.config.with_extra(backbone=f"{a.config.backbone}+{b.config.backbone}", fuse=mode,
                                 fused_stores=[{"store": str(a.path), **a.config.to_attrs()},
                                               {"store": str(b.path), **b.config.to_attrs()}])
    return FusedStore(str(a.path), fp, config, list(a.fingerprint_keys), dim)


def fit_fused(store_paths: list[str | Path], cfg: TrainConfig, out_dir: str | Path, mode: str = "concat",
              on_epoch: Callable[[dict], None] | None = None, *, force: bool = False) -> dict:
    """fit-head on the concatenated features of two stores of the same videos (see `fused_cache`).

    `out_dir` must be absent, empty or a fit-head run (replaced whole) unless `force` (see heads.rundir)."""
    start = time.perf_counter()
    with staged_run(out_dir, "fit-head", force) as out:
        return _fit_fused(store_paths, cfg, out, mode, on_epoch, start)


def _fit_fused(store_paths: list[str | Path], cfg: TrainConfig, out: Path, mode: str,
               on_epoch: Callable[[dict], None] | None, start: float) -> dict:
    store, cache, report = fused_cache(store_paths, cfg.head, mode)
    metrics = fit_cache(store, cache, cfg, out, on_epoch)
    metrics["fusion"] = {"mode": mode, "stores": report.stores, "n_common": report.n_common,
                         "left_out": {s: len(v) for s, v in report.only_in.items()},
                         "left_out_examples": {s: v[:10] for s, v in report.only_in.items()},
                         "label_mismatches": report.label_mismatches,
                         "pooled": cfg.head in POOLED_HEADS}
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics
