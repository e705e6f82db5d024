"""What commands show: the consoles (results on stdout, progress and errors on stderr) and the progress bar."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

out = Console()
err = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err, transient=False)


# -- extract, info, compact, verify, explain, finetune, demo -----------------------------------------------------
# Every user-provided string (ids, labels, paths, reasons) goes through `lit`: rich would read "[b]" as a tag and
# drop it, and raise MarkupError on "[/x]".
import json  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

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
    for k, v in [("written", result.done), ("failed", len(result.failed)), ("already in store", result.skipped),
                 (result.unit, result.frames), (f"{result.unit}/s", f"{result.frames_per_s:.1f}"),
                 ("device / precision", f"{result.device} / {result.precision}"
                  f"{' compiled' if result.compiled else ''}"),
                 ("startup (to first batch)", f"{result.startup_s:.2f} s" if result.startup_s else "-")]:
        t.add_row(k, lit(v))
    out.print(t)
    print_failures(result.failed, info_more(result.store))
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
    t.add_row("sampling", ", ".join(f"{k}={cfg[k]}" for k in ("every", "frames", "fps", "max_frames", "clip_len",
                                                              "clip_stride", "clips")
                                    if cfg.get(k) is not None))
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


def print_verify(report) -> None:
    t = Table(title=f"verify {lit(report.store)}" + (" (deep)" if report.deep else ""), show_header=False)
    for k, v in [("shards", report.shards), ("bad shards", len(report.bad)), ("videos", report.videos),
                 ("ok", report.ok), ("frames", report.frames)]:
        t.add_row(k, str(v))
    out.print(t)
    for name, problem in report.bad.items():
        err.print(f"[red]bad[/] {lit(name)}: {lit(problem)}", highlight=False, soft_wrap=True)
    if report.quarantined:
        videos = "videos" if report.lost_videos is None else f"{report.lost_videos} video(s)"
        err.print(f"moved {len(report.quarantined)} shard(s) to {lit(Path(report.store) / '_quarantine')}; rerun "
                  f"extract to redo their {videos}", highlight=False, soft_wrap=True)
    elif report.bad:
        err.print(f"run `cli.py verify {lit(report.store)} --quarantine` to move them aside, then rerun extract",
                  highlight=False, soft_wrap=True)
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
    return f"finetune {metrics['objective']} {metrics['backbone']} → {lit(out_dir)}/backbone.pt"


def finetune_splits(metrics: dict) -> dict:
    """A supervised finetune's rows, as print_metrics shows them."""
    start = (metrics.get("start") or {}).get("test")
    return {"val": metrics.get("val"), "test (no refit)": metrics.get("test_early"), "test": metrics.get("test"),
            "test, --init-head as it was": start}


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
    out.print(f"use it: cli.py extract SOURCE --backbone {metrics['backbone']} --weights "
              f"{lit(out_dir)}/backbone.pt", highlight=False)
    print_failures(metrics["failed"], " (all in metrics.json)")
