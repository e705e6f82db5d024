"""Several datasets in one model: one trunk, one classifier per store (multi-task), trained on mixed batches.

The classifiers are the slices of one output layer, one slice per store (`Task`): a clip's loss is the
cross-entropy over its own store's slice only, so the datasets never compete for a label, and the slices
are exactly separate linear classifiers on the shared trunk. Batches are drawn from the union of the stores'
training clips, so each batch mixes the datasets in proportion to their sizes. Each store is split by its own
rules (its split column or carving) and scored on its own split, over its own labels.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from featstore import Store, diff_configs, open_store
from heads.data import Cache, batches, build_vocab, detect_task, load_cache, make_splits
from heads.fusion import FusedStore
from heads.metrics import multiclass_metrics
from heads.models import HeadError
from heads.run import check_store, finish_run, load_run
from heads.rundir import staged_run, write_json
from heads.train import TrainConfig, evaluate, train_head


@dataclass
class Task:
    """One store's slice of the output layer."""
    name: str         # the store's folder name (made unique)
    store: str
    labels: list[str]
    lo: int           # its classes are logits lo..hi-1
    hi: int


class SliceLoss(nn.Module):
    """Cross-entropy of each clip over its own task's logits; the task is read off the target's range."""

    def __init__(self, bounds: list[int]):
        super().__init__()
        self.register_buffer("bounds", torch.tensor(bounds))  # (n_tasks + 1,) starts, then the total

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = torch.searchsorted(self.bounds.to(y.device), y, right=True) - 1  # (B,)
        cls = torch.arange(logits.shape[1], device=logits.device)[None, :]
        lo, hi = self.bounds.to(y.device)[task][:, None], self.bounds.to(y.device)[task + 1][:, None]
        masked = logits.masked_fill((cls < lo) | (cls >= hi), float("-inf"))
        return nn.functional.cross_entropy(masked, y)


def check_agree(stores: list[Store]) -> None:
    """Refuse stores whose features were made with different settings, listing the differences."""
    first = stores[0]
    for s in stores[1:]:
        if s.fingerprint == first.fingerprint and s.dim == first.dim:
            continue
        diffs = diff_configs(first.config, s.config, first.fingerprint_keys) or [f"dim {first.dim} vs {s.dim}"]
        raise HeadError(f"stores {first.path} and {s.path} were extracted with different settings ("
                        + "; ".join(d.replace("store has", "first has").replace("this run has", "second has")
                                    for d in diffs)
                        + "): one trunk needs the same features; re-extract one of them with the other's settings")


def joint_cache(stores: list[Store], cfg: TrainConfig) -> tuple[Cache, torch.Tensor, dict, list[Task]]:
    """The stores' clips in one cache (ids 'name/id'), global targets, per-store splits shifted, the tasks."""
    caches = [load_cache(s) for s in stores]
    names = _unique_names(stores)
    tasks, parts, start, offset = [], [], 0, 0
    splits = {"train": [], "val": [], "test": []}
    for store, cache, name in zip(stores, caches, names):
        if len(cache) == 0:
            raise HeadError(f"store {store.path} has no clips with features: extract some first")
        if detect_task(cache.labels, cfg.task) != "multiclass":
            raise HeadError(f"store {store.path} is multi-label: training several stores at once takes "
                            "multiclass stores")
        labels = build_vocab(cache.labels)
        tasks.append(Task(name, str(store.path), labels, start, start + len(labels)))
        for k, idx in make_splits(cache, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed).items():
            splits[k].append(idx + offset)
        parts.append(cache)
        start, offset = start + len(labels), offset + len(cache)
    lengths = torch.cat([c.lengths for c in parts])
    joint = Cache(torch.cat([c.features.float() for c in parts]), torch.cumsum(lengths, 0) - lengths, lengths,
                  [f"{t.name}/{v}" for t, c in zip(tasks, parts) for v in c.ids],
                  [[f"{t.name}:{c.labels[i][0]}"] for t, c in zip(tasks, parts) for i in range(len(c))],
                  [f"{t.name}/{g}" if g else "" for t, c in zip(tasks, parts) for g in c.groups],
                  [s for c in parts for s in c.splits])
    targets = torch.tensor([t.lo + t.labels.index(c.labels[i][0]) for t, c in zip(tasks, parts)
                            for i in range(len(c))], dtype=torch.int64)
    return joint, targets, {k: np.concatenate(v) for k, v in splits.items()}, tasks


def _unique_names(stores: list[Store]) -> list[str]:
    names = []
    for s in stores:
        base = Path(s.path).stem
        names.append(base if base not in names else f"{base}-{len(names)}")
    return names


def fit_multi(store_paths: list[str | Path], cfg: TrainConfig, out_dir: str | Path,
              on_epoch: Callable[[dict], None] | None = None, *, force: bool = False) -> dict:
    """One head, one classifier per store; metrics per store and their mean (see the module docstring).

    `out_dir` must be absent, empty or a fit-head run (replaced whole) unless `force` (see heads.rundir)."""
    start = time.perf_counter()
    with staged_run(out_dir, "fit-head", force) as out:
        return _fit_multi(store_paths, cfg, out, on_epoch, start)


def _fit_multi(store_paths: list[str | Path], cfg: TrainConfig, out: Path, on_epoch: Callable[[dict], None] | None,
               start: float) -> dict:
    stores = [open_store(p) for p in store_paths]
    check_agree(stores)
    cache, targets, splits, tasks = joint_cache(stores, cfg)
    labels = [f"{t.name}:{x}" for t in tasks for x in t.labels]
    loss = SliceLoss([t.lo for t in tasks] + [tasks[-1].hi])
    result = train_head(cache, targets, "multiclass", labels, splits, cfg, on_epoch, loss=loss)
    stand_in = FusedStore(str(stores[0].path), stores[0].fingerprint,
                          stores[0].config.with_extra(multitask=[asdict(t) for t in tasks]),
                          list(stores[0].fingerprint_keys), stores[0].dim)
    metrics = finish_run(stand_in, cache, targets, "multiclass", labels, splits, cfg, result, out)
    per_store = {t.name: {part: _task_scores(model, cache, targets, splits[part], t, cfg.max_frames)
                          for part, model in (("val", result.early), ("test", result.model))} for t in tasks}
    _summarize(metrics, per_store, tasks)
    metrics["seconds"] = time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics


def _task_scores(model: nn.Module, cache: Cache, targets: torch.Tensor, idx: np.ndarray, task: Task,
                 max_frames: int) -> dict | None:
    """Metrics of one task on its clips among `idx`, over its own labels only."""
    mine = idx[(targets[idx] >= task.lo).numpy() & (targets[idx] < task.hi).numpy()]
    if len(mine) == 0:
        return None
    device = next(model.parameters()).device
    logits, y, _ = evaluate(model, batches(cache, targets, mine, 256, max_frames, device))
    probs = torch.softmax(torch.from_numpy(logits[:, task.lo:task.hi]), 1).numpy()
    return multiclass_metrics(y - task.lo, probs, task.labels)


def _summarize(metrics: dict, per_store: dict, tasks: list[Task]) -> None:
    """Per-store metrics, and val/test replaced by their mean over stores (the joint-label scores kept aside)."""
    metrics["joint"] = {"val": metrics["val"], "test": metrics["test"]}
    metrics["per_store"] = per_store
    metrics["tasks"] = [asdict(t) for t in tasks]
    for part in ("val", "test"):
        scored = [s[part] for s in per_store.values() if s[part]]
        metrics[part] = ({k: float(np.mean([s[k] for s in scored])) for k in ("accuracy", "top5_accuracy",
                                                                               "macro_f1")}
                         if len(scored) == len(tasks) else None)
    shown = metrics["test"] or metrics["val"]
    metrics["metric"] = shown["accuracy"]
    metrics["store"] = "+".join(t.store for t in tasks)
    metrics["kind"] = "multitask"


def is_multitask(ckpt: dict) -> bool:
    return bool(ckpt.get("store_config", {}).get("multitask"))


def evaluate_multi(run_dir: str | Path, split: str = "test",
                   loaded: tuple[nn.Module, dict] | None = None) -> dict[str, dict]:
    """{store name: metrics} of a multi-task run on each store's own `split` (as recorded at training).
    `loaded`: the run's (model, checkpoint) if already loaded by `load_run`."""
    model, ckpt = loaded or load_run(run_dir)
    saved = json.loads((Path(run_dir) / "splits.json").read_text())
    if split not in saved:
        raise HeadError(f"--split {split!r}: a multi-task run is evaluated on its own splits: {', '.join(saved)}")
    tasks = [Task(**t) for t in ckpt["store_config"]["multitask"]]
    out = {}
    for t in tasks:
        store = open_store(t.store)
        check_store(store, ckpt, run_dir)
        ids = [v.split("/", 1)[1] for v in saved[split] if v.startswith(f"{t.name}/")]
        cache = load_cache(store, ids)
        y = torch.tensor([t.labels.index(ls[0]) + t.lo for ls in cache.labels])
        out[t.name] = {**_task_scores(model, cache, y, np.arange(len(cache)), t, ckpt["train_config"]["max_frames"]),
                       "store": t.store}
    return out


def predict_multi(ckpt: dict, probs: np.ndarray) -> list[dict[str, tuple[list[str], np.ndarray]]]:
    """Per clip, {store name: (its labels, probabilities over them)}: the joint softmax renormalised within each
    store's slice, which equals a softmax over that store's logits alone."""
    tasks = ckpt["store_config"]["multitask"]
    return [{t["name"]: (t["labels"], row[t["lo"]:t["hi"]] / row[t["lo"]:t["hi"]].sum()) for t in tasks}
            for row in probs]
