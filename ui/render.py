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


# -- stage two: heads, runs, clusters ---------------------------------------------------------------------------------
# Every string that comes from the user or the data (ids, labels, paths, run names) is escaped: rich would read
# "[b]" or "[/x]" in a label as markup.
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

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
    t = Table(title=escape(title), caption="mean ± sample std (ddof=1)")
    t.add_column("split")
    for k in shown:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(escape(name), *[f"{m[k]:.3f}" if isinstance(m.get(k), float) else "" for k in shown])
    out.print(t)


def print_repeated(metrics: dict, title: str) -> None:
    """mean ± std per split of a repeated run or a sweep's chosen cell."""
    rows = {name: (metrics[name], metrics.get(f"{name}_std") or {}) for name in ("val", "cv", "test")
            if isinstance(metrics.get(name), dict)}
    shown = [k for k in METRIC_KEYS if k != "clip_accuracy" and any(k in m for m, _ in rows.values())]
    t = Table(title=escape(title))
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
