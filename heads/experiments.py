"""Experiments on one cache loaded once: repeated seeds, group-aware K-fold CV, and hyperparameter sweeps.

A repeated run is a directory of ordinary runs (`seed-3/`, `fold-1/`, each usable by evaluate/predict) plus
a metrics.json holding the mean and the sample std (ddof=1) of every numeric metric over them:

    metrics.json   {"kind": "repeated", "mode": "seeds"|"folds", "val": mean, "val_std": std, "test"/"cv": ...}

A sweep trains every cell of a grid (x seeds), chooses the cell with the best mean validation metric, and only
then scores that cell on test: test is read once, by the chosen cell, so it cannot steer the choice.

    sweep.csv      one row per cell: its values, val mean/std, seconds; the chosen row also has test
    heatmap.png    mean val metric over a 2-D grid
    best/seed-N/   the chosen cell's runs
"""
from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from featstore import Store, open_store
from heads.budget import budget_bytes
from heads.data import Source, carve_val, cv_folds, load_cache, make_splits
from heads.metrics import HEADLINE, mean_std
from heads.models import HeadError
from heads.plots import plot_heatmap
from heads.rundir import staged_run
from heads.run import cache_targets, finish_run, score_split
from heads.rundir import write_json
from heads.train import TrainConfig, train_head

# TrainConfig fields that say where or how to run, not what to learn: no grid axis
NOT_HYPERPARAMETERS = ("device", "seed", "task", "split", "memory_budget")


@dataclass
class Tagged:
    """An on_epoch callback that adds which member (seed-2, fold-0, lr=0.001 hidden=64 seed 1) is training."""
    inner: Callable[[dict], None] | None
    member: str

    def __call__(self, row: dict) -> None:
        if self.inner is not None:
            self.inner({**row, "member": self.member})


def summarize(dicts: list[dict]) -> tuple[dict, dict]:
    """(mean, sample std) of every numeric value the dicts share; std is 0 for a single dict."""
    keys = [k for k, v in dicts[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(d.get(k), (int, float)) for d in dicts)]
    mean, std = {}, {}
    for k in keys:
        mean[k], std[k] = mean_std([d[k] for d in dicts])
    return mean, std


# -- repeated seeds and folds ----------------------------------------------------------------------
def fit_seeds(store_path: str | Path, cfg: TrainConfig, out_dir: str | Path, seeds: int,
              on_epoch: Callable[[dict], None] | None = None, *, force: bool = False) -> dict:
    """Train with seeds cfg.seed .. cfg.seed+seeds-1: each seed its own init, shuffling and validation carving;
    the test split stays the same (the store's, or the one carved with cfg.seed).

    `out_dir` must be absent, empty or a --seeds run (replaced whole) unless `force` (see heads.rundir)."""
    if seeds < 1:
        raise HeadError(f"--seeds {seeds} must be at least 1")
    start = time.perf_counter()
    with staged_run(out_dir, "fit-head --seeds", force) as out:
        store, cache = _load(store_path, cfg)
        members = []
        for s in range(cfg.seed, cfg.seed + seeds):
            splits = make_splits(cache, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed, val_seed=s)
            name = f"seed-{s}"
            members.append((name, _fit_member(store, cache, replace(cfg, seed=s), out / name, splits,
                                              Tagged(on_epoch, name), "test")))
        return _write_repeated(out, store, cfg, members, "seeds", start)


def fit_folds(store_path: str | Path, cfg: TrainConfig, out_dir: str | Path, folds: int,
              on_epoch: Callable[[dict], None] | None = None, *, force: bool = False) -> dict:
    """K-fold cross-validation on the training split (train + val), group-aware; test is never read.
    Each fold early-stops on a validation part carved from its own training folds and is scored on the held fold.

    `out_dir` must be absent, empty or a --folds run (replaced whole) unless `force` (see heads.rundir)."""
    if folds < 2:
        raise HeadError(f"--folds {folds} must be at least 2")
    start = time.perf_counter()
    with staged_run(out_dir, "fit-head --folds", force) as out:
        store, cache = _load(store_path, cfg)
        base = make_splits(cache, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed)
        pool = np.sort(np.concatenate([base["train"], base["val"]]))
        members = []
        for i, (train, held) in enumerate(cv_folds(cache, pool, folds, cfg.seed)):
            fit, val = carve_val(cache, train, cfg.val_frac, cfg.seed + i)
            name = f"fold-{i}"
            members.append((name, _fit_member(store, cache, cfg, out / name, {"train": fit, "val": val, "test": held},
                                              Tagged(on_epoch, name), "cv")))
        return _write_repeated(out, store, cfg, members, "folds", start)


def _load(store_path: str | Path, cfg: TrainConfig) -> tuple[Store, Source]:
    store = open_store(store_path)
    return store, load_cache(store, budget=budget_bytes(cfg.memory_budget))


def _fit_member(store: Store, cache: Source, cfg: TrainConfig, out: Path, splits: dict, on_epoch: Callable,
                eval_split: str) -> dict:
    task, labels, targets = cache_targets(store, cache, cfg.task)
    result = train_head(cache, targets, task, labels, splits, cfg, on_epoch)
    return finish_run(store, cache, targets, task, labels, splits, cfg, result, out, eval_split)


def _write_repeated(out: Path, store: Store, cfg: TrainConfig, members: list[tuple[str, dict]], mode: str,
                    start: float) -> dict:
    """The aggregate metrics.json (and config.json) of a repeated run; members keep their own directories."""
    runs = [m for _, m in members]
    first = runs[0]
    held = "cv" if mode == "folds" else "test"
    metrics = {"kind": "repeated", "mode": mode, "n": len(runs), "members": [n for n, _ in members],
               **{k: first[k] for k in ("task", "head", "split", "metric_name", "store", "store_fingerprint",
                                        "backbone", "n_params", "labels")}}
    metrics["val"], metrics["val_std"] = summarize([m["val"] for m in runs])
    metrics["test"] = metrics["test_std"] = None
    if all(m["test"] for m in runs):
        metrics[held], metrics[f"{held}_std"] = summarize([m["test"] for m in runs])
    metrics["eval_split"] = held if metrics.get(held) else "val"
    shown, spread = metrics[metrics["eval_split"]], metrics[metrics["eval_split"] + "_std"]
    metrics["metric"], metrics["metric_std"] = shown[first["metric_name"]], spread[first["metric_name"]]
    metrics["per_member"] = {n: m["metric"] for n, m in members}
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "config.json", {"train": vars(cfg), "mode": mode, "members": metrics["members"],
                                     "store": metrics["store"], "store_config": store.config.to_attrs()})
    write_json(out / "metrics.json", metrics)
    return metrics


# -- sweeps ----------------------------------------------------------------------------------------
def grid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.name not in NOT_HYPERPARAMETERS]


def parse_grid(specs: list[str], base: TrainConfig) -> dict[str, list]:
    """{key: values} from 'key=v1,v2' specs; values typed by TrainConfig's field and checked by it."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in grid_keys():
            raise HeadError(f"--grid {spec!r}: unknown key {key!r}; use KEY=V1,V2 with KEY one of: "
                            f"{', '.join(grid_keys())}")
        if key in grid:
            raise HeadError(f"--grid {key} is given twice: list all its values in one --grid {key}=V1,V2")
        values = [_parse_value(key, types[key], v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise HeadError(f"--grid {spec!r}: no values; use {key}=V1,V2")
        for v in values:
            replace(base, **{key: v})  # TrainConfig's own checks: choices, ranges
        grid[key] = values
    if not grid:
        raise HeadError(f"a sweep needs at least one --grid KEY=V1,V2 (keys: {', '.join(grid_keys())})")
    return grid


def _parse_value(key: str, kind: str, text: str):
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise HeadError(f"--grid {key}: {text!r} is not a{'n' if kind == 'int' else ''} {kind}") from None
    return text


@dataclass
class Cell:
    params: dict            # the grid values of this cell
    val: dict               # mean val metrics over seeds
    val_std: dict
    seconds: float
    results: list           # TrainResult per seed (kept for the best cell only)


def sweep(store_path: str | Path, cfg: TrainConfig, grid: dict[str, list], out_dir: str | Path, seeds: int = 1,
          on_progress: Callable[[dict], None] | None = None, *, force: bool = False) -> dict:
    """Train every cell of `grid` on one cache, choose by mean val metric, score the chosen cell on test once.

    `out_dir` must be absent, empty or a sweep (replaced whole) unless `force` (see heads.rundir)."""
    start = time.perf_counter()
    with staged_run(out_dir, "sweep", force) as out:
        store, cache = _load(store_path, cfg)
        task, labels, targets = cache_targets(store, cache, cfg.task)
        carvings = [make_splits(cache, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed, val_seed=s)
                    for s in range(cfg.seed, cfg.seed + seeds)]  # every cell sees the same carvings
        metric_name = HEADLINE[task]
        cells, best = _train_cells(cache, targets, task, labels, carvings, cfg, grid, metric_name, on_progress)
        if on_progress is not None:
            on_progress({"stage": "test", "done": 1, "total": 1, "params": best.params})
        chosen = _finish_best(store, cache, targets, task, labels, carvings, replace(cfg, **best.params), best, out)
        return _write_sweep(out, store, cfg, grid, cells, best, chosen, metric_name, start)


def _train_cells(cache: Source, targets, task: str, labels: list[str], carvings: list[dict], cfg: TrainConfig,
                 grid: dict[str, list], metric_name: str, on_progress) -> tuple[list[Cell], Cell]:
    """Every cell of the grid trained on the carvings; (all cells, the best by mean val metric)."""
    cells, best = [], None
    combos = list(itertools.product(*grid.values()))
    for n, values in enumerate(combos):
        params = dict(zip(grid, values))
        cell = _train_cell(cache, targets, task, labels, carvings, replace(cfg, **params), params)
        cells.append(cell)
        if best is None or cell.val[metric_name] > best.val[metric_name]:  # ties: the earlier cell
            if best is not None:
                best.results = []  # only the leader's models are kept: memory stays at one cell's
            best = cell
        else:
            cell.results = []
        if on_progress is not None:
            on_progress({"stage": "cell", "done": n + 1, "total": len(combos), "params": params,
                         "val": cell.val[metric_name]})
    return cells, best


def _train_cell(cache: Source, targets, task: str, labels: list[str], carvings: list[dict], cfg: TrainConfig,
                params: dict) -> Cell:
    t0 = time.perf_counter()
    results, vals = [], []
    for i, splits in enumerate(carvings):
        c = replace(cfg, seed=cfg.seed + i)
        r = train_head(cache, targets, task, labels, splits, c)
        results.append(r)
        vals.append(score_split(r.early, cache, targets, splits["val"], task, labels, r.threshold, c.max_frames))
    mean, std = summarize(vals)
    return Cell(params, mean, std, time.perf_counter() - t0, results)


def _finish_best(store: Store, cache: Source, targets, task: str, labels: list[str], carvings: list[dict],
                 cfg: TrainConfig, best: Cell, out: Path) -> list[tuple[str, dict]]:
    """The chosen cell's runs, scored on test for the first and only time, written under out/best/."""
    members = []
    for i, (splits, result) in enumerate(zip(carvings, best.results)):
        c = replace(cfg, seed=cfg.seed + i)
        name = f"seed-{c.seed}"
        members.append((name, finish_run(store, cache, targets, task, labels, splits, c, result,
                                         out / "best" / name)))
    return members


def _write_sweep(out: Path, store: Store, cfg: TrainConfig, grid: dict, cells: list[Cell], best: Cell,
                 chosen: list[tuple[str, dict]], metric_name: str, start: float) -> dict:
    metrics = _write_repeated(out, store, replace(cfg, **best.params), chosen, "seeds", start)
    metrics.update(kind="sweep", grid=grid, chosen=best.params, n_cells=len(cells),
                   members=[f"best/{n}" for n, _ in chosen])
    _write_table(out / "sweep.csv", grid, cells, best, metrics, metric_name)
    if len(grid) == 2:
        (a, xs), (b, ys) = grid.items()
        values = np.array([[c.val[metric_name] for c in cells[i * len(ys):(i + 1) * len(ys)]]
                           for i in range(len(xs))])
        plot_heatmap(values, a, xs, b, ys, out / "heatmap.png", f"val {metric_name} (mean over seeds)")
    config = json.loads((out / "config.json").read_text())
    write_json(out / "config.json", {**config, "grid": grid, "chosen": best.params})
    write_json(out / "metrics.json", metrics)
    return metrics


def _write_table(path: Path, grid: dict, cells: list[Cell], best: Cell, metrics: dict, metric_name: str) -> None:
    test_cols = [f"test_{metric_name}", f"test_{metric_name}_std"]
    cols = [*grid, f"val_{metric_name}", f"val_{metric_name}_std", "seconds", "chosen", *test_cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for c in cells:
            row = {**c.params, f"val_{metric_name}": c.val[metric_name],
                   f"val_{metric_name}_std": c.val_std[metric_name], "seconds": round(c.seconds, 2),
                   "chosen": c is best}
            if c is best and metrics.get("test"):
                row.update({test_cols[0]: metrics["test"][metric_name], test_cols[1]: metrics["test_std"][metric_name]})
            w.writerow(row)
