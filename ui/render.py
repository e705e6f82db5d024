"""What commands show: the consoles (results on stdout, progress and errors on stderr), the progress bar, and one
renderer per command result.

Every string that comes from the user or the data (ids, labels, paths, reasons, run names) is escaped (`lit`, or
rich's `escape`): rich would read "[b]" in a label as a tag and drop it, and raise MarkupError on "[/x]".
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click

from featstore.config import SAMPLING_KEYS

out = Console()
err = Console(stderr=True)


UsageError = ClickException  # what the command line itself got wrong: a bad flag value, no command at all


def show_usage_error(e: UsageError) -> None:
    """The help when no command was given, else click's message for the bad flag, as typer formats it."""
    from typer import rich_utils

    if isinstance(e, NoArgsIsHelpError):
        e.show()
    else:
        rich_utils.rich_format_error(e)


def print_error(message: str) -> None:
    """The line a failed command ends with, on stderr. Escaped: a message may hold brackets that are not markup
    (pip install "framecache[ray]")."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_stopped(line: str) -> None:
    """What an interrupted command says as it ends (it may quote paths and ids: escaped)."""
    err.print(escape(line), highlight=False, soft_wrap=True)


class NoteHandler(logging.Handler):
    """What the library says on the `framecache` logger (a header rebuilt from its shards): one line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]note:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def show_library_notes() -> None:
    """Route the library's notes to stderr (once per process; the library itself never prints)."""
    log = logging.getLogger("framecache")
    if not any(isinstance(h, NoteHandler) for h in log.handlers):
        log.addHandler(NoteHandler(logging.WARNING))
        log.propagate = False


def _no_signal() -> None:
    pass


signal_check = _no_signal  # while a command runs, ui.errors.StopSignals points this at its check()


class CheckedProgress(Progress):
    """A progress bar whose every update first raises a stop signal that was swallowed where it landed (inside a
    weakref callback or a finalizer, Python only prints "Exception ignored" and the work would go on)."""

    def update(self, *args, **kwargs) -> None:
        signal_check()
        super().update(*args, **kwargs)


def progress_bar() -> Progress:
    return CheckedProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                           TimeRemainingColumn(), console=err, transient=False)


# -- extract, info, compact, verify, explain, finetune, demo -----------------------------------------------------
SHOWN = 20  # items listed before "... and N more"


def lit(value) -> str:
    """`value` as text that rich prints literally, in a message or a table cell."""
    return escape(str(value))


def print_failures(failed: list, more: str) -> None:
    """The first failed items (id: reason) on stderr; `more` says where the rest are listed."""
    for vid, reason in failed[:SHOWN]:
        err.print(f"[red]failed[/] {lit(vid)}: {lit(reason)}", highlight=False, soft_wrap=True)
    if len(failed) > SHOWN:
        err.print(f"... and {len(failed) - SHOWN} more{lit(more)}", highlight=False, soft_wrap=True)


def info_more(store) -> str:
    return f": `cli.py info {store} --failed` lists them all"


def extract_progress(bar: Progress, stop):
    """extract's progress callback: the bar, and a signal PyAV swallowed raised again (StopSignals.check)."""
    task = bar.add_task("extract", total=None, rate="")

    def on_progress(p: dict) -> None:
        stop.check()
        elapsed = bar.tasks[task].elapsed or 1e-9
        bar.update(task, total=p["total"], completed=p["done"],
                   rate=f"{p['frames'] / elapsed:.0f} rows/s, {p['failed']} failed")
    return on_progress


def print_launch(launch, cfg) -> None:
    cores = f", {cfg.cores} cores for decoding" if cfg.cores else ""
    err.print(f"--shard auto: {lit(launch.describe())}, device {lit(cfg.device)}{cores}", highlight=False,
              soft_wrap=True)


def print_extract_summary(result) -> None:
    t = Table(title=f"extract → {lit(result.store)}", show_header=False)
    for k, v in [("written", result.done - len(result.failed)), ("failed", len(result.failed)),  # done: ok + failed
                 ("already in store", result.skipped),
                 (result.unit, result.frames), (f"{result.unit}/s", f"{result.frames_per_s:.1f}"),
                 ("device / precision", f"{result.device} / {result.precision}"
                  f"{' compiled' if result.compiled else ''}"),
                 ("startup (to first batch)", f"{result.startup_s:.2f} s" if result.startup_s else "-")]:
        t.add_row(k, lit(v))
    out.print(t)
    print_failures(result.failed, info_more(result.store))
    for note in getattr(result, "notes", ()):  # (a Ray run's merged result has none)
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    if getattr(result, "meta_changed", None):  # (a Ray run's merged result has none)
        shown = "; ".join(c.describe() for c in result.meta_changed[:3])
        err.print(f"[yellow]warning:[/] {len(result.meta_changed)} item(s) already in the store have another "
                  f"label/group/split in the source (e.g. {lit(shown)}); the store keeps the old values: rerun "
                  "with --update-meta to record the new ones (no re-embedding)", highlight=False, soft_wrap=True)


def print_meta_update(changes: list, store) -> None:
    for change in changes[:SHOWN]:
        out.print(f"updated {lit(change.describe())}", highlight=False, soft_wrap=True)
    out.print(f"{len(changes)} item(s) updated in {lit(store)} (features unchanged)", highlight=False)


def print_info(store, summary: dict, parts: list, missing: dict, as_json: bool, failed: bool) -> None:
    """info: the store as JSON, its failed items (ID<TAB>reason), or a table with its parts and failures."""
    failures = [i for i in summary["items"] if i["status"] != "ok"]
    if as_json:
        summary["parts"] = [asdict(p) for p in parts]
        summary["parts_without_shards"] = {str(n): idx for n, idx in missing.items()}
        print(json.dumps(summary, indent=2))
    elif failed:
        for it in failures:
            print(f"{it['id']}\t{it['error']}")
    else:
        out.print(store_table(store, summary))
        if any(p.count is not None for p in parts) or len(parts) > 1:
            print_parts(parts, missing)
        print_failures([(it["id"], it["error"]) for it in failures], info_more(store))


def store_table(store, summary: dict) -> Table:
    t = Table(title=f"store {lit(store)}", show_header=False)
    for k in ("videos", "ok", "failed", "frames", "dim", "backbone", "fingerprint", "shards"):
        t.add_row(k, lit(summary[k]))
    cfg = summary["config"]
    t.add_row("weights", lit(cfg.get("weights")))
    for key in ("layer", "token_pool"):  # what a row is, where it is not the backbone's own row (--layer, --pool)
        if cfg.get(key) is not None:
            t.add_row(key, lit(cfg[key]))
    t.add_row("sampling", ", ".join(f"{k}={cfg[k]}" for k in SAMPLING_KEYS if cfg.get(k) is not None))
    t.add_row("input", f"{cfg.get('size')}px, crop={cfg.get('crop')}, resize={cfg.get('resize')}, "
                       f"resize engine={cfg.get('resize_engine') or 'exact'}")  # no key: made by the exact recipe
    splits: dict[str, int] = {}
    for it in summary["items"]:
        splits[it["split"] or "(none)"] = splits.get(it["split"] or "(none)", 0) + 1
    t.add_row("splits", lit(", ".join(f"{k}: {v}" for k, v in sorted(splits.items()))))
    return t


def print_parts(parts, missing: dict[int, list[int]]) -> None:
    """info on a sharded store: what each --shard part (Slurm task, rank, Ray task) has written."""
    t = Table(title="parts")
    for col in ("part", "shards", "items", "ok", "failed"):
        t.add_column(col, justify="left" if col == "part" else "right")
    for p in parts:
        name = p.prefix if p.count is None else f"{p.index}/{p.count}"
        t.add_row(lit(name), str(p.shards), str(p.items), str(p.ok), str(p.failed))
    out.print(t)
    for n, idx in missing.items():
        if idx:
            shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
            out.print(f"{len(idx)} of {n} parts have written nothing: {shown} (not run yet, died before their "
                      "first shard, or no items: rerun the same extract to finish them)", highlight=False)
        else:
            out.print(f"all {n} parts have written shards", highlight=False)


def print_compacted(path: Path) -> None:
    out.print(f"wrote {lit(path)} ({path.stat().st_size / 1e6:.1f} MB)")


def print_pooled(result) -> None:
    """What pool wrote (a featstore.pool.PoolResult)."""
    resumed = f" ({result.resumed} were there already)" if result.resumed else ""
    out.print(f"pooled {result.written + result.resumed} videos{resumed} → {lit(result.out)} "
              f"(fingerprint {result.fingerprint})", highlight=False)


def print_verify(report) -> None:
    t = Table(title=f"verify {lit(report.store)}" + (" (deep)" if report.deep else ""), show_header=False)
    for k, v in [("shards", report.shards), ("bad shards", len(report.bad)), ("videos", report.videos),
                 ("ok", report.ok), ("frames", report.frames)]:
        t.add_row(k, str(v))
    out.print(t)
    print_repaired(report)
    for name, problem in report.bad.items():
        err.print(f"[red]bad[/] {lit(name)}: {lit(problem)}", highlight=False, soft_wrap=True)
    if report.quarantined:
        videos = "videos" if report.lost_videos is None else f"{report.lost_videos} video(s)"
        err.print(f"moved {len(report.quarantined)} file(s) to {lit(Path(report.store) / '_quarantine')}; rerun "
                  f"extract to redo their {videos}", highlight=False, soft_wrap=True)
    elif report.bad:
        err.print(lit(report.fix), highlight=False, soft_wrap=True)
    else:
        out.print("store ok" + ("" if report.deep else " (--deep also reads every frame block)"))


def item_progress(bar: Progress, name: str):
    """A callback (done, total, current item) that moves a bar named `name`."""
    task = bar.add_task(name, total=None, rate="")
    return lambda done, total, current: bar.update(task, completed=done, total=total, rate=lit(Path(current).name))


def print_explained(results: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"path": r.path, "error": r.error} if r.error else
                          {"path": r.path, "label": r.label, "prob": round(r.prob, 4), "png": r.png,
                           "class": r.classes, "true": r.true} for r in results]))
        return
    for r in results:
        if r.error:
            err.print(f"[red]failed[/] {lit(r.path)}: {lit(r.error)}", highlight=False, soft_wrap=True)
        else:
            truth = f" (true {r.true})" if r.true else ""
            out.print(f"[bold]{lit(r.path)}[/]: {lit(r.label)} {r.prob:.3f}{lit(truth)}, maps of "
                      f"{lit(', '.join(r.classes))} → {lit(r.png)}", highlight=False, soft_wrap=True)


def finetune_progress(bar: Progress, objective: str, epochs: int):
    """finetune's per-epoch callback: losses and the validation metric on the bar, the refit said as such."""
    task = bar.add_task(f"finetune {objective}", total=epochs, rate="")

    def on_epoch(row: dict) -> None:
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("train_loss", "val_loss", "val_metric")
                          if isinstance(row.get(k), float) and row[k] == row[k])
        phase = f"finetune {objective}" + (" refit on train+val" if row["phase"] == "refit" else "")
        bar.update(task, completed=row["epoch"], total=row["epochs"], rate=shown, description=phase)
    return on_epoch


def finetune_title(metrics: dict, out_dir: Path) -> str:
    stream = " flow stream" if metrics.get("modality") == "flow" else ""
    return f"finetune {metrics['objective']} {metrics['backbone']}{stream} → {lit(out_dir)}/backbone.pt"


def finetune_splits(metrics: dict) -> dict:
    """A supervised finetune's rows, as print_metrics shows them."""
    start = (metrics.get("start") or {}).get("test")
    return {"val": metrics.get("val"), "test (no refit)": metrics.get("test_early"), "test": metrics.get("test"),
            f"test, {_began(metrics)} as it was": start}


def _began(metrics: dict) -> str:
    """What a supervised finetune's head started as, in words."""
    return "the linear probe" if metrics.get("start_from") == "probe" else "--init-head"


def print_temporal(metrics: dict, title: str) -> None:
    """A temporal (InfoNCE) finetune: loss and cosine similarities of positives and negatives per split."""
    t = Table(title=title)
    for c in ("split", "loss", "pos_cos", "neg_cos", "cos_gap"):
        t.add_column(c, justify="right")
    for name in ("val", "test"):
        if metrics.get(name):
            t.add_row(name, *[f"{metrics[name][k]:.3f}" for k in ("loss", "pos_cos", "neg_cos", "cos_gap")])
    out.print(t)


def print_finetuned(metrics: dict, out_dir: Path) -> None:
    flags = f" {metrics['extract_flags']}" if metrics.get("extract_flags") else ""
    out.print(f"use it: cli.py extract SOURCE --backbone {metrics['backbone']} --weights "
              f"{lit(out_dir)}/backbone.pt{flags}", highlight=False)
    if metrics.get("kept") == "start":
        out.print(f"kept {_began(metrics)} as it was: no fine-tuned epoch scored better on val")
    print_failures(metrics["failed"], " (all in metrics.json)")


# -- stage two: heads, runs, clusters ---------------------------------------------------------------------------------
METRIC_KEYS = ("accuracy", "clip_accuracy", "top5_accuracy", "macro_f1", "micro_f1", "mAP", "mAP@1", "mAP@3",
               "mAP@5")
RUN_TABLE = ("name", "backbone", "head", "task", "split", "accuracy", "macro_f1", "mAP", "micro_f1", "nmi", "n_params",
             "seconds")


def epoch_progress(bar, head: str, epochs: int):
    """fit-head's on_epoch callback: phase, member, epoch and the last losses/metric on the bar."""
    t = bar.add_task(f"fit {head}", total=epochs, rate="")

    def on_epoch(row: dict) -> None:
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("train_loss", "val_loss", "val_metric")
                          if isinstance(row.get(k), float) and row[k] == row[k])  # skip NaN
        bar.update(t, description=f"{row.get('phase', 'fit')} {head} {escape(str(row.get('member', '')))}",
                   completed=row.get("epoch", 0), total=row.get("epochs", epochs), rate=shown)
    return on_epoch


def stage_progress(bar, name: str):
    """An on_progress callback for {"stage", "done", "total"} events (cluster-eval)."""
    t = bar.add_task(name, total=None, rate="")
    return lambda p: bar.update(t, description=p["stage"], total=p["total"], completed=p["done"])


def sweep_progress(bar):
    """sweep's on_progress callback: the cell in training and its val metric, then the chosen cell's test."""
    t = bar.add_task("sweep", total=None, rate="")

    def on_progress(p: dict) -> None:
        cell = " ".join(f"{k}={v}" for k, v in p["params"].items())
        rate = f"{cell}: val {p['val']:.3f}" if "val" in p else f"test of {cell}"
        bar.update(t, description=p["stage"], total=p["total"], completed=p["done"], rate=escape(rate))
    return on_progress


def print_metrics(by_split: dict[str, dict], title: str) -> None:
    """One row per split with the headline metrics that are present."""
    rows = {name: m for name, m in by_split.items() if isinstance(m, dict)}
    shown = [k for k in METRIC_KEYS if any(k in m for m in rows.values())]
    t = Table(title=escape(title))
    t.add_column("split")
    for k in shown:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(escape(name), *[f"{m[k]:.3f}" if isinstance(m.get(k), float) else "" for k in shown])
    out.print(t)


def print_zero_shot(metrics: dict, run_dir: Path) -> None:
    """zero-shot: the run's scores, titled with its backbone, classes and clips (print_metrics escapes the title)."""
    print_metrics({"test": metrics["test"]}, f"zero-shot on {metrics['backbone']}, {len(metrics['labels'])} "
                  f"classes, {metrics['n_scored']} clips scored ({metrics['split']}) → {run_dir}")


def print_fused(metrics: dict, run_dir: Path) -> None:
    """fuse: the fused and each run's own metrics (keyed by each run's path as given) on the common test clips."""
    weights = ",".join(f"{w:.2f}" for w in metrics["weights"])
    print_metrics({"fused": metrics["test"], **metrics["alone"]},
                  f"late fusion on {metrics['n_common']} common test clips, weights {weights} → {run_dir}")


def print_repeated(metrics: dict, title: str) -> None:
    """mean ± std per split of a repeated run or a sweep's chosen cell."""
    rows = {name: (metrics[name], metrics.get(f"{name}_std") or {}) for name in ("val", "cv", "test")
            if isinstance(metrics.get(name), dict)}
    shown = [k for k in METRIC_KEYS if k != "clip_accuracy" and any(k in m for m, _ in rows.values())]
    t = Table(title=escape(title), caption="mean ± sample std (ddof=1)")
    t.add_column("split")
    for k in shown:
        t.add_column(k, justify="right")
    for name, (m, sd) in rows.items():
        t.add_row(name, *[f"{m[k]:.3f} ± {sd.get(k, 0.0):.3f}" if isinstance(m.get(k), float) else ""
                          for k in shown])
    out.print(t)


def print_fit(result) -> None:
    """What fit-head trained (a heads.api.FitResult), by its kind."""
    m, run_dir = result.metrics, result.out
    if result.kind == "fused":
        report_fusion(m["fusion"])
    if result.kind == "multitask":
        per_store = {f"{name} {part}": s for name, parts in m["per_store"].items() for part, s in parts.items()}
        print_metrics(per_store | {"mean test": m["test"]},
                      f"{m.get('head')}, one trunk for {len(m['tasks'])} stores → {run_dir}")
    elif result.kind in ("seeds", "folds"):
        print_repeated(m, f"{m.get('head')} on {m.get('backbone')}, {m['n']} {m['mode']} → {run_dir}")
    else:
        print_metrics({"val": m.get("val"), "test": m.get("test")},
                      f"{m.get('head')} on {m.get('backbone')} → {run_dir}")


def report_fusion(info: dict) -> None:
    """fit-head --fuse: the videos left out (held by one store only) and label disagreements, on stderr."""
    left = [(store, n) for store, n in info["left_out"].items() if n]
    if left:
        shown = ", ".join(f"{n} of {Path(store).name} (e.g. {info['left_out_examples'][store][0]})"
                          for store, n in left)
        err.print(escape(f"fused {info['n_common']} videos held by both stores; left out (in one store only): {shown}"),
                  highlight=False, soft_wrap=True)
    if info.get("label_mismatches"):
        err.print(f"{info['label_mismatches']} common videos have other labels in the second store; the first "
                  "store's labels were used", highlight=False)


def print_evaluation(result, as_json: bool) -> None:
    """evaluate's answer (a heads.api.Evaluation): report files on stderr, then the metrics."""
    if result.report:
        err.print(escape(f"report: {', '.join(str(p) for p in result.report)}"), highlight=False, soft_wrap=True)
    m = result.metrics
    if m.get("seen_in_training"):
        err.print(escape(f"note: {result.split}: {m['seen_in_training']}"), highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(m, default=float))
    elif result.kind == "multitask":
        print_metrics({f"{name} {result.split}": s for name, s in m.items()}, f"{result.run}: one row per store")
    else:
        print_metrics({result.split: m}, f"{m.get('head')} ({result.run}) on {m.get('store')}, {m.get('n')} clips")


def print_predictions(result, as_json: bool) -> None:
    """predict's answer (a heads.api.Predictions): top labels per file, failures on stderr."""
    if as_json:
        print(json.dumps(result.rows + [{"path": path, "error": error} for path, error in result.failed]))
        return
    for row in result.rows:
        decided = (f" → labels at ≥ {row['threshold']:.2f}: {', '.join(row['labels']) or '(none)'}"
                   if "labels" in row else "")
        line = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"]) + decided
        out.print(f"[bold]{escape(row['path'])}[/]: {escape(line)}", highlight=False)
    for path, error in result.failed:
        err.print(f"[red]failed[/] {escape(path)}: {escape(str(error))}", highlight=False)


def print_cluster(result: dict, run_dir: Path) -> None:
    t = Table(title=escape(f"k-means → {run_dir}"))
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("std (ddof=1)", justify="right")
    mean, std = result.get("metrics", {}), result.get("std", {})
    for name, value in mean.items():
        if isinstance(value, (int, float)):
            t.add_row(name, f"{value:.4f}", f"{std.get(name, 0.0):.4f}" if name in std else "")
    out.print(t)


def print_thumbnails(drawn) -> None:
    """cluster-eval --thumbnails: what was drawn where, and the files that could not be decoded again."""
    out.print(escape(f"thumbnails: {drawn.drawn} of {drawn.n_points} points drawn → {drawn.png}"), highlight=False)
    if drawn.skipped:
        err.print(escape(f"note: {len(drawn.skipped)} file(s) could not be decoded again and were skipped: "
                         + "; ".join(f"{vid} ({why})" for vid, why in drawn.skipped[:5])
                         + (" ..." if len(drawn.skipped) > 5 else "")), highlight=False, soft_wrap=True)


def print_runs(rows: list[dict], runs_dir: Path) -> None:
    """runs: one row per run, the columns any run has, plus the train settings that differ between runs."""
    cols = [c for c in RUN_TABLE if any(r.get(c) is not None for r in rows)]
    differing = differing_params(rows)
    t = Table(title=escape(f"runs in {runs_dir} (all columns: --json)"))
    for c in [*cols[:3], *differing, *cols[3:]]:
        numeric = any(isinstance(r.get(c), (int, float)) for r in rows)
        t.add_column(escape(c), justify="right" if numeric else "left", min_width=min(len(c), 8))
    for r in rows:
        params = [escape(str(r["params"].get(k, ""))) for k in differing]
        cells = [escape(run_cell(r, c)) for c in cols]
        t.add_row(*cells[:3], *params, *cells[3:])
    out.print(t)


def print_repaired(report) -> None:
    """What `verify --repair` rebuilt (the header, from the shards)."""
    for done in report.repaired:
        out.print(f"repaired {done}", highlight=False, soft_wrap=True, markup=False)


def warn_skipped(path: Path, why: str) -> None:
    """runs: a run directory whose metrics.json cannot be read is left out, said on stderr."""
    err.print(f"[yellow]warning:[/] skipped {escape(str(path))}: {escape(why)}", highlight=False, soft_wrap=True)


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


# -- backbones: the registry and a weights file checked against it --------------------------------------------------
def print_backbones(rows: list, as_json: bool) -> None:
    """backbones' listing (pipeline.weights_check.BackboneRow): one line per backbone, its known weights files;
    the families' notes (install hint, names left out) below."""
    from dataclasses import asdict

    if as_json:
        print(json.dumps([asdict(r) for r in rows]))
        return
    t = Table(title="backbones (--backbone NAME; --weights one of these, DEFAULT, none, or a file)")
    for col in ("backbone", "dim", "rows", "local", "weights", "file", "sha256 starts"):
        t.add_column(col, justify="right" if col == "dim" else "left", overflow="fold")  # names whole, to paste
    local = {True: "yes", False: "no", None: ""}
    for r in (r for r in rows if r.dim is not None):
        for i, f in enumerate(r.files or [None]):
            first = (r.name, str(r.dim), r.rows, local[r.local]) if i == 0 else ("", "", "", "")
            t.add_row(*first, *((f.weights, f.file, f.sha256_prefix) if f else ("", "", "")))
    out.print(t)
    for r in rows:  # a family not installed, names left out: one line each
        if r.note:
            (out if r.dim is None else err).print(escape(f"{r.name} {r.note}"), highlight=False, soft_wrap=True)


def print_weights_check(check, as_json: bool) -> None:
    """backbones --check's answer (pipeline.weights_check.WeightsCheck): the sha256 and the verdict."""
    from dataclasses import asdict

    if as_json:
        print(json.dumps(asdict(check)))
        return
    out.print(escape(f"{check.path}\nsha256 {check.sha256}"), highlight=False, soft_wrap=True)
    (out if check.ok else err).print(escape(("ok: " if check.ok else "error: ") + check.verdict),
                                     highlight=False, soft_wrap=True)
