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
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

# The CLI's options, choices and defaults are the library's own config fields and tables (importing them loads
# torch, as every command but info/runs/compact does anyway).
from featstore.config import POOLS
from finetune.config import FinetuneConfig
from heads.budget import MemoryBudget
from heads.config import (FUSE_MODES, PLOTS, RUNS, SPLITS, ClusterConfig, TrainConfig, ZeroShotConfig,
                          default_run_dir)
from heads.kinds import HEAD_KINDS
from pipeline.catalog import CatalogQuery
from pipeline.extract import COMPRESSIONS, ExtractConfig
from pipeline.request import EngineFlags, SamplingFlags
from ui.errors import FAILED_ITEMS, ExitCodes, fail, os_error_line, user_errors  # noqa: F401 (os_error_line: tests)
from ui.options import (Device, Force, Json, OutDir, StoreWeights, choices, config_options, parse_shard, plain,
                        with_settings)
from ui.render import (epoch_progress, extract_progress, finetune_progress, finetune_splits, finetune_title,
                       item_progress, lit, out, print_cluster, print_compacted, print_evaluation, print_explained,
                       print_extract_summary, print_failures, print_finetuned, print_fit, print_fused, print_info,
                       print_launch, print_meta_update, print_metrics, print_pooled, print_predictions,
                       print_repeated, print_runs, print_temporal, print_thumbnails, print_verify, print_zero_shot,
                       progress_bar, show_library_notes, stage_progress, sweep_progress, warn_skipped)

show_library_notes()
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
    repair: Annotated[bool, typer.Option(help="Also rebuild a lost or damaged header from the shards and move bad "
                                         "metadata updates to STORE/_quarantine/ (no re-embedding).")] = False,
) -> None:
    """Check a store: header and shards readable and consistent, settings equal, no video stored twice.

    Exit 0 when every shard is good, 1 when any is bad (also after --quarantine moved them)."""
    from featstore.verify import verify_store

    with user_errors(), progress_bar() as bar:
        task = bar.add_task("verify", total=None, rate="")
        report = verify_store(store, deep=deep, quarantine=quarantine, repair=repair,
                              on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_verify(report)
    if not report.passed:
        raise typer.Exit(1)


PoolKind = choices("PoolKind", *POOLS)


@app.command()
def pool(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="The pooled store: a new or empty directory, or the one an "
                                          "interrupted pool of STORE was writing (resumed).")],
    how: Annotated[PoolKind, typer.Option("--pool", help="Reduce each video's rows to their mean or max.")]
    = PoolKind.mean,
    force: Annotated[bool, typer.Option(help="Replace --out whole even if it holds other files (a store "
                                        "never).")] = False,
) -> None:
    """Write a store with one row per video (same ids, labels, splits): linear, mlp and knn heads and video-level
    cluster-eval then read one row per video."""
    from featstore.pool import pool_store

    with user_errors("the shards written so far stay: rerun the same command to finish"), progress_bar() as bar:
        task = bar.add_task(f"pool {plain(how)}", total=None, rate="")
        result = pool_store(store, out_dir, plain(how), force=force,
                            on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_pooled(result)


HeadKind = choices("HeadKind", *HEAD_KINDS)
SplitKind = choices("SplitKind", *SPLITS)
Plot = choices("Plot", *PLOTS)
Fuse = choices("Fuse", *FUSE_MODES)


@app.command("fit-head")
@config_options(TrainConfig)
def fit_head(
    store: Annotated[Optional[Path], typer.Argument(help="Store directory or compacted .h5 file.")] = None,
    more_stores: Annotated[Optional[list[Path]], typer.Argument(help="More stores: one trunk, a classifier "
                                                                "per store (multi-task).", show_default=False)]
    = None,
    out_dir: OutDir = None,
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
    """Train a head on a store; writes config, history, metrics, checkpoint and plots to the run directory
    (--out, default runs/<store>-<head>)."""
    from heads.api import fit

    stores = [s for s in (store, *(more_stores or []), *(store_opt or [])) if s is not None]
    if not stores:
        fail("give a store: `cli.py fit-head STORE --head linear` (see --help)")
    run_dir = out_dir or default_run_dir(cfg.head, stores[0])
    with user_errors("no run was written; an earlier run in --out is unchanged"), progress_bar() as bar:
        result = fit(stores, cfg, run_dir, fuse=plain(fuse), seeds=seeds, folds=folds, force=force,
                     on_epoch=epoch_progress(bar, cfg.head, cfg.epochs))
    print_fit(result)


@app.command("zero-shot")
@config_options(ZeroShotConfig)
def zero_shot(
    store: Annotated[Path, typer.Argument(help="Store made with a CLIP image tower (--backbone open_clip:ARCH).")],
    out_dir: OutDir = None,
    weights: StoreWeights = None,
    force: Force = False,
    *,
    cfg: ZeroShotConfig,
) -> None:
    """A classifier from the store's own CLIP text tower, one prompt per class, no training; writes a run that
    evaluate, predict, runs and fuse take (--out, default runs/<store>-zeroshot)."""
    from heads.zeroshot import zero_shot as make_zero_shot

    run_dir = out_dir or default_run_dir("zeroshot", store)
    with user_errors("no run was written; an earlier run in --out is unchanged"):
        metrics = make_zero_shot(store, cfg, run_dir, None if weights is None else str(weights), force=force)
    print_zero_shot(metrics, run_dir)


@app.command()
@config_options(MemoryBudget, param="memory")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head.")],
    store: Annotated[Optional[Path], typer.Option(help="Store to score (default: the run's own).")] = None,
    split: Annotated[str, typer.Option(help="train, val, test: the run's own (its splits.json; another store: "
                                       "its rule re-applied); all; or a name in the store's split column "
                                       "(holdout, ...).")] = "test",
    as_json: Json = False,
    report: Annotated[bool, typer.Option(help="Also write per-class and mistakes CSVs + PNGs to "
                                         "RUN/report-<split>.")] = False,
    *,
    memory: MemoryBudget,
) -> None:
    """Re-score a trained head on any split of a store made with the same extraction settings."""
    from heads.api import evaluate as run_evaluate

    with user_errors():
        result = run_evaluate(run, store, split, report=report, memory_budget=memory.memory_budget)
    print_evaluation(result, as_json)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head.")],
    videos: Annotated[list[Path], typer.Argument(help="Video or image files.")],
    top: Annotated[int, typer.Option(min=1, help="Labels shown per file.")] = 5,
    device: Device = "auto",
    weights: StoreWeights = None,
    as_json: Json = False,
) -> None:
    """Embed new files exactly as the run's store was made, apply the head, print the top labels."""
    from heads.api import predict_files

    with user_errors():
        result = predict_files(run, videos, top=top, device=device, weights=weights)
    print_predictions(result, as_json)
    if result.failed:
        raise typer.Exit(FAILED_ITEMS)


@app.command("cluster-eval")
@config_options(ClusterConfig)
def cluster_eval(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    k_range: Annotated[Optional[str], typer.Option(help="Sweep k over LO:HI or LO:HI:STEP (e.g. 5:50), reporting "
                                                   "inertia/silhouette.")] = None,
    out_dir: OutDir = None,
    force: Force = False,
    thumbnails: Annotated[bool, typer.Option(help="Also draw the frames at their 2-D positions (thumbnails.png), "
                                             "re-decoded from the store's paths.")] = False,
    max_points: Annotated[int, typer.Option(min=1, help="At most this many thumbnails (a seeded choice).")] = 400,
    *,
    cfg: ClusterConfig,
) -> None:
    """k-means on the cache, scored against labels: NMI, ARI, purity, accuracy, H(label|cluster), plots
    (--out, default runs/<store>-kmeans)."""
    from heads.cluster import cluster_eval as run_cluster
    from heads.config import parse_k_range

    if thumbnails and cfg.plot == "none":
        fail("--thumbnails draws on the 2-D map: use --plot tsne or --plot pca")
    run_dir = out_dir or default_run_dir("kmeans", store)
    with user_errors("no run was written; an earlier run in --out is unchanged"):
        cfg = replace(cfg, k_range=parse_k_range(k_range))
        with progress_bar() as bar:
            result = run_cluster(store, cfg, run_dir, force=force, on_progress=stage_progress(bar, "cluster"))
    print_cluster(result, run_dir)
    if thumbnails:
        draw_cluster_thumbnails(run_dir, max_points, cfg.seed)


def draw_cluster_thumbnails(run_dir: Path, max_points: int, seed: int) -> None:
    from explain.thumbnails import draw_thumbnails

    with user_errors(), progress_bar() as bar:
        t = bar.add_task("thumbnails", total=None, rate="decoding")
        drawn = draw_thumbnails(run_dir, max_points, seed, lambda done, total: bar.update(t, completed=done,
                                                                                            total=total))
    print_thumbnails(drawn)


@app.command()
@config_options(TrainConfig)
def sweep(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    grid: Annotated[list[str], typer.Option(help="KEY=V1,V2 (a TrainConfig field); repeat for more axes.")],
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (val carvings) per cell; cells compare on means.")] = 1,
    out_dir: OutDir = None,
    force: Force = False,
    *,
    cfg: TrainConfig,
) -> None:
    """Train every cell of a grid on one cache, choose by validation only, score the chosen cell on test once
    (--out, default runs/<store>-sweep); the other options set what every cell shares."""
    from heads.experiments import parse_grid
    from heads.experiments import sweep as run_sweep

    run_dir = out_dir or default_run_dir("sweep", store)
    with user_errors():
        axes = parse_grid(grid, cfg)
        with progress_bar() as bar:
            metrics = run_sweep(store, cfg, axes, run_dir, seeds, sweep_progress(bar), force=force)
    chosen = " ".join(f"{k}={v}" for k, v in metrics["chosen"].items())
    print_repeated(metrics, f"sweep of {metrics['n_cells']} cells × {seeds} seeds → {run_dir}; chosen by val: "
                            f"{chosen}")


@app.command()
def fuse(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories of the same classes.")],
    weights: Annotated[Optional[str], typer.Option(help="One weight per run, e.g. 0.7,0.3 (default: equal; RGB "
                                                   "and flow runs 1 and 1.5, TSN's two streams).")] = None,
    out_dir: OutDir = None,
    force: Force = False,
) -> None:
    """Late fusion: average the runs' probabilities on their common test clips; writes a run that `runs` lists
    (--out, default runs/fuse-<runs>)."""
    from heads.fusion import fuse_runs, parse_weights

    run_dir = out_dir or default_run_dir("fuse-" + "-".join(p.name for p in run_dirs))
    with user_errors():
        metrics = fuse_runs(run_dirs, run_dir, parse_weights(weights), force=force)
    print_fused(metrics, run_dir)


@app.command()
def runs(
    runs_dir: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = RUNS,
    sort: Annotated[Optional[str], typer.Option(help="Sort by this column, best first (e.g. accuracy).")] = None,
    as_json: Json = False,
) -> None:
    """One table comparing every run under RUNS_DIR."""
    from heads.run import list_runs

    with user_errors():
        rows = list_runs(runs_dir, sort, on_bad=warn_skipped)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        fail(f"no runs under {runs_dir}: train one with `cli.py fit-head STORE --out {runs_dir}/NAME`")
    print_runs(rows, runs_dir)


# -- explain: Grad-CAM through the run's backbone + head ---------------------------------------------------------
from explain import METHODS  # noqa: E402  (cheap: no torch, no grad-cam; the choices come from the registry)

Method = choices("Method", *METHODS)


@app.command("explain")
def explain_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by fit-head (on a frame store).")],
    videos: Annotated[Optional[list[Path]], typer.Argument(help="Video or image files.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Frames shown per video, uniformly spaced.")] = 8,
    layer: Annotated[Optional[str], typer.Option(help="Backbone module to map (default: the store's --layer, "
                                                 "else the registry's).")]
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
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = default_run_dir("finetune"),
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's last finished epoch.")] = False,
    split_id: Annotated[int, typer.Option(min=1, max=3, help="Official split for UCF101/HMDB51 roots.")] = 1,
    force: Force = False,
    *,
    cfg: FinetuneConfig,
) -> None:
    """Stage three: train the backbone end to end (supervised) or on temporal coherence (temporal); writes
    RUN/backbone.pt for `extract --weights RUN/backbone.pt`, plus config, history, metrics and curves."""
    from finetune import ClipsLost, NothingTrained, finetune_source

    with user_errors(memory="lower --batch-size or --segments", interrupted=f"interrupted: {out_dir}/checkpoint.pt "
                     "keeps the last finished epoch; rerun with --resume"), progress_bar() as bar:
        try:
            metrics = finetune_source(source, cfg, out_dir, split_id=split_id, resume=resume, force=force,
                                      on_epoch=finetune_progress(bar, cfg.objective, cfg.epochs))
        except NothingTrained as e:
            print_failures(sorted(e.failures.items()), " (all in metrics.json)")
            fail(f"{e}; fix the clips above (nothing was written to {out_dir})", code=2)
        except ClipsLost as e:  # the clips in hand when decode workers died or hung; the checkpoint is kept
            fail(str(e), code=FAILED_ITEMS)
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


@app.command()
@config_options(CatalogQuery, param="query")
def backbones(
    query: CatalogQuery,
    check: Annotated[Optional[Path], typer.Option(help="A weights file to check against the sha256 of the files "
                                                  "the registry knows (offline).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="With --check: also load the file into this backbone.")]
    = None,
    as_json: Json = False,
) -> None:
    """Every family's backbones (dim, rows, weights local, files) or, with --check, whether a weights file is one of
    torchvision's."""
    from pipeline.catalog import catalog
    from pipeline.weights_check import check_weights
    from ui.render import print_backbones, print_weights_check

    with user_errors():
        if check is None:
            return print_backbones(catalog(query), as_json)
        result = check_weights(check, backbone)
    print_weights_check(result, as_json)
    if not result.ok:
        raise typer.Exit(1)


def main() -> None:
    app()  # ExitCodes maps every outcome to the documented exit code


if __name__ == "__main__":
    main()
