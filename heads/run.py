"""Runs: fit a head on a store into a run directory, load it back, evaluate it, predict with it, list runs.

A run directory holds everything needed to reuse or judge a head, nothing in side files elsewhere:

    config.json    train config, head config, store path, store fingerprint and extraction config
    splits.json    the clip ids of train / val / test
    history.csv    one row per epoch
    metrics.json   {"val": {...}, "test": {...} or null, "task", "head", "store_fingerprint", ...}
    head.pt        torch.save of plain types and tensors only (torch.load(..., weights_only=True) works)
    curves.png, confusion.png (multiclass)
"""
from __future__ import annotations

import csv
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from featstore import LAYOUT_KEYS, Store, StoreConfig, feature_diffs, open_store
from heads.budget import budget_bytes
from heads.data import (Source, batches, build_vocab, cache_from_arrays, detect_task, encode_targets, load_cache,
                        make_splits)
from heads.metrics import HEADLINE
from heads.models import POOLING_HEADS, HeadConfig, HeadError, build_head, count_params, model_device
from heads.plots import plot_confusion, plot_curves
from heads.rundir import check_run_dir, staged_run, write_json
from heads.train import TrainConfig, TrainResult, cpu_state, evaluate, probabilities, score, train_head

RUN_SPLITS = ("train", "val", "test")  # the run's own splits; "all" and split-column names also work
CHECKPOINT_KEYS = ("state_dict", "head_config", "train_config", "labels", "task", "threshold", "store_fingerprint",
                   "store_config")


def fit_head(store_path: str | Path, cfg: TrainConfig, out_dir: str | Path,
             on_epoch: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """Train `cfg.head` on a store, evaluate it on val and test, write the run directory; returns metrics.json.

    `out_dir` must be absent, empty or a fit-head run (replaced) unless `force` (see heads.rundir); the run is
    written beside it and moved in at the end, so an interrupted run leaves no trace and an earlier one intact."""
    start = time.perf_counter()
    check_run_dir(Path(out_dir), "fit-head", force)  # before loading and training: a refusal costs nothing
    store = open_store(store_path)
    cache = load_cache(store, _training_ids(store, cfg), budget=budget_bytes(cfg.memory_budget))
    with staged_run(out_dir, "fit-head", force) as stage:
        metrics = fit_cache(store, cache, cfg, stage, on_epoch)
        metrics["seconds"] = time.perf_counter() - start
        write_json(stage / "metrics.json", metrics)
    return metrics


def _training_ids(store: Store, cfg: TrainConfig) -> list[str] | None:
    """The clips to train on: all (None), or the labelled ones with `skip_unlabelled`. Refuses clips without a
    label for a multiclass head, naming them (a multilabel clip may have none: it is then negative for all)."""
    index = load_cache(store, features=False)
    missing = [vid for vid, labels in zip(index.ids, index.labels) if not labels]
    if not missing:
        return None
    if len(missing) == len(index):
        raise HeadError(f"no clip in {store.path} has a label: give the manifest a label column, then "
                        "`cli.py extract ... --update-meta` (no re-embedding)")
    if cfg.skip_unlabelled:
        return [vid for vid, labels in zip(index.ids, index.labels) if labels]
    if detect_task([ls for ls in index.labels if ls], cfg.task) == "multiclass":
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise HeadError(f"{len(missing)} of {len(index)} clips in {store.path} have an empty label ({shown}): "
                        "fill them in the manifest and run `cli.py extract ... --update-meta`, or pass "
                        "--skip-unlabelled to train on the labelled clips only")
    return None


def cache_targets(store: Store, cache: Source, task: str) -> tuple[str, list[str], torch.Tensor]:
    """(task, label vocabulary, targets) of a loaded store, refusing stores a head cannot learn from."""
    if len(cache) == 0:
        raise HeadError(f"store {store.path} has no clips with features: extract some first")
    task = detect_task(cache.labels, task)
    labels = build_vocab(cache.labels)
    if len(labels) < 2:
        raise HeadError(f"store {store.path} has {len(labels)} label(s) {labels}: a head needs at least 2")
    return task, labels, encode_targets(cache.labels, labels, task)


def fit_cache(store: Store, cache: Source, cfg: TrainConfig, out_dir: str | Path,
              on_epoch: Callable[[dict], None] | None = None, splits: dict[str, np.ndarray] | None = None,
              eval_split: str = "test") -> dict:
    """`fit_head` on a cache already in memory, with given splits if any (`eval_split` names what the
    'test' split is, e.g. 'fold' in cross-validation); writes the run directory and returns its metrics."""
    task, labels, targets = cache_targets(store, cache, cfg.task)
    if splits is None:
        splits = make_splits(cache, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed)
    result = train_head(cache, targets, task, labels, splits, cfg, on_epoch)
    return finish_run(store, cache, targets, task, labels, splits, cfg, result, out_dir, eval_split)


def finish_run(store: Store, cache: Source, targets: torch.Tensor, task: str, labels: list[str],
               splits: dict[str, np.ndarray], cfg: TrainConfig, result: TrainResult, out_dir: str | Path,
               eval_split: str = "test") -> dict:
    """Score a trained head on val (the early-stopped model) and test (the final one), write its run directory."""
    # val chose the epoch count, so the early-stopped head is the one val can judge fairly (refit saw val)
    both = {"tuned": result.tuned_threshold, "fixed": cfg.threshold or 0.5}  # multilabel F1 at each, too
    val = score_split(result.early, cache, targets, splits["val"], task, labels, result.threshold, cfg.max_frames,
                      **both)
    test = (score_split(result.model, cache, targets, splits["test"], task, labels, result.threshold,
                        cfg.max_frames, **both) if len(splits["test"]) else None)
    shown, metric_name = test or val, HEADLINE[task]
    metrics = {
        "val": val, "test": test, "task": task, "head": cfg.head, "split": cfg.split,
        "eval_split": eval_split if test else "val", "metric_name": metric_name, "metric": shown[metric_name],
        "store": str(Path(store.path).resolve()), "store_fingerprint": store.fingerprint,
        "backbone": store.config.backbone, "n_params": count_params(result.model),
        "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(splits["test"]),
        "n_unused": len(cache) - sum(len(v) for v in splits.values()),
        "labels": labels, "threshold": result.threshold, "tuned_threshold": result.tuned_threshold,
        "threshold_source": "fixed (--threshold)" if cfg.threshold else "tuned on val", "best_epoch": result.best_epoch,
        "epochs_run": sum(r["phase"] == "fit" for r in result.history), "refit": cfg.refit,
        "train_seconds": result.seconds, "seconds": result.seconds, "data_source": cache.source,
    }
    if test is None:
        metrics["note"] = ("the test split is empty (no clip has split 'test'): only val metrics are reported, "
                           "and val also chose the best epoch")
    _write_run(Path(out_dir), cfg, result, store, metrics, {k: [cache.ids[i] for i in v] for k, v in splits.items()})
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def _write_run(out: Path, cfg: TrainConfig, result: TrainResult, store: Store, metrics: dict,
               split_ids: dict[str, list[str]]) -> None:
    """Everything but metrics.json: config, splits, history, checkpoint (plain types only), plots."""
    out.mkdir(parents=True, exist_ok=True)
    task, labels = metrics["task"], metrics["labels"]
    store_info = {"store": metrics["store"], "store_fingerprint": store.fingerprint,
                  "store_config": store.config.to_attrs(), "store_fingerprint_keys": list(store.fingerprint_keys)}
    write_json(out / "config.json", {"command": "fit-head", "train": asdict(cfg), "head": asdict(result.head_config),
                                      "task": task, "labels": labels, **store_info})
    write_json(out / "splits.json", split_ids)
    write_history(out / "history.csv", result.history)
    # with refit, the early-stopped head too: a fine-tune starting from this run needs a head whose training
    # never saw the val clips, or val could not pick its epochs
    early = {"early_state_dict": cpu_state(result.early.state_dict())} if result.early is not result.model else {}
    torch.save({"state_dict": cpu_state(result.model.state_dict()), **early,
                "head_config": asdict(result.head_config), "train_config": asdict(cfg), "labels": labels,
                "task": task, "threshold": result.threshold, "store_fingerprint": store.fingerprint,
                "store_config": store.config.to_attrs(), "store_fingerprint_keys": list(store.fingerprint_keys)},
               out / "head.pt")
    fit_rows = [r for r in result.history if r["phase"] == "fit"]
    if fit_rows:  # a kNN run has no epochs to draw
        plot_curves(fit_rows, out / "curves.png", metrics["metric_name"], result.best_epoch)
    if task == "multiclass":
        plot_confusion((metrics["test"] or metrics["val"])["confusion"], labels, out / "confusion.png",
                       f"{cfg.head} on {metrics['eval_split']}")


def score_split(model: nn.Module, cache: Source, targets: torch.Tensor, idx: np.ndarray, task: str,
                labels: list[str], threshold: float, max_frames: int, tuned: float | None = None,
                fixed: float = 0.5) -> dict:
    """Metrics of `model` on the clips `idx` of a cache (multilabel: at `threshold`, and at tuned/fixed)."""
    device = model_device(model)
    logits, y, _ = evaluate(model, batches(cache, targets, idx, 256, max_frames, device))
    return score(task, y, probabilities(logits, task), labels, threshold, tuned, fixed)


def load_run(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode on CPU, checkpoint dict) of a run directory's head.pt."""
    path = Path(run_dir) / "head.pt"
    if not path.exists():
        raise HeadError(f"{run_dir} is not a run directory (no head.pt): train one with `cli.py fit-head`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HeadError(f"refused to load {path}: it is not a weights-only checkpoint (it holds Python objects, "
                        "which could run code when loaded); use a head.pt written by `cli.py fit-head`") from None
    except (RuntimeError, EOFError) as e:  # torch's words for a truncated or foreign file
        raise HeadError(f"cannot read {path}: {str(e).splitlines()[0][:160]}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise HeadError(f"{path} is not a framecache head checkpoint (missing {', '.join(missing)}); "
                        "use a head.pt written by `cli.py fit-head`")
    try:
        model = build_head(HeadConfig(**ckpt["head_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise HeadError(f"{path} does not describe a head this version can build: "
                        f"{str(e).splitlines()[0][:160]}") from None
    return model.eval(), ckpt


def load_early_head(run_dir: str | Path, ckpt: dict) -> nn.Module | None:
    """The early-stopped head of a run whose final head was refit on train + val (None for a --no-refit run,
    whose one head is the early-stopped one). Raises for a refit run saved before early heads were kept."""
    if not ckpt["train_config"].get("refit", False):
        return None
    if "early_state_dict" not in ckpt:
        raise HeadError(f"{run_dir} was refit on train + val and keeps no early-stopped head (an older fit-head): "
                        "rerun its fit-head command, or fit one with --no-refit")
    model = build_head(HeadConfig(**ckpt["head_config"]))
    model.load_state_dict(ckpt["early_state_dict"])
    return model.eval()


def read_run_config(run_dir: str | Path) -> dict:
    """A fit-head run's config.json, checked for the keys that evaluate needs."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise HeadError(f"{run_dir} is not a complete run directory (no config.json): rerun fit-head") from None
    except ValueError as e:
        raise HeadError(f"{path} is not valid JSON ({e}); rerun fit-head to write it again") from None
    train = config.get("train") if isinstance(config, dict) else None
    if (not isinstance(train, dict) or not isinstance(config.get("store"), str)
            or any(k not in train for k in ("split", "val_frac", "test_frac", "seed"))):
        raise HeadError(f"{path} does not have the shape fit-head writes (an object with 'store' and 'train': "
                        "split, val_frac, test_frac, seed); rerun fit-head to write it again")
    return config


def check_store(store: Store, ckpt: dict, run_dir: str | Path) -> None:
    """Refuse a store whose features were extracted with other settings than the run's store.

    Equal fingerprints pass at once. Otherwise the settings are compared over both stores' fingerprinted keys, so a
    format-1 run (whose fingerprint also hashed the layout version) evaluates on a format-2 store of the same
    settings, and a run from before a setting existed on a store that leaves it unset."""
    if store.fingerprint == ckpt["store_fingerprint"]:
        return
    have, want = store.config, StoreConfig.from_attrs(ckpt["store_config"])
    keys = run_store_keys(store, ckpt)
    if keys is None:
        diffs = feature_diffs(have, store.fingerprint_keys, want, store.fingerprint_keys)
        detail = "; ".join(diffs) or (f"fingerprint {store.fingerprint} vs {ckpt['store_fingerprint']}, "
                                      "though the recorded configs match")
    else:
        diffs = feature_diffs(have, store.fingerprint_keys, want, keys)
        if not diffs:
            return
        detail = "; ".join(diffs)
    raise HeadError(f"store {store.path} does not match run {run_dir} (the run was trained on other features: "
                    f"{detail}); pass --store with a store extracted with the run's settings")


def run_store_keys(store: Store, ckpt: dict) -> list[str] | None:
    """The keys the run's store fingerprinted: recorded by newer runs; for older ones, the key set (this store's,
    with or without the layout keys) that reproduces the run's fingerprint from its recorded config, else None."""
    if ckpt.get("store_fingerprint_keys"):
        return list(ckpt["store_fingerprint_keys"])
    base = set(store.fingerprint_keys) - LAYOUT_KEYS
    for keys in (base, base | LAYOUT_KEYS):
        if StoreConfig.from_attrs(ckpt["store_config"]).fingerprint(keys) == ckpt["store_fingerprint"]:
            return sorted(keys)
    return None


def evaluate_run(run_dir: str | Path, store_path: str | Path | None = None, split: str = "test",
                 budget: int | None = None) -> dict:
    """Metrics of a run's head on a split of its store, or of another store extracted with the same settings.

    split: train | val | test (the run's own split, re-applied to another store), all (every clip), or
    any other value of the store's split column (e.g. holdout).
    """
    return split_metrics(split_predictions(run_dir, store_path, split, budget=budget), run_dir, split)


def split_metrics(p: SplitPredictions, run_dir: str | Path, split: str) -> dict:
    """`evaluate_run`'s metrics from a split's predictions."""
    out = score(p.task, p.targets, p.probs, p.labels, p.threshold)
    if p.clip_accuracy is not None:
        out["clip_accuracy"] = p.clip_accuracy
    if p.seen:
        out["seen_in_training"] = p.seen
    return {**out, "split": split, "store": p.store, "run": str(run_dir), "head": p.head,
            "task": p.task, "n_skipped": p.n_skipped, "unknown_labels": p.unknown_labels}


@dataclass
class SplitPredictions:
    """The head's probabilities for every scored clip of a split, with what is needed to judge them."""
    ids: list[str]
    paths: list[str]              # the files the clips were extracted from
    truth: list[list[str]]        # labels per clip
    targets: np.ndarray           # (N,) class indices, or (N, C) multi-hot for multilabel
    probs: np.ndarray             # (N, C)
    labels: list[str]             # the run's classes, column order of probs
    task: str
    threshold: float
    head: str
    store: str
    n_skipped: int                # clips of the split left out: unlabelled or with labels the run does not know
    unknown_labels: list[str]
    clip_accuracy: float | None = None  # pooling heads, multiclass: every row (frame or clip) classified alone
    seen: str | None = None       # why these clips are not held out from the head (its own train, or val + refit)


def split_predictions(run_dir: str | Path, store_path: str | Path | None = None, split: str = "test",
                      loaded: tuple[nn.Module, dict] | None = None, budget: int | None = None) -> SplitPredictions:
    """Apply a run's head to the clips of `split` (as `evaluate_run` describes) and keep every clip's output.
    `loaded`: the run's (model, checkpoint) if already loaded by `load_run`; `budget`: bytes the split's rows may
    take in memory before they stream (heads.budget; None: no limit)."""
    model, ckpt = loaded or load_run(run_dir)
    config = read_run_config(run_dir)
    store = open_store(store_path or config["store"])
    check_store(store, ckpt, run_dir)
    labels, task = ckpt["labels"], ckpt["task"]
    index = load_cache(store, features=False)
    ids = _split_ids(index, run_dir, config, store, split)
    known = set(labels)
    keep = [i for i in ids if index.labels[i] and set(index.labels[i]) <= known]
    if not keep:
        raise HeadError(f"no clip of split {split!r} in {store.path} has labels this run knows: "
                        "nothing to evaluate")
    sub = load_cache(store, [index.ids[i] for i in keep], budget=budget)
    targets = encode_targets(sub.labels, labels, task)
    cfg = ckpt["train_config"]
    device = model_device(model)
    logits, y, _ = evaluate(model, batches(sub, targets, np.arange(len(sub)), 256, cfg["max_frames"], device))
    clip_accuracy = (_row_accuracy(model, sub, targets) if cfg["head"] in POOLING_HEADS and task == "multiclass"
                     else None)
    unknown = sorted({x for i in ids for x in index.labels[i]} - known)
    return SplitPredictions(sub.ids, [store.meta(v).path for v in sub.ids], sub.labels, y,
                            probabilities(logits, task), labels, task, ckpt["threshold"], cfg["head"],
                            str(store.path), len(ids) - len(keep), unknown, clip_accuracy,
                            _seen(split, cfg, Path(store.path).resolve() == Path(config["store"])))


def _seen(split: str, cfg: dict, own_store: bool) -> str | None:
    """Why the run's own train or val clips are no held-out score of its final head (None: they are, or other)."""
    if not own_store or split not in ("train", "val"):
        return None
    if split == "train":
        return "the head was trained on these clips: not a held-out score"
    if cfg.get("refit"):
        return ("the head was refit on train + val, so it has seen these clips: not a validation score "
                "(metrics.json's val is the early-stopped head's, which had not)")
    return None


def _row_accuracy(model: nn.Module, cache: Source, targets: torch.Tensor) -> float:
    """Accuracy with every row (a clip of a clip store, a frame of a frame store) classified alone."""
    logits, y, _ = evaluate(model, _row_batches(cache, targets.repeat_interleave(cache.lengths), model_device(model)))
    return float((logits.argmax(1) == y).mean())


def _row_batches(cache: Source, row_targets: torch.Tensor, device: torch.device, size: int = 1024):
    """(x (B, 1, D), lengths of 1, y) over every row of the cache, in order: each row a clip of its own."""
    done = 0
    for block in cache.row_blocks(torch.arange(len(cache))):
        for part in block.split(size):
            yield (part.to(device, torch.float32)[:, None, :], torch.ones(len(part), dtype=torch.int64, device=device),
                   row_targets[done:done + len(part)].to(device))
            done += len(part)


def _split_ids(cache: Source, run_dir, config: dict, store: Store, split: str) -> list[int]:
    """Clip positions of `split`: the run's own split when this is its store, else the same rule re-applied."""
    if split == "all":
        return list(range(len(cache)))
    if split not in RUN_SPLITS:
        found = [i for i, s in enumerate(cache.splits) if s.strip().lower() == split.lower()]
        if not found:
            names = sorted({s for s in cache.splits if s}) or ["(none)"]
            raise HeadError(f"--split {split!r}: no clip of {store.path} has that split; use train, val, test, "
                            f"all, or a split the store has: {', '.join(names)}")
        return found
    saved = Path(run_dir) / "splits.json"
    if Path(store.path).resolve() == Path(config["store"]) and saved.exists():
        wanted = set(json.loads(saved.read_text())[split])
        return [i for i, vid in enumerate(cache.ids) if vid in wanted]
    t = config["train"]
    return list(make_splits(cache, t["split"], t["val_frac"], t["test_frac"], t["seed"])[split])


def predict_features(model: nn.Module, ckpt: dict, feats_list: list[np.ndarray]) -> np.ndarray:
    """Class probabilities (N, C) for clips given as (T, D) arrays: softmax, or sigmoid for multilabel."""
    dim = ckpt["head_config"]["in_dim"]
    bad = [i for i, f in enumerate(feats_list) if np.ndim(f) != 2 or np.shape(f)[1] != dim]
    if bad:
        raise HeadError(f"clip {bad[0]} has features of shape {np.shape(feats_list[bad[0]])}, "
                        f"the head expects (T, {dim}): extract with the run's store settings")
    cache = cache_from_arrays(feats_list)
    device = model_device(model)
    logits, _, _ = evaluate(model, batches(cache, None, np.arange(len(cache)), 256,
                                           ckpt["train_config"]["max_frames"], device))
    return probabilities(logits, ckpt["task"])


RUN_COLUMNS = ("name", "backbone", "head", "task", "split", "eval_split", "metric", "accuracy", "top5_accuracy",
               "macro_f1", "mAP", "micro_f1", "nmi", "n_params", "seconds", "store")
SHOWN_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "mAP", "micro_f1", "nmi")
# repeated runs (seeds, folds, sweeps) add "<metric>_std"; every run adds "params": its train config
STD_COLUMNS = tuple(f"{k}_std" for k in ("metric", *SHOWN_METRICS))


def list_runs(runs_dir: str | Path = "runs", sort_by: str | None = None,
              on_bad: Callable[[Path, str], None] | None = None) -> list[dict]:
    """One row per run directory (with a metrics.json) under runs_dir, best first by `sort_by` if given.

    A metrics.json that cannot be read is left out and reported as `on_bad(path, reason)`."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*/metrics.json")):
        m = _read_metrics(path, on_bad)
        if m is None:
            continue
        row = {"name": path.parent.name, **{k: m.get(k) for k in ("backbone", "head", "task", "split",
                                                                   "eval_split", "metric", "n_params",
                                                                   "seconds", "store")}}
        if m.get("kind") == "cluster":  # cluster-eval runs share the table: Hungarian accuracy, NMI
            shown = m.get("metrics") or {}
            row.update(task="cluster", metric=shown.get("accuracy"))
        else:
            shown = m.get("test") or m.get("cv") or m.get("val") or {}  # cv: --folds runs
        row.update({k: shown.get(k) for k in SHOWN_METRICS})
        rows.append({**{k: row.get(k) for k in RUN_COLUMNS}, **_spread(m), "params": _train_params(path.parent)})
    if sort_by is not None:
        if rows and sort_by not in RUN_COLUMNS:
            raise HeadError(f"--sort {sort_by!r} is not a column; choose one of: {', '.join(RUN_COLUMNS)}")
        numeric = all(isinstance(r[sort_by], (int, float)) for r in rows if r[sort_by] is not None)
        missing = [r for r in rows if r[sort_by] is None]
        present = sorted((r for r in rows if r[sort_by] is not None),
                         key=lambda r: r[sort_by] if numeric else str(r[sort_by]), reverse=numeric)
        rows = present + missing  # numbers best (highest) first, text A to Z, runs without the value last
    return rows


def _read_metrics(path: Path, on_bad: Callable[[Path, str], None] | None) -> dict | None:
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"not valid JSON ({e})"
    else:
        if isinstance(m, dict) and isinstance(m.get("test") or m.get("val") or m.get("metrics") or {}, dict):
            return m
        reason = "not a metrics object written by fit-head or cluster-eval"
    if on_bad is not None:
        on_bad(path, reason)
    return None


def _spread(m: dict) -> dict:
    """The std columns of a repeated run (seeds, folds, sweep): over its eval split's members."""
    std = m.get(f"{m.get('eval_split')}_std") if m.get("kind") in ("repeated", "sweep") else None
    if not std:
        return {}
    return {"metric_std": m.get("metric_std"), **{f"{k}_std": std[k] for k in SHOWN_METRICS if k in std}}


def _train_params(run_dir: Path) -> dict:
    """The run's train config (config.json), for showing the hyperparameters that differ between runs."""
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text()) if path.exists() else None
    except (OSError, UnicodeDecodeError, ValueError):  # a damaged config.json costs its columns, not the table
        return {}
    train = config.get("train") if isinstance(config, dict) else None
    return train if isinstance(train, dict) else {}


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv: one row per epoch, the columns of the first row."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
