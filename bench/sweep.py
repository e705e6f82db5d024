"""A hyperparameter sweep on a UCF101-sized cache: wall time and peak RSS, the cache loaded once. Run by hand:

    python bench/sweep.py [--store /tmp/framecache_bench/heads_store] [--epochs 3] [--seeds 3] [--head linear]
                          [--clips 9537] [--no-refit]

Uses (and writes once, in a child process so it does not count in this one's RSS) the synthetic store of
bench/heads.py: 9,537 clips x 25 frames x 2048-d float16, ~1 GB (`--clips N`: the same recipe, N clips, in
its own folder next to it). Sweeps 12 cells (lr x weight_decay) x
`--seeds` seeds with `cli.py sweep`'s library call, and reports: seconds for the sweep, seconds per trained
model, one `load_cache` on its own (what each cell would pay if it reloaded), RSS after the load and the peak
RSS of the whole sweep (ru_maxrss; a sweep that reloaded per cell would not grow it, but would pay the load
time 36 times). Epochs are capped (`--epochs`) to keep the run minutes long on a 2-core machine; the
per-epoch cost is what scales. Prints the JSON it writes to bench/results/sweep.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from heads.data import load_cache  # noqa: E402
from heads.experiments import sweep  # noqa: E402
from heads.train import TrainConfig  # noqa: E402
from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)

RESULTS = Path(__file__).parent / "results" / "sweep.json"
GRID = {"lr": [1e-3, 3e-3, 1e-2], "weight_decay": [0.0, 0.1, 1.0, 3.0]}


def bench_heads():
    spec = importlib.util.spec_from_file_location("bench_heads", Path(__file__).parent / "heads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class Progress:
    """Records RSS when the first cell finishes (the cache is loaded by then) and the time of every cell."""

    def __init__(self):
        self.rss_after_first_cell, self.cells, self.t0 = None, [], time.perf_counter()

    def __call__(self, p: dict) -> None:
        if p["stage"] == "cell":
            self.rss_after_first_cell = self.rss_after_first_cell or rss_gb()
            self.cells.append(time.perf_counter() - self.t0)
            print(f"cell {p['done']}/{p['total']} {p['params']} val {p['val']:.3f}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path("/tmp/framecache_bench/heads_store"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--head", default="linear")
    ap.add_argument("--clips", type=int, default=9537)
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    recipe = bench_heads()
    if args.clips != recipe.CLIPS:
        recipe.CLIPS = args.clips  # write_store reads the module constant
        args.store = args.store.with_name(f"{args.store.name}_{args.clips}")
    writer = multiprocessing.get_context("fork").Process(target=recipe.write_store, args=(args.store,))  # keeps CLIPS
    writer.start()
    writer.join()
    rss_start = rss_gb()
    t0 = time.perf_counter()
    cache = load_cache(args.store)
    load_seconds = time.perf_counter() - t0
    cache_gb = cache.features.numel() * cache.features.element_size() / 2**30
    del cache
    cfg = TrainConfig(head=args.head, epochs=args.epochs, patience=args.epochs, refit=args.refit)
    progress = Progress()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        metrics = sweep(args.store, cfg, GRID, Path(out) / "sweep", seeds=args.seeds, on_progress=progress)
        seconds = time.perf_counter() - t0
    n_models = len(GRID["lr"]) * len(GRID["weight_decay"]) * args.seeds
    result = {
        "store": str(args.store), "clips": args.clips, "head": args.head, "grid": GRID, "cells": 12, "seeds": args.seeds,
        "models_trained": n_models, "epochs_cap": args.epochs, "refit": cfg.refit,
        "sweep_seconds": seconds, "seconds_per_model": seconds / n_models,
        "load_cache_seconds": load_seconds, "reload_per_model_would_add_seconds": load_seconds * n_models,
        "cache_gb": cache_gb, "rss_start_gb": rss_start, "rss_after_first_cell_gb": progress.rss_after_first_cell,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "chosen": metrics["chosen"], "val_metric_of_chosen": metrics["val"][metrics["metric_name"]],
        "test_metric_of_chosen": metrics["metric"], "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
