"""`finetune`: items in, a run directory out, laid out like fit-head's so `cli.py runs` lists it.

    backbone.pt    the registry architecture's state_dict, classifier removed: `load_backbone(name, "none").model
                    .load_state_dict(torch.load(p, weights_only=True))` works, and `extract --weights` takes it
    backbone.json  beside it: {"backbone": name, "config": what made it} (extract reads the name from it)
    checkpoint.pt  the training state after the last finished epoch (what --resume continues from)
    probe.pt       without --init-head: the linear probe the fine-tune started from (finetune.probe)
    config.json, splits.json, history.csv, metrics.json, curves.png
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from featstore import StoreConfig
from featstore.ownership import clear_folder
from finetune.config import FinetuneError
from finetune.data import ClipFrames, FrameSampler, item_index
from finetune.flow import FlowInput
from finetune.model import ProjectionHead, VideoNet, freeze_until, trainable_backbone
from finetune.objectives import Supervised, Temporal
from finetune.probe import PROBE_FILE, Probe, fit_probe, frozen_features
from finetune.rundir import check_finetune_out
from finetune.train import FinetuneConfig, Loaders, LoopState, Trainer, evaluate, save_atomic
from heads.data import Cache, build_vocab, detect_task, encode_targets, make_splits
from heads.models import MADE_HEADS, MEMORY_HEADS, POOLING_HEADS, HeadConfig, build_head, count_params
from heads.plots import plot_curves
from heads.run import load_early_head, load_run, write_history
from heads.rundir import write_json
from heads.train import cpu_state
from pipeline.backbones import Backbone
from pipeline.decode import Geometry
from pipeline.device import auto_decode_workers, resolve_device, resolve_precision
from pipeline.extract import geometry_of, resize_engine_for
from pipeline.sources import Item

CHECKPOINT = "checkpoint.pt"
BACKBONE_FILE = "backbone.pt"
BACKBONE_SIDECAR = "backbone.json"  # the name pipeline.backbones looks for beside a weights file
# What an --init-head run's store must share with this run for its head to read our features.
INIT_HEAD_KEYS = ("backbone", "weights", "size", "resize", "crop", "mean", "std", "modality", "flow", "flow_stack")
STAT_CLIPS = 32  # clips whose features standardize a new head's input (as fit-head does with train frames)


@dataclass
class Prepared:
    net: VideoNet
    objective: Supervised | Temporal
    head_config: dict
    labels: list[str]
    splits: dict[str, np.ndarray]
    new_head: bool
    refit_head: torch.nn.Module | None = None  # the --init-head run's or probe's head refit on train + val
    start_from: str = "new head"  # what the head starts as: a new head, the probe, or the --init-head run's


def finetune(items: list[Item], cfg: FinetuneConfig, out_dir: str | Path, resume: bool = False,
             on_epoch: Callable[[dict], None] | None = None, force: bool = False) -> dict:
    """Fine-tune cfg.backbone on `items` into `out_dir`; returns metrics.json. Raises NothingTrained (nothing
    written) when no training clip decodes; clips that fail are listed in metrics["failed"]. `out_dir` must be
    absent, empty or a finetune run unless `force` (finetune.rundir)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    replace = check_finetune_out(out, force)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise FinetuneError(f"{out} holds the checkpoint of an earlier run: pass --resume to continue it, "
                            "or choose another --out")
    backbone, device, precision, amp, geometry = setup(cfg)
    index = item_index(items)
    prep = prepare(backbone, geometry, index, cfg)
    data = loaders(items, geometry, cfg, prep, device)
    prep.net.to(device)
    if replace:  # --force over a folder of other files: replaced whole, now that the inputs are checked
        clear_folder(out)
    failures: dict[str, str] = {}
    if prep.new_head and isinstance(prep.objective, Supervised):  # on resume too: the refit starts from it
        if cfg.probe:
            _start_from_probe(prep, data, cfg, device, amp, out / PROBE_FILE, resume, failures)
        else:
            _standardize_head(prep.net, data, device, amp)
    start = cpu_state(prep.net.state_dict())
    trainer = Trainer(prep.net, prep.objective, cfg, data, device, amp, checkpoint, _refit_start(prep, start))
    trainer.state.failures.update(failures)
    if resume and checkpoint.exists():
        trainer.resume()
    state = trainer.run(on_epoch, keep_start=not prep.new_head)
    metrics = _final_metrics(trainer, prep, cfg, state, precision, trainer.refit_start or start)
    _write_run(out, cfg, prep, backbone, geometry, state, metrics, index)
    metrics["seconds"] = time.perf_counter() - t0
    write_json(out / "metrics.json", metrics)
    return metrics


class Setup(NamedTuple):
    backbone: Backbone
    device: torch.device
    precision: str               # what --precision resolved to on this device
    amp: torch.dtype | None      # its autocast dtype (None: fp32)
    geometry: Geometry           # the frames' size and crop, as extract would make them for this backbone


def setup(cfg: FinetuneConfig) -> Setup:
    """The trainable backbone, and the device, precision and frame geometry a run of `cfg` uses (bench/finetune.py
    times this same setup)."""
    backbone = trainable_backbone(cfg.backbone, cfg.weights, cfg.flow_stack if cfg.modality == "flow" else None)
    device = resolve_device(cfg.device, backbone.name, backbone.cpu_only)
    precision = resolve_precision(cfg.precision, device, backbone)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    geometry = geometry_of(backbone.preprocess, cfg.size, cfg.crop, resize_engine_for("auto", backbone.is_video))
    if (flow := flow_input(cfg)) is not None:
        flow.check(geometry.size)
    return Setup(backbone, device, precision, amp, geometry)


# -- building the network ---------------------------------------------------------------------------------------
def prepare(backbone: Backbone, geometry: Geometry, index: Cache, cfg: FinetuneConfig) -> Prepared:
    """The network and objective a run trains, and its splits of `index`."""
    torch.manual_seed(cfg.seed)  # a new head's init
    if cfg.objective == "temporal":
        head = ProjectionHead(backbone.dim, cfg.hidden, cfg.proj_dim)
        splits = make_splits(index, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed)
        hc = {"kind": "projection", "in_dim": backbone.dim, "hidden": cfg.hidden, "out_dim": cfg.proj_dim}
        prep = Prepared(_net(backbone, head, cfg), Temporal(cfg.tau), hc, [], splits, True)
    elif cfg.init_head:
        prep = _from_init_head(backbone, geometry, index, cfg)
    else:
        labels, targets = _targets(index, None)
        hc = HeadConfig(kind=cfg.head, in_dim=backbone.dim, n_classes=len(labels), hidden=cfg.hidden,
                        max_len=cfg.segments)
        splits = make_splits(index, cfg.split, cfg.val_frac, cfg.test_frac, cfg.seed)
        prep = Prepared(_net(backbone, build_head(hc), cfg), Supervised(targets, labels, cfg.label_smoothing),
                        asdict(hc), labels, splits, True)
    if cfg.backbone_lr_mult == 0:
        prep.net.backbone.requires_grad_(False)
    elif cfg.freeze_until:
        freeze_until(prep.net.backbone, cfg.freeze_until)
    return prep


def _net(backbone: Backbone, head: torch.nn.Module, cfg: FinetuneConfig) -> VideoNet:
    return VideoNet(backbone, head, cfg.bn, flow=cfg.modality == "flow")


def flow_input(cfg: FinetuneConfig) -> FlowInput | None:
    """What a flow run's segments are made of; None for RGB frames."""
    return FlowInput(cfg.flow, cfg.flow_stack) if cfg.modality == "flow" else None


def _refit_start(prep: Prepared, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the refit phase starts from: the starting weights, with the head the --init-head run refit on
    train + val where it has one (so a refit from epoch 0 ends exactly on fit-head's own final head)."""
    if prep.refit_head is None:
        return start
    head = cpu_state(prep.refit_head.state_dict())
    return {**start, **{f"head.{k}": v for k, v in head.items()}}


def _targets(index: Cache, vocab: list[str] | None) -> tuple[list[str], torch.Tensor]:
    if detect_task(index.labels) != "multiclass":
        raise FinetuneError("--objective supervised trains single-label classes; some clips have several labels")
    labels = vocab or build_vocab(index.labels)
    if len(labels) < 2:
        raise FinetuneError(f"--objective supervised needs at least 2 labels, the source has {labels}")
    return labels, encode_targets(index.labels, labels, "multiclass")


def _check_trainable(run: str, kind: str) -> None:
    """Refuse, before comparing features, a head finetune cannot train: one fit without gradient steps (knn) or
    made from elsewhere (a zero-shot run's text-tower prompts): neither has weights to fine-tune."""
    if kind in MEMORY_HEADS:
        raise FinetuneError(f"--init-head {run} is a --head {kind} run: it has no weights to fine-tune; give a run "
                            "of a trained head (linear, mlp, ...)")
    if kind in MADE_HEADS:
        raise FinetuneError(f"--init-head {run} is a {kind} run (prompts from a text tower): it has no weights to "
                            "fine-tune; fit-head a linear head on its store and pass that run")


def _from_init_head(backbone: Backbone, geometry: Geometry, index: Cache, cfg: FinetuneConfig) -> Prepared:
    """The head of a fit-head run, refused when its store's features are not the ones this run computes."""
    head, ckpt = load_run(cfg.init_head)
    _check_trainable(cfg.init_head, ckpt["head_config"]["kind"])
    flow = cfg.modality == "flow"  # an RGB store records no flow keys (None)
    ours = StoreConfig(backbone=backbone.name, weights=backbone.weights_id, size=geometry.size,
                       resize=geometry.resize, crop=geometry.crop, mean=list(backbone.preprocess.mean),
                       std=list(backbone.preprocess.std), modality="flow" if flow else None,
                       flow=cfg.flow if flow else None, flow_stack=cfg.flow_stack if flow else None)
    diffs = StoreConfig.from_attrs(ckpt["store_config"]).diff(ours, INIT_HEAD_KEYS)
    if diffs:
        raise FinetuneError(f"--init-head {cfg.init_head} was trained on other features than this run computes "
                            f"({'; '.join(diffs)}): pass the matching --backbone/--weights/--size/--crop "
                            "(and --modality/--flow/--flow-stack), or fit a head on a store extracted with them")
    if ckpt["task"] != "multiclass":
        raise FinetuneError(f"--init-head {cfg.init_head} is a {ckpt['task']} head; finetune trains multiclass heads")
    hc = ckpt["head_config"]
    if hc["kind"] == "transformer" and hc["max_len"] < cfg.segments:
        raise FinetuneError(f"--init-head {cfg.init_head} reads at most {hc['max_len']} frames: "
                            f"use --segments {hc['max_len']} or fewer")
    unknown = sorted({x for ls in index.labels for x in ls} - set(ckpt["labels"]))
    if unknown:
        raise FinetuneError(f"--init-head {cfg.init_head} does not know the source's labels {unknown[:5]}")
    labels, targets = _targets(index, ckpt["labels"])
    splits = _run_splits(Path(cfg.init_head), index)
    early = load_early_head(cfg.init_head, ckpt)  # a refit run: fit from its early head, refit from its final one
    fit_head, refit_head = (head, None) if early is None else (early, head)
    return Prepared(_net(backbone, fit_head, cfg), Supervised(targets, labels, cfg.label_smoothing), hc,
                    labels, splits, False, refit_head, "--init-head")


def _start_from_probe(prep: Prepared, data: Loaders, cfg: FinetuneConfig, device: torch.device,
                      amp: torch.dtype | None, saved: Path, resume: bool, failures: dict[str, str]) -> None:
    """Replace `prep`'s new head by a linear probe of the frozen backbone (finetune.probe), which then competes as
    epoch 0 like an --init-head; on --resume the probe the run started from is read back."""
    probe = Probe.load(saved, cfg) if resume and saved.exists() else None
    if probe is None:
        chosen = np.concatenate([prep.splits["train"], prep.splits["val"]])
        clips = _eval_set(data.train.items, chosen, data.train.geometry, cfg, prep)
        probe = fit_probe(prep.net, clips, len(prep.splits["train"]), prep.objective.targets, prep.labels, cfg,
                          data.workers, device, amp, failures)
        probe.save(saved, cfg)
    prep.net.head = probe.early.to(device)
    prep.refit_head = probe.final.to(device) if probe.final is not probe.early else None
    prep.head_config, prep.new_head, prep.start_from = asdict(probe.head_config), False, "probe"


def _run_splits(run_dir: Path, index: Cache) -> dict[str, np.ndarray]:
    """The init head's own train/val/test clips, so its frozen numbers and ours are on the same clips."""
    saved = json.loads((run_dir / "splits.json").read_text())
    where = {vid: i for i, vid in enumerate(index.ids)}
    splits = {k: np.array(sorted(where[v] for v in saved.get(k, []) if v in where), dtype=np.int64)
              for k in ("train", "val", "test")}
    if not len(splits["train"]) or not len(splits["val"]):
        raise FinetuneError(f"the source holds none of the train or val clips of --init-head {run_dir}: "
                            "pass the source its store was extracted from")
    return splits


def loaders(items: list[Item], geometry: Geometry, cfg: FinetuneConfig, prep: Prepared,
            device: torch.device) -> Loaders:
    """Training clips (the train split), validation clips, and train + val for the refit."""
    workers = auto_decode_workers(device) if cfg.workers is None else cfg.workers
    train = FrameSampler(prep.objective.sampler, cfg.segments, cfg.pos_window, random=True)
    flow = flow_input(cfg)
    refit = (ClipFrames(items, np.sort(np.concatenate([prep.splits["train"], prep.splits["val"]])), geometry, train,
                        cfg.augment, cfg.seed, flow) if cfg.refit and len(prep.splits["val"]) else None)
    return Loaders(ClipFrames(items, prep.splits["train"], geometry, train, cfg.augment, cfg.seed, flow),
                   _eval_set(items, prep.splits["val"], geometry, cfg, prep), workers, device.type == "cuda", refit)


def _eval_set(items: list[Item], chosen: np.ndarray, geometry: Geometry, cfg: FinetuneConfig,
              prep: Prepared) -> ClipFrames:
    """Evaluation clips: pooling heads see --eval-segments segment centres (more frames, a steadier average, as
    TSN tests on 25), sequence heads the K they were trained on; temporal pairs stay fixed."""
    pooled = prep.head_config["kind"] in POOLING_HEADS
    sampler = FrameSampler(prep.objective.sampler, cfg.eval_segments if pooled else cfg.segments, cfg.pos_window,
                           random=False)
    return ClipFrames(items, chosen, geometry, sampler, augment=False, seed=cfg.seed, flow=flow_input(cfg))


@torch.no_grad()
def _standardize_head(net: VideoNet, data: Loaders, device: torch.device, amp: torch.dtype | None) -> None:
    """A new head standardizes its input like fit-head's (center each dim, one std for all) with the features of
    the first training clips' segment centres, so its learning rate means the same whatever the backbone."""
    first = ClipFrames(data.train.items, data.train.chosen[:STAT_CLIPS], data.train.geometry,
                       FrameSampler("segments", data.train.sampler.segments, random=False), False, data.train.seed,
                       data.train.flow)
    cache, _ = frozen_features(net, first, 1, 0, device, amp, {})
    if len(cache):
        f = cache.features  # (N, D)
        std = f.std(0, unbiased=False).pow(2).mean().sqrt().clamp_min(1e-6)
        net.head.input.set_stats(f.mean(0).to(device), std.expand(f.shape[1]).to(device))


# -- results ------------------------------------------------------------------------------------------------------
def _final_metrics(trainer: Trainer, prep: Prepared, cfg: FinetuneConfig, state: LoopState, precision: str,
                   reference: dict[str, torch.Tensor]) -> dict:
    """val scores the best fit epoch (val picked it; the refit saw val), test the final weights; with --init-head,
    test also scores `reference` (the frozen head the run started from) through this same evaluation."""
    final = cpu_state(trainer.net.state_dict())
    refit = trainer.refit_start is not None
    scored = {"val": _score(trainer, prep, cfg, "val", trainer.best, state)}
    if refit:
        scored["test_early"] = _score(trainer, prep, cfg, "test", trainer.best, state)
    if not prep.new_head and len(prep.splits["test"]):
        state.start = {**(state.start or {}),
                       "test": _score(trainer, prep, cfg, "test", reference, state)}
    scored["test"] = _score(trainer, prep, cfg, "test", final, state)  # last: the net ends holding `final`
    supervised = isinstance(prep.objective, Supervised)
    eval_split = "test" if scored["test"] else "val"
    metric_key = "accuracy" if supervised else "cos_gap"
    return {
        "kind": "finetune", "objective": cfg.objective, "backbone": cfg.backbone, "modality": cfg.modality,
        "extract_flags": _extract_flow_flags(cfg).strip(),  # what extract needs besides --backbone and --weights
        "head": prep.head_config["kind"], "task": "multiclass" if supervised else "temporal", "split": cfg.split,
        "eval_split": eval_split, "metric_name": metric_key, "metric": scored[eval_split].get(metric_key),
        **scored, "labels": prep.labels,
        "n_params": count_params(trainer.net), "n_train": len(prep.splits["train"]),
        "n_val": len(prep.splits["val"]), "n_test": len(prep.splits["test"]), "best_epoch": state.best_epoch,
        "epochs_run": sum(r["phase"] == "fit" for r in state.history), "refit": refit,
        "eval_segments": trainer.data.val.sampler.segments, "precision": precision, "device": str(trainer.device),
        "train_seconds": sum(r["seconds"] for r in state.history),
        "failed": sorted(state.failures.items()), "init_head": cfg.init_head, "start": state.start,
        "start_from": prep.start_from, "kept": "start" if state.best_epoch == 0 and state.start else "fine-tuned",
    }


def _score(trainer: Trainer, prep: Prepared, cfg: FinetuneConfig, split: str, weights: dict[str, torch.Tensor],
           state: LoopState) -> dict | None:
    """The objective's metrics of `weights` (loaded into the net) on one split; None for an empty split."""
    if not len(prep.splits[split]):
        return None
    trainer.net.load_state_dict(weights)
    dataset = _eval_set(trainer.data.train.items, prep.splits[split], trainer.data.train.geometry, cfg, prep)
    return evaluate(trainer.net, prep.objective, dataset, cfg.batch_size, trainer.data.workers, trainer.device,
                    trainer.amp, state.failures)


def _write_run(out: Path, cfg: FinetuneConfig, prep: Prepared, backbone: Backbone, geometry: Geometry,
               state: LoopState, metrics: dict, index: Cache) -> None:
    weights = {k.removeprefix("backbone."): v for k, v in prep.net.state_dict().items() if k.startswith("backbone.")}
    made = {"finetune": asdict(cfg), "from_weights": backbone.weights_id, "geometry": asdict(geometry)}
    save_atomic(cpu_state(weights), out / BACKBONE_FILE)
    write_json(out / BACKBONE_SIDECAR, {"backbone": cfg.backbone, "config": made})
    metrics["backbone_file"] = str((out / BACKBONE_FILE).resolve())
    metrics["backbone_sha256"] = _sha256(out / BACKBONE_FILE)
    write_json(out / "config.json", {**made, "head": prep.head_config, "labels": prep.labels,
                                      "extract": f"--backbone {cfg.backbone} --weights {out / BACKBONE_FILE}"
                                                 + _extract_flow_flags(cfg)})
    write_json(out / "splits.json", {k: [index.ids[i] for i in v] for k, v in prep.splits.items()})
    write_history(out / "history.csv", state.history)
    plot_curves([r for r in state.history if r["phase"] == "fit"], out / "curves.png", metrics["metric_name"],
                state.best_epoch)


def _extract_flow_flags(cfg: FinetuneConfig) -> str:
    """The extract flags that embed flow as this run trained on it (none for RGB)."""
    if cfg.modality != "flow":
        return ""
    return f" --modality flow --flow {cfg.flow} --flow-stack {cfg.flow_stack}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
