"""What the stage-two commands call, for a notebook as much as for cli.py:

    fit(stores, cfg, out)                          one store: a run; several: one trunk, a classifier per store
    fit(stores, cfg, out, fuse="concat")           two stores of the same videos, their features joined
    fit([store], cfg, out, seeds=N | folds=K)      repeated runs of one store: mean ± std over members
    evaluate(run, store, split)                    a run's metrics on a split (a multi-task run: per store)
    predict_files(run, paths)                      files embedded as the run's store was, the head's top labels

Every writer guards its output folder (heads.rundir): absent, empty or a run of the same kind, else `force=True`.
Results are typed by `kind`; their `metrics` are what metrics.json holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from featstore.format import read_header
from heads.config import TrainConfig
from heads.models import MEMORY_HEADS, POOLING_HEADS, HeadError
from heads.rundir import safe_name

FIT_KINDS = ("single", "fused", "multitask", "seeds", "folds")


@dataclass(frozen=True)
class FitResult:
    """A run `fit` wrote: its kind (one of FIT_KINDS), folder and metrics.json."""
    kind: str
    out: Path
    metrics: dict


@dataclass(frozen=True)
class Evaluation:
    """`evaluate`'s answer. kind "single": `metrics` of the run's head on `split`; kind "multitask": `metrics`
    maps each store's name to its metrics. `report` lists the files written with report=True."""
    kind: str
    run: Path
    split: str
    metrics: dict
    report: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Predictions:
    """`predict_files`'s answer. `rows`: per embedded file {"path", "top": [{"label", "prob"} ...]} (a multi-task
    run: {"store", "label": "store:label", "prob"}; multilabel adds "labels" at/above "threshold");
    `failed`: (path, reason) of the files that could not be embedded."""
    rows: list[dict]
    failed: list[tuple[str, str]]


def fit(stores: str | Path | Sequence[str | Path], cfg: TrainConfig, out: str | Path, *, fuse: str | None = None,
        seeds: int | None = None, folds: int | None = None, force: bool = False,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Train heads on one or more stores into the run folder `out` (the shapes are in the module docstring)."""
    stores = [stores] if isinstance(stores, (str, Path)) else list(stores)
    if not stores:
        raise HeadError("give a store: `cli.py fit-head STORE --head linear` (see --help)")
    if (fuse or len(stores) > 1) and (seeds or folds):
        raise HeadError("--seeds/--folds take a single store")
    if seeds and folds:
        raise HeadError("choose one of --seeds (repeated training) and --folds (cross-validation)")
    refuse_pooled(stores, cfg.head)
    out = Path(out)
    if fuse:
        from heads.fusion import fit_fused

        return FitResult("fused", out, fit_fused(stores, cfg, out, fuse, on_epoch, force=force))
    if len(stores) > 1:
        from heads.multitask import fit_multi

        return FitResult("multitask", out, fit_multi(stores, cfg, out, on_epoch, force=force))
    if seeds or folds:
        from heads.experiments import fit_folds, fit_seeds

        if folds:
            return FitResult("folds", out, fit_folds(stores[0], cfg, out, folds, on_epoch, force=force))
        return FitResult("seeds", out, fit_seeds(stores[0], cfg, out, seeds, on_epoch, force=force))
    from heads.run import fit_head

    return FitResult("single", out, fit_head(stores[0], cfg, out, on_epoch, force=force))


def refuse_pooled(stores: Sequence[str | Path], head: str) -> None:
    """A pooled store (`cli.py pool`) has one row per video: heads that read frames in order have none to read."""
    if head in (*POOLING_HEADS, *MEMORY_HEADS):
        return
    for store in map(Path, stores):
        pooled = read_header(store).config.pooled if store.exists() else None  # a missing one: opening names it
        if pooled:
            raise HeadError(f"--head {head} reads a clip's frames in order, but {store} is a pooled store (one "
                            f"--pool {pooled} row per video): give fit-head its source store, or use one of --head "
                            f"{', '.join((*POOLING_HEADS, *MEMORY_HEADS))}")


def evaluate(run: str | Path, store: str | Path | None = None, split: str = "test", *,
             report: bool = False, memory_budget: str | int = "auto") -> Evaluation:
    """Re-score a run's head on `split` of its store or of `store` (extracted with the same settings); with
    `report`, also per-class and mistakes CSVs + PNGs in RUN/report-<split> (see heads.report). A split larger as
    loaded than `memory_budget` (heads.budget) streams from the store's shards."""
    from heads.budget import budget_bytes

    from heads.multitask import evaluate_multi, is_multitask
    from heads.run import load_run, split_metrics, split_predictions

    run = Path(run)
    loaded = load_run(run)
    refuse_fused(loaded[1], run)
    if is_multitask(loaded[1]):
        if report:
            raise HeadError("--report covers single-store runs; evaluate each store's run on its own for a report")
        return Evaluation("multitask", run, split, evaluate_multi(run, split, loaded))
    p = split_predictions(run, store, split, loaded, budget_bytes(memory_budget))
    metrics = split_metrics(p, run, split)
    if not report:
        return Evaluation("single", run, split, metrics)
    from heads.report import write_report

    name = "report-" + ("" if store is None else f"{safe_name(Path(store).stem)}-") + safe_name(split)
    return Evaluation("single", run, split, metrics, write_report(p, run / name, split))


def refuse_fused(ckpt: dict, run: Path) -> None:
    """A --fuse run's features cannot be rebuilt from one store: evaluate and predict refuse it by name."""
    stores = ckpt.get("store_config", {}).get("fused_stores")
    if stores:
        raise HeadError(f"{run} was trained on the features of {' and '.join(s['store'] for s in stores)} joined "
                        "(--fuse): evaluate/predict cannot rebuild them yet; its metrics.json holds val and test")


def predict_files(run: str | Path, paths: Sequence[str | Path], *, top: int = 5, device: str = "auto",
                  weights: str | Path | None = None) -> Predictions:
    """Embed `paths` exactly as the run's store was made (`weights`: the store's weights file if it moved), apply
    the head; per file its `top` labels and, for a multilabel run, every label at/above the run's threshold."""
    from featstore import StoreConfig
    from heads.run import load_run, predict_features
    from pipeline.extract import embed_files

    run = Path(run)
    model, ckpt = load_run(run)
    refuse_fused(ckpt, run)
    records = embed_files([str(p) for p in paths], StoreConfig.from_attrs(ckpt["store_config"]), device,
                          None if weights is None else str(weights))
    ok = [r for r in records if r.status == "ok"]
    probs = predict_features(model, ckpt, [r.features for r in ok]) if ok else np.zeros((0, 0))
    rows = _multitask_rows(ckpt, ok, probs, top) or [
        {"path": r.video_id, "top": [{"label": ckpt["labels"][i], "prob": round(float(p[i]), 4)}
                                     for i in np.argsort(-p)[:top]]} for r, p in zip(ok, probs)]
    if ckpt["task"] == "multilabel":  # the decision the run was scored with: every label at/above its threshold
        for row, p in zip(rows, probs):
            row["labels"] = [ckpt["labels"][i] for i in np.flatnonzero(p >= ckpt["threshold"])]
            row["threshold"] = ckpt["threshold"]
    return Predictions(rows, [(r.video_id, r.error) for r in records if r.status != "ok"])


def _multitask_rows(ckpt: dict, records: list, probs: np.ndarray, top: int) -> list[dict]:
    """predict on a multi-task run: the top labels of each store, named "store:label" ([] for other runs)."""
    from heads.multitask import is_multitask, predict_multi

    if not is_multitask(ckpt):
        return []
    rows = []
    for r, by_store in zip(records, predict_multi(ckpt, probs)):
        shown = [{"store": name, "label": f"{name}:{labels[i]}", "prob": round(float(p[i]), 4)}
                 for name, (labels, p) in by_store.items() for i in np.argsort(-p)[:top]]
        rows.append({"path": r.video_id, "top": shown})
    return rows
