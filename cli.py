"""framecache command line: a thin layer over pipeline/, featstore/ and heads/.

Exit codes (README, tests/test_faults.py): 0 success; 1 user error, bad flag values included (one line, no
traceback); 2 finished with failed items; 130 interrupted by SIGINT (Ctrl-C); 143 stopped by SIGTERM.
"""
from __future__ import annotations

import gc

# Startup: the imports below (torch, torchvision) create about a million objects that live as long as the process;
# the cyclic collector would walk them all several times while they load (~0.5 s of a ~3.5 s start on 2 cores).
gc.disable()

import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

# The CLI's options, choices and defaults are the library's own config fields and tables (importing them loads
# torch, as every command but info/runs/compact does anyway).
from finetune.config import FinetuneConfig
from heads.config import LEVELS, PLOTS, POOLS, SPLITS, TrainConfig
from heads.models import HEADS
from pipeline.extract import COMPRESSIONS, ExtractConfig
from pipeline.request import EngineFlags, SamplingFlags
from ui.errors import FAILED_ITEMS, ExitCodes, fail, os_error_line, user_errors  # noqa: F401 (os_error_line: tests)
from ui.options import Device, Force, choices, config_options, parse_shard, plain, with_settings
from ui.render import (err, extract_progress, finetune_progress, finetune_splits, finetune_title, item_progress, lit,
                       out, print_compacted, print_explained, print_extract_summary, print_failures, print_finetuned,
                       print_info, print_launch, print_meta_update, print_temporal, print_verify, progress_bar)

gc.freeze()  # what is loaded by now stays for the process: later full collections need not walk it again
gc.enable()

app = typer.Typer(cls=ExitCodes, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cache per-frame embeddings of videos/images in HDF5; train and evaluate heads on the cache.")

# torch's quantized and TypedStorage deprecation notices say nothing a user can act on.
warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")

Compression = choices("Compression", *COMPRESSIONS)


@app.command()
@config_options(ExtractConfig)
@config_options(SamplingFlags, param="sampling")
@config_options(EngineFlags, param="engine")
def extract(
    source: Annotated[Path, typer.Argument(help="Manifest CSV, folder-per-class, UCF101/HMDB51 root, or a file.")],
    store: Annotated[Optional[Path], typer.Option(help="Store directory (default: stores/<source>-<backbone>).")]
    = None,
    shard: Annotated[Optional[str], typer.Option(help="i/N: process part i of N (one writer per part); auto: "
                                                 "from Slurm array / torchrun variables.")] = None,
    split_id: Annotated[int, typer.Option(min=1, max=3, help="Official split for UCF101/HMDB51 roots.")] = 1,
    classes: Annotated[Optional[str], typer.Option(help="Only these classes, comma-separated: A,B,C.")] = None,
    classes_file: Annotated[Optional[Path], typer.Option(help="Only the classes listed in this file.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="At most N items per class, whole groups.")] = None,
    update_meta: Annotated[bool, typer.Option(help="Only record the source's labels/groups/splits for items "
                                              "already in --store; nothing is embedded.")] = False,
    *,
    cfg: ExtractConfig,
    sampling: SamplingFlags,
    engine: EngineFlags,
) -> None:
    """Decode, sample and embed every item of SOURCE into a resumable HDF5 store.

    --shard auto reads the part from a Slurm job array or torchrun; --engine ray runs the parts as Ray tasks."""
    from pipeline.request import extract_source, launched, subset_for, update_source_meta

    if update_meta:
        with user_errors():
            changes = update_source_meta(source, store, split_id)
        return print_meta_update(changes, store)
    with user_errors("every finished item is saved: rerun the same command to resume") as stop:
        cfg = with_settings(cfg, sampling=sampling.resolve(cfg.backbone), shard=parse_shard(shard))
        if shard == "auto":
            cfg, launch = launched(cfg)
            print_launch(launch, cfg)
        with progress_bar() as bar:
            result = extract_source(source, cfg, store, split_id=split_id, engine=engine,
                                    subset=subset_for(classes, classes_file, per_class),
                                    on_progress=extract_progress(bar, stop))
    print_extract_summary(result)
    if result.failed:
        raise typer.Exit(FAILED_ITEMS)


@app.command()
def info(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="Print every failed item (ID<TAB>reason), nothing else.")]
    = False,
) -> None:
    """Describe a store: counts, backbone, config, fingerprint, failures."""
    from featstore import open_store
    from featstore.parts import parts_without_shards, store_parts

    with user_errors(), open_store(store) as s:
        summary, parts = s.summary(), store_parts(s)
    print_info(store, summary, parts, parts_without_shards(parts), as_json, failed)


@app.command()
def compact(
    store: Annotated[Path, typer.Argument(help="Store directory.")],
    out_file: Annotated[Path, typer.Argument(help="Output .h5 file, usable as a store everywhere.")],
    compression: Annotated[Compression, typer.Option(help="HDF5 compression.")] = Compression.gzip,
    force: Annotated[bool, typer.Option(help="Replace OUT.h5 even if it is not a compaction of this store "
                                        "(a store's own files never).")] = False,
) -> None:
    """Write a store as one portable HDF5 file."""
    from featstore import compact as run_compact

    with user_errors():
        path = run_compact(store, out_file, None if compression is Compression.none else compression.value,
                           force=force)
    print_compacted(path)


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    deep: Annotated[bool, typer.Option(help="Also read every block of every shard and check values are finite.")]
    = False,
    quarantine: Annotated[bool, typer.Option(help="Move bad shards to STORE/_quarantine/; the next extract redoes "
                                             "their videos.")] = False,
) -> None:
    """Check a store: header and shards readable and consistent, settings equal, no video stored twice.

    Exit 0 when every shard is good, 1 when any is bad (also after --quarantine moved them)."""
    from featstore.verify import verify_store

    with user_errors(), progress_bar() as bar:
        task = bar.add_task("verify", total=None, rate="")
        report = verify_store(store, deep=deep, quarantine=quarantine,
                              on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_verify(report)
    if not report.passed:
        raise typer.Exit(1)


HeadKind = choices("HeadKind", *HEADS)
SplitKind = choices("SplitKind", *SPLITS)


def default_run_dir(store: Path, head: str) -> Path:
    return Path("runs") / f"{store.stem}-{head}"


Fuse = choices("Fuse", "concat")


@app.command("fit-head")
@config_options(TrainConfig)
def fit_head(
    store: Annotated[Optional[Path], typer.Argument(help="Store directory or compacted .h5 file.")] = None,
    more_stores: Annotated[Optional[list[Path]], typer.Argument(help="More stores: one trunk, a classifier "
                                                                "per store (multi-task).", show_default=False)]
    = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/<store>-<head>).")]
    = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="Train with N seeds (N val carvings): mean ± std.")]
    = None,
    folds: Annotated[Optional[int], typer.Option(min=2, help="K-fold group-aware CV on the training split.")]
    = None,
    store_opt: Annotated[Optional[list[Path]], typer.Option("--store", help="A store (repeat: --store A --store B).")]
    = None,
    fuse: Annotated[Optional[Fuse], typer.Option(help="concat: the same videos from two stores, features joined.")]
    = None,
    force: Force = False,
    *,
    cfg: TrainConfig,
) -> None:
    """Train a head on a store; writes config, history, metrics, checkpoint and plots to the run directory."""
    from heads.rundir import check_run_folder
    from heads.run import fit_head as run_fit

    stores = [s for s in (store, *(more_stores or []), *(store_opt or [])) if s is not None]
    if not stores:
        fail("give a store: `cli.py fit-head STORE --head linear` (see --help)")
    store = stores[0]
    with user_errors("no run was written; an earlier run in --out is unchanged"):
        run_dir = out_dir or default_run_dir(store, cfg.head)
        with progress_bar() as bar:
            t = bar.add_task(f"fit {cfg.head}", total=cfg.epochs, rate="")

            def on_epoch(row: dict) -> None:
                phase = row.get("phase", "fit")
                shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("train_loss", "val_loss", "val_metric")
                                  if isinstance(row.get(k), float) and row[k] == row[k])  # skip NaN
                bar.update(t, description=f"{phase} {cfg.head} {row.get('member', '')}",
                           completed=row.get("epoch", 0), total=row.get("epochs", cfg.epochs), rate=shown)

            if fuse or len(stores) > 1 or seeds or folds:
                check_run_folder(run_dir, force)
            if fuse or len(stores) > 1:
                metrics = fit_several(stores, cfg, run_dir, on_epoch, fuse, seeds or folds)
            elif seeds or folds:
                metrics = fit_repeated(store, cfg, run_dir, on_epoch, seeds, folds)
            else:
                metrics = run_fit(store, cfg, run_dir, on_epoch, force=force)
    if "fusion" in metrics:
        report_fusion(metrics["fusion"])
    if metrics.get("kind") == "multitask":
        print_metrics({f"{name} {part}": m for name, parts in metrics["per_store"].items()
                       for part, m in parts.items()} | {"mean test": metrics["test"]},
                      f"{metrics.get('head')}, one trunk for {len(metrics['tasks'])} stores → {run_dir}")
        return
    if metrics.get("kind") == "repeated":
        print_repeated(metrics, f"{metrics.get('head')} on {metrics.get('backbone')}, {metrics['n']} "
                                f"{metrics['mode']} → {run_dir}")
        return
    print_metrics({"val": metrics.get("val"), "test": metrics.get("test")},
                  f"{metrics.get('head')} on {metrics.get('backbone')} → {run_dir}")


def print_metrics(by_split: dict[str, dict], title: str) -> None:
    """One row per split with the headline metrics that are present."""
    keys = ("accuracy", "clip_accuracy", "top5_accuracy", "macro_f1", "micro_f1", "mAP", "mAP@1", "mAP@3", "mAP@5")
    rows = {name: m for name, m in by_split.items() if isinstance(m, dict)}
    shown = [k for k in keys if any(k in m for m in rows.values())]
    t = Table(title=title)
    t.add_column("split")
    for k in shown:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(name, *[f"{m[k]:.3f}" if isinstance(m.get(k), float) else "" for k in shown])
    out.print(t)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head.")],
    store: Annotated[Optional[Path], typer.Option(help="Store to score (default: the run's own).")] = None,
    split: Annotated[str, typer.Option(help="Split name in the store (train, val, test, holdout, ...).")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
    report: Annotated[bool, typer.Option(help="Also write per-class and mistakes CSVs + PNGs to "
                                         "RUN/report-<split>.")] = False,
) -> None:
    """Re-score a trained head on any split of a store made with the same extraction settings."""
    from heads.multitask import evaluate_multi, is_multitask
    from heads.run import evaluate_run, load_run

    with user_errors():
        refuse_fused(load_run(run)[1], run)
        if is_multitask(load_run(run)[1]):
            if report:
                fail("--report covers single-store runs; evaluate each store's run on its own for a report")
            per_store = evaluate_multi(run, split)
            if as_json:
                print(json.dumps(per_store, default=float))
            else:
                print_metrics({f"{name} {split}": m for name, m in per_store.items()}, f"{run}: one row per store")
            return
        metrics = evaluate_run(run, store, split)
        if report:
            write_evaluate_report(run, store, split)
    if as_json:
        print(json.dumps(metrics, default=float))
        return
    print_metrics({split: metrics}, f"{metrics.get('head')} ({run}) on {metrics.get('store')}, "
                                    f"{metrics.get('n')} clips")


def write_evaluate_report(run: Path, store: Optional[Path], split: str) -> None:
    from heads.report import write_report
    from heads.run import split_predictions

    name = f"report-{split}" if store is None else f"report-{store.stem}-{split}"
    paths = write_report(split_predictions(run, store, split), run / name, split)
    err.print(f"report: {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head.")],
    videos: Annotated[list[Path], typer.Argument(help="Video or image files.")],
    top: Annotated[int, typer.Option(min=1, help="Labels shown per file.")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:i.")] = "auto",
    weights: Annotated[Optional[Path], typer.Option(help="The store's weights file, if it moved since extract "
                                                    "(checked against the sha256 the store recorded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Embed new files exactly as the run's store was made, apply the head, print the top labels."""
    import numpy as np

    from heads.run import load_run, predict_features
    from pipeline.extract import embed_files

    with user_errors():
        model, ckpt = load_run(run)
        refuse_fused(ckpt, run)
        records = embed_files([str(v) for v in videos], ckpt["store_config"], device,
                              None if weights is None else str(weights))
        ok = [r for r in records if r.status == "ok"]
        probs = predict_features(model, ckpt, [r.features for r in ok]) if ok else np.zeros((0, 0))
    labels, rows = ckpt["labels"], []
    for r, p in zip(ok, probs):
        order = np.argsort(-p)[:top]
        rows.append({"path": r.video_id, "top": [{"label": labels[i], "prob": round(float(p[i]), 4)} for i in order]})
    rows = per_store_rows(ckpt, ok, probs, top) or rows
    if ckpt["task"] == "multilabel":  # the decision the run was scored with: every label at/above its threshold
        for row, p in zip(rows, probs):
            row["labels"] = [labels[i] for i in np.flatnonzero(p >= ckpt["threshold"])]
            row["threshold"] = ckpt["threshold"]
    failed = [r for r in records if r.status != "ok"]
    if as_json:
        print(json.dumps(rows + [{"path": r.video_id, "error": r.error} for r in failed]))
    else:
        for row in rows:
            decided = (f" → labels at ≥ {row['threshold']:.2f}: {', '.join(row['labels']) or '(none)'}"
                       if "labels" in row else "")
            out.print(f"[bold]{row['path']}[/]: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"])
                      + decided, highlight=False)
        for r in failed:
            err.print(f"[red]failed[/] {r.video_id}: {r.error}", highlight=False)
    if failed:
        raise typer.Exit(FAILED_ITEMS)


Level = choices("Level", *LEVELS)
Pool = choices("Pool", *POOLS)
Plot = choices("Plot", *PLOTS)


@app.command("cluster-eval")
def cluster_eval(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    k: Annotated[Optional[int], typer.Option(min=2, help="Clusters (default: number of labels).")] = None,
    level: Annotated[Level, typer.Option(help="video: pooled clips; frame: every sampled frame.")] = Level.video,
    pool: Annotated[Pool, typer.Option(help="Pooling of a clip's frames at --level video.")] = Pool.mean,
    split: Annotated[Optional[str], typer.Option(help="Cluster only this split (default: all).")] = None,
    fit_split: Annotated[Optional[str], typer.Option(help="Fit centroids on this split, score --split.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Repeat with this many seeds; report mean ± std.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    n_init: Annotated[int, typer.Option(min=1)] = 10,
    pca: Annotated[Optional[int], typer.Option(min=1, help="Reduce to this many PCA components first.")] = None,
    whiten: Annotated[bool, typer.Option(help="Whiten the PCA components.")] = False,
    k_range: Annotated[Optional[str], typer.Option(help="Sweep k over LO:HI or LO:HI:STEP (e.g. 5:50), reporting "
                                                   "inertia/silhouette.")] = None,
    plot: Annotated[Plot, typer.Option(help="2-D picture of the points.")] = Plot.tsne,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/<store>-kmeans).")]
    = None,
    force: Force = False,
    thumbnails: Annotated[bool, typer.Option(help="Also draw the frames at their 2-D positions (thumbnails.png), "
                                             "re-decoded from the store's paths.")] = False,
    max_points: Annotated[int, typer.Option(min=1, help="At most this many thumbnails (a seeded choice).")] = 400,
) -> None:
    """k-means on the cache, scored against labels: NMI, ARI, purity, accuracy, H(label|cluster), plots."""
    from heads.cluster import cluster_eval as run_cluster

    if thumbnails and plot is Plot.none:
        fail("--thumbnails draws on the 2-D map: use --plot tsne or --plot pca")

    sweep = None
    if k_range is not None:
        try:
            sweep = tuple(int(x) for x in k_range.split(":"))
        except ValueError:
            fail(f"--k-range expects LO:HI or LO:HI:STEP such as 5:50, got {k_range!r}")
    run_dir = out_dir or Path("runs") / f"{store.stem}-kmeans"
    with user_errors("no run was written; an earlier run in --out is unchanged"), progress_bar() as bar:
        t = bar.add_task("cluster", total=None, rate="")

        def on_progress(p: dict) -> None:
            bar.update(t, description=p["stage"], total=p["total"], completed=p["done"])

        result = run_cluster(store, run_dir, k=k, level=level.value, pool=pool.value, split=split,
                             fit_split=fit_split, seeds=seeds, seed=seed, n_init=n_init, pca=pca, whiten=whiten,
                             k_range=sweep, plot=plot.value, on_progress=on_progress, force=force)
    print_cluster(result, run_dir)
    if thumbnails:
        draw_cluster_thumbnails(run_dir, max_points, seed)


def draw_cluster_thumbnails(run_dir: Path, max_points: int, seed: int) -> None:
    from explain.thumbnails import draw_thumbnails

    with user_errors(), progress_bar() as bar:
        t = bar.add_task("thumbnails", total=None, rate="decoding")
        drawn = draw_thumbnails(run_dir, max_points, seed, lambda done, total: bar.update(t, completed=done,
                                                                                            total=total))
    out.print(f"thumbnails: {drawn.drawn} of {drawn.n_points} points drawn → {drawn.png}", highlight=False)
    if drawn.skipped:
        err.print(f"note: {len(drawn.skipped)} file(s) could not be decoded again and were skipped: "
                  + "; ".join(f"{vid} ({why})" for vid, why in drawn.skipped[:5])
                  + (" ..." if len(drawn.skipped) > 5 else ""), highlight=False, soft_wrap=True)


def print_cluster(result: dict, run_dir: Path) -> None:
    t = Table(title=f"k-means → {run_dir}")
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("std", justify="right")
    mean, std = result.get("metrics", {}), result.get("std", {})
    for name, value in mean.items():
        if isinstance(value, (int, float)):
            t.add_row(name, f"{value:.4f}", f"{std.get(name, 0.0):.4f}" if name in std else "")
    out.print(t)


# -- repeated runs and sweeps (heads.experiments) ---------------------------------------------------------
def fit_repeated(store: Path, cfg, run_dir: Path, on_epoch, seeds: Optional[int], folds: Optional[int]) -> dict:
    from heads.experiments import fit_folds, fit_seeds

    if seeds and folds:
        fail("choose one of --seeds (repeated training) and --folds (cross-validation)")
    if folds:
        return fit_folds(store, cfg, run_dir, folds, on_epoch)
    return fit_seeds(store, cfg, run_dir, seeds, on_epoch)


def print_repeated(metrics: dict, title: str) -> None:
    """mean ± std per split of a repeated run or a sweep's chosen cell."""
    keys = ("accuracy", "top5_accuracy", "macro_f1", "micro_f1", "mAP", "mAP@1", "mAP@3", "mAP@5")
    rows = {name: (metrics[name], metrics.get(f"{name}_std") or {}) for name in ("val", "cv", "test")
            if isinstance(metrics.get(name), dict)}
    shown = [k for k in keys if any(k in m for m, _ in rows.values())]
    t = Table(title=title)
    t.add_column("split")
    for k in shown:
        t.add_column(k, justify="right")
    for name, (m, sd) in rows.items():
        t.add_row(name, *[f"{m[k]:.3f} ± {sd.get(k, 0.0):.3f}" if isinstance(m.get(k), float) else ""
                          for k in shown])
    out.print(t)


@app.command()
def sweep(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2 (a TrainConfig field); repeat for more axes.")],
    head: Annotated[HeadKind, typer.Option(help="Head architecture.")] = HeadKind.linear,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (val carvings) per cell; cells compare on means.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="First seed.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    split: Annotated[Optional[SplitKind], typer.Option()] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:i.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Sweep directory (default runs/<store>-sweep).")]
    = None,
    force: Force = False,
) -> None:
    """Train every cell of a grid on one cache, choose by validation only, score the chosen cell on test once."""
    from heads.experiments import parse_grid
    from heads.experiments import sweep as run_sweep
    from heads.rundir import check_run_folder
    from heads.train import TrainConfig

    given = {k: plain(v) for k, v in
             {"head": head, "seed": seed, "epochs": epochs, "split": split, "device": device}.items() if v is not None}
    run_dir = out_dir or Path("runs") / f"{store.stem}-sweep"
    with user_errors():
        cfg = TrainConfig(**given)
        axes = parse_grid(grid, cfg)
        check_run_folder(run_dir, force)
        with progress_bar() as bar:
            t = bar.add_task("sweep", total=None, rate="")

            def on_progress(p: dict) -> None:
                cell = " ".join(f"{k}={v}" for k, v in p["params"].items())
                rate = f"{cell}: val {p['val']:.3f}" if "val" in p else f"test of {cell}"
                bar.update(t, description=p["stage"], total=p["total"], completed=p["done"], rate=rate)

            metrics = run_sweep(store, cfg, axes, run_dir, seeds, on_progress)
    chosen = " ".join(f"{k}={v}" for k, v in metrics["chosen"].items())
    print_repeated(metrics, f"sweep of {metrics['n_cells']} cells × {seeds} seeds → {run_dir}; chosen by val: "
                            f"{chosen}")


def per_store_rows(ckpt: dict, records, probs, top: int) -> list[dict]:
    """predict on a multi-task run: the top labels of each store, named "store:label"."""
    import numpy as np

    from heads.multitask import is_multitask, predict_multi

    if not is_multitask(ckpt):
        return []
    rows = []
    for r, by_store in zip(records, predict_multi(ckpt, probs)):
        shown = [{"store": name, "label": f"{name}:{labels[i]}", "prob": round(float(p[i]), 4)}
                 for name, (labels, p) in by_store.items() for i in np.argsort(-p)[:top]]
        rows.append({"path": r.video_id, "top": shown})
    return rows


# -- fusion (heads.fusion) ------------------------------------------------------------------------------
def parse_floats(text: Optional[str], flag: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        fail(f"{flag} expects comma-separated numbers such as 0.5,0.5, got {text!r}")


def fit_several(stores: list[Path], cfg, run_dir: Path, on_epoch, fuse, repeated) -> dict:
    """fit-head on two or more stores: concat fusion (--fuse) or one trunk with a classifier per store."""
    from heads.fusion import fit_fused

    if repeated:
        fail("--seeds/--folds take a single store")
    from heads.multitask import fit_multi

    if fuse:
        return fit_fused(stores, cfg, run_dir, fuse.value, on_epoch)
    return fit_multi(stores, cfg, run_dir, on_epoch)


def refuse_fused(ckpt: dict, run: Path) -> None:
    stores = ckpt.get("store_config", {}).get("fused_stores")
    if stores:
        fail(f"{run} was trained on the features of {' and '.join(s['store'] for s in stores)} joined (--fuse): "
             "evaluate/predict cannot rebuild them yet; its metrics.json holds val and test")


def report_fusion(info: dict) -> None:
    left = {Path(s).name: n for s, n in info["left_out"].items() if n}
    if left:
        err.print(f"fused {info['n_common']} videos held by both stores; left out (in one store only): "
                  + ", ".join(f"{n} of {s} (e.g. {info['left_out_examples'][k][0]})"
                              for (s, n), k in zip(left.items(), [k for k, v in info["left_out"].items() if v])),
                  highlight=False, soft_wrap=True)
    if info.get("label_mismatches"):
        err.print(f"{info['label_mismatches']} common videos have other labels in the second store; the first "
                  "store's labels were used", highlight=False)


@app.command()
def fuse(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories of the same classes.")],
    weights: Annotated[Optional[str], typer.Option(help="One weight per run, e.g. 0.7,0.3 (default: equal).")]
    = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/fuse-<runs>).")]
    = None,
    force: Force = False,
) -> None:
    """Late fusion: average the runs' probabilities on their common test clips; writes a run that `runs` lists."""
    from heads.fusion import fuse_runs
    from heads.rundir import check_run_folder

    run_dir = out_dir or Path("runs") / ("fuse-" + "-".join(p.name for p in run_dirs))
    with user_errors():
        check_run_folder(run_dir, force)
        metrics = fuse_runs(run_dirs, run_dir, parse_floats(weights, "--weights"))
    print_metrics({"fused": metrics["test"], **metrics["alone"]},  # alone: keyed by each run's path as given
                  f"late fusion on {metrics['n_common']} common test clips → {run_dir}")


RUN_TABLE = ("name", "backbone", "head", "task", "split", "accuracy", "macro_f1", "mAP", "micro_f1", "nmi", "n_params",
             "seconds")


@app.command()
def runs(
    runs_dir: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
    sort: Annotated[Optional[str], typer.Option(help="Sort by this column, best first (e.g. accuracy).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """One table comparing every run under RUNS_DIR."""
    from heads.run import list_runs

    with user_errors():
        rows = list_runs(runs_dir, sort, on_bad=lambda path, why: err.print(
            f"[yellow]warning:[/] skipped {path}: {why}", highlight=False, soft_wrap=True))
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        fail(f"no runs under {runs_dir}: train one with `cli.py fit-head STORE --out {runs_dir}/NAME`")
    cols = [c for c in RUN_TABLE if any(r.get(c) is not None for r in rows)]
    differing = differing_params(rows)
    t = Table(title=f"runs in {runs_dir} (all columns: --json)")
    for c in [*cols[:3], *differing, *cols[3:]]:
        numeric = any(isinstance(r.get(c), (int, float)) for r in rows)
        t.add_column(c, justify="right" if numeric else "left", min_width=min(len(c), 8))
    for r in rows:
        params = [str(r["params"].get(k, "")) for k in differing]
        cells = [run_cell(r, c) for c in cols]
        t.add_row(*cells[:3], *params, *cells[3:])
    out.print(t)


def differing_params(rows: list[dict]) -> list[str]:
    """Train settings (config.json) that differ between the listed runs; head is a column of its own."""
    keys = sorted({k for r in rows for k in r.get("params", {})} - {"head", "device"})
    trained = [r.get("params", {}) for r in rows if r.get("params")]
    return [k for k in keys if len({json.dumps(p.get(k)) for p in trained}) > 1]


def run_cell(row: dict, col: str) -> str:
    value, std = row.get(col), row.get(f"{col}_std")
    if isinstance(value, float):
        digits = 1 if col == "seconds" else 3
        return f"{value:.{digits}f} ± {std:.{digits}f}" if isinstance(std, float) else f"{value:.{digits}f}"
    return str(value if value is not None else "")


# -- explain: Grad-CAM through the run's backbone + head ---------------------------------------------------------
from explain import METHODS  # noqa: E402  (cheap: no torch, no grad-cam; the choices come from the registry)

Method = choices("Method", *METHODS)


@app.command("explain")
def explain_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head (on a frame store).")],
    videos: Annotated[Optional[list[Path]], typer.Argument(help="Video or image files.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Frames shown per video, uniformly spaced.")] = 8,
    layer: Annotated[Optional[str], typer.Option(help="Backbone module to map (default: the registry's).")]
    = None,
    method: Annotated[Method, typer.Option(help="Class activation map method.")] = Method.gradcam,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to explain (default: predicted).")]
    = None,
    mistakes: Annotated[Optional[int], typer.Option(min=1, help="Explain the N most confident mistakes of the "
                                                    "run's test split (instead of VIDEO files).")] = None,
    device: Device = "auto",
    weights: Annotated[Optional[Path], typer.Option(help="The store's weights file, if it moved since extract "
                                                    "(checked against the sha256 the store recorded).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNGs (default RUN/explain).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print [{path, label, prob, png}] as JSON.")] = False,
    force: Force = False,
) -> None:
    """Heat maps of where the run's backbone + head look, one PNG per video (row of frames, label, prob)."""
    from explain.batch import explain_run
    from explain.core import ExplainConfig

    with user_errors(), progress_bar() as bar:
        cfg = ExplainConfig(frames, layer, method.value, class_name, device, None if weights is None else str(weights))
        results = explain_run(run, cfg, out_dir, videos=videos, mistakes=mistakes, force=force,
                              on_progress=item_progress(bar, "explain"))
    print_explained(results, as_json)
    if any(r.error for r in results):
        raise typer.Exit(FAILED_ITEMS)


@app.command()
@config_options(FinetuneConfig)
def finetune(
    source: Annotated[Path, typer.Argument(help="Anything extract accepts: manifest, class folders, UCF101/HMDB51 "
                                           "root.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/finetune"),
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's last finished epoch.")] = False,
    split_id: Annotated[int, typer.Option(min=1, max=3, help="Official split for UCF101/HMDB51 roots.")] = 1,
    force: Force = False,
    *,
    cfg: FinetuneConfig,
) -> None:
    """Stage three: train the backbone end to end (supervised) or on temporal coherence (temporal); writes
    RUN/backbone.pt for `extract --weights RUN/backbone.pt`, plus config, history, metrics and curves."""
    from finetune import NothingTrained, finetune_source

    with user_errors(memory="lower --batch-size or --segments", interrupted=f"interrupted: {out_dir}/checkpoint.pt "
                     "keeps the last finished epoch; rerun with --resume"), progress_bar() as bar:
        try:
            metrics = finetune_source(source, cfg, out_dir, split_id=split_id, resume=resume, force=force,
                                      on_epoch=finetune_progress(bar, cfg.objective, cfg.epochs))
        except NothingTrained as e:
            print_failures(sorted(e.failures.items()), " (all in metrics.json)")
            fail(f"{e}; fix the clips above (nothing was written to {out_dir})", code=2)
    if metrics["objective"] == "supervised":
        print_metrics(finetune_splits(metrics), finetune_title(metrics, out_dir))
    else:
        print_temporal(metrics, finetune_title(metrics, out_dir))
    print_finetuned(metrics, out_dir)
    if metrics["failed"]:
        raise typer.Exit(FAILED_ITEMS)


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Where the synthetic clips, store and runs go.")] = Path("data/demo"),
    clips_per_class: Annotated[int, typer.Option(min=4, help="Clips per class (4 classes).")] = 80,
) -> None:
    """The whole pipeline offline on generated clips whose classes differ only in temporal order."""
    from data.demo import Demo

    d = Demo(root, clips_per_class)
    if not d.manifest.exists():
        out.print(f"[bold]1/4[/] generating {d.n_clips} synthetic clips in {lit(d.manifest.parent)} "
                  "(grow vs shrink, brighten vs darken: the same frames in opposite order)")
        d.make_clips()
    out.print(f"[bold]2/4[/] extract: resnet18, random init (offline), every frame, 112 px → {lit(d.store)}")
    extract(d.manifest, store=d.store, **d.extract)  # a command called as a function: its defaults are the CLI's
    for head in d.heads:
        out.print(f"[bold]3/4[/] fit-head {head} (official split from the manifest)")
        fit_head(d.store, head=head, hidden=d.hidden, out_dir=d.runs / head)
    out.print("[bold]4/4[/] cluster-eval (k-means on mean-pooled clips)")
    cluster_eval(d.store, plot=Plot.pca, out_dir=d.runs / "kmeans")
    runs(d.runs)
    out.print("The order-blind head (linear: mean of frames) cannot tell a clip from its reverse and sits near "
              "chance on each pair;\nthe sequence head (lstm) reads the order. k-means on pooled features is "
              f"order-blind too. Plots and metrics: {lit(d.runs)}/*/")


def main() -> None:
    app()  # ExitCodes maps every outcome to the documented exit code


if __name__ == "__main__":
    main()
