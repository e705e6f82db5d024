"""Zero-shot classification from a cache: a head made, not trained, from the text tower of the weights whose image
tower filled the store (a CLIP store: `--backbone open_clip:ARCH`), written as a run like fit-head's.

    zero_shot(store, ZeroShotConfig(labels="walk,run"), "runs/zs")        -> metrics.json's dict

Each class's prompt (the template with its name) is embedded by the same weights' text tower (pipeline.zeroshot);
the run's head (heads.models.ZeroShotHead) scores a clip as the mean over its rows of cosine(row, prompt) x CLIP's
logit scale. The run folder holds what fit-head's does (config.json, splits.json, head.pt, metrics.json), so
evaluate, predict, runs and fuse take it. Nothing is trained, so nothing is held out: the run is scored on the store's
test split where it has one (as fit-head's official split), else on every clip (docs/families.md).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from featstore import Store, open_store
from heads.config import TrainConfig, ZeroShotConfig
from heads.data import SPLIT_NAMES, Cache, build_vocab, detect_task, encode_targets, load_cache
from heads.metrics import HEADLINE
from heads.models import HeadConfig, HeadError, build_head
from heads.rundir import check_run_dir, staged_run, write_json
from heads.run import score_split
from heads.train import cpu_state
from pipeline.zeroshot import class_embeddings

KIND = "zero-shot"  # the run kind heads.rundir guards --out with
TASK = "multiclass"  # one class per clip: softmax over the prompts
THRESHOLD = 0.5      # what a multiclass run records (unused by its metrics)


def zero_shot(store_path: str | Path, cfg: ZeroShotConfig, out_dir: str | Path, weights: str | None = None,
              force: bool = False) -> dict:
    """Build the zero-shot head of `cfg` for a CLIP store, score it on the store's test split (every clip without
    one), write the run directory `out_dir` (guarded and staged as fit-head's); returns metrics.json's dict.
    `weights`: the store's weights file, if it moved since extract (its sha256 is checked)."""
    start = time.perf_counter()
    check_run_dir(Path(out_dir), KIND, force)  # before any model is built: a refusal costs nothing
    store = open_store(store_path)
    index = load_cache(store, features=False)
    classes = _classes(store, index, cfg)
    text, scale = class_embeddings(store.config, classes, cfg.template, weights)
    head_config = HeadConfig(kind="zeroshot", in_dim=store.dim, n_classes=len(classes))
    model = build_head(head_config)
    model.set_classes(text, scale)
    split, test_ids = _test_split(index)
    test, n_scored = _score(model, store, test_ids, classes)
    metrics = {
        "val": None, "test": test, "task": TASK, "head": "zeroshot", "split": split, "eval_split": "test",
        "metric_name": HEADLINE[TASK], "metric": test[HEADLINE[TASK]] if test else None,
        "store": str(Path(store.path).resolve()), "store_fingerprint": store.fingerprint,
        "backbone": store.config.backbone, "n_params": 0, "n_train": 0, "n_val": 0, "n_test": len(test_ids),
        "n_scored": n_scored, "n_unused": len(index) - len(test_ids), "labels": classes, "threshold": THRESHOLD,
        "template": cfg.template, "logit_scale": scale,
    }
    if test is None:
        metrics["note"] = ("no test clip is labelled with one of the classes: nothing to score (predict still "
                           "applies the head)")
    with staged_run(out_dir, KIND, force) as stage:
        _write_run(stage, store, model, head_config, cfg, classes, test_ids)
        metrics["seconds"] = time.perf_counter() - start
        write_json(stage / "metrics.json", metrics)
    return metrics


def _classes(store: Store, index: Cache, cfg: ZeroShotConfig) -> list[str]:
    """The class names (--labels, or the store's vocabulary), refusing stores a single-class pick cannot judge."""
    labelled = [ls for ls in index.labels if ls]
    if detect_task(labelled) == "multilabel":
        raise HeadError(f"zero-shot picks one class per clip, but clips of {store.path} have several labels: "
                        "use a store with one label per clip (or fit-head for a multilabel head)")
    classes = cfg.classes(build_vocab(labelled))
    if len(classes) < 2:
        raise HeadError(f"--from-store: {store.path} has {len(classes)} label(s) {classes}: zero-shot needs at least "
                        "2 classes; give them with --labels a,b,c")
    return classes


def _test_split(index: Cache) -> tuple[str, list[str]]:
    """('official', the clips of the store's test split), or ('all', every clip) where the store has none."""
    test = [vid for vid, split in zip(index.ids, index.splits) if SPLIT_NAMES.get(split.strip().lower()) == "test"]
    return ("official", test) if test else ("all", list(index.ids))


def _score(model: torch.nn.Module, store: Store, test_ids: list[str], classes: list[str]) -> tuple[dict | None, int]:
    """(the head's metrics on the test clips labelled with one of the classes, None where none is; how many)."""
    index = load_cache(store, test_ids, features=False)
    known = set(classes)
    scored = [vid for vid, labels in zip(index.ids, index.labels) if labels and set(labels) <= known]
    if not scored:
        return None, 0
    cache = load_cache(store, scored)
    targets = encode_targets(cache.labels, classes, TASK)
    return score_split(model, cache, targets, np.arange(len(cache)), TASK, classes, THRESHOLD,
                       TrainConfig().max_frames), len(scored)


def _train_record() -> dict:
    """The part of a fit-head train config that evaluate, predict and fuse read: how a split is re-applied to another
    store (official: its split column), and the frames a clip is scored on (uniformly spaced, as for every head)."""
    base = TrainConfig()
    return {"head": "zeroshot", "split": "official", "val_frac": base.val_frac, "test_frac": base.test_frac,
            "seed": base.seed, "max_frames": base.max_frames, "refit": False}


def _write_run(out: Path, store: Store, model: torch.nn.Module, head_config: HeadConfig, cfg: ZeroShotConfig,
               classes: list[str], test_ids: list[str]) -> None:
    """config.json, splits.json and head.pt as fit-head writes them (head.pt: plain types and tensors only)."""
    store_info = {"store": str(Path(store.path).resolve()), "store_fingerprint": store.fingerprint,
                  "store_config": store.config.to_attrs(), "store_fingerprint_keys": list(store.fingerprint_keys)}
    prompts = {"template": cfg.template, "prompts": [cfg.template.format(c) for c in classes]}
    write_json(out / "config.json", {"command": KIND, "zero_shot": {**asdict(cfg), **prompts},
                                     "train": _train_record(), "head": asdict(head_config), "task": TASK,
                                     "labels": classes, **store_info})
    write_json(out / "splits.json", {"train": [], "val": [], "test": test_ids})
    torch.save({"state_dict": cpu_state(model.state_dict()), "head_config": asdict(head_config),
                "train_config": _train_record(), "labels": classes, "task": TASK, "threshold": THRESHOLD,
                "zero_shot": prompts, **{k: v for k, v in store_info.items() if k != "store"}}, out / "head.pt")
