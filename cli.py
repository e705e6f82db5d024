"""framecache command line: a thin layer over pipeline/, featstore/ and heads/.

Exit codes: 0 success, 1 user error (one clear line, no traceback), 2 finished with failed items.
"""
from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Cache per-frame embeddings of videos/images in HDF5; train and evaluate heads on the cache.")
out = Console()
err = Console(stderr=True)

# torch's quantized and TypedStorage deprecation notices say nothing a user can act on.
warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


class Crop(str, Enum):
    center = "center"
    square = "square"
    none = "none"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DType(str, Enum):
    float16 = "float16"
    float32 = "float32"


class Compression(str, Enum):
    none = "none"
    lzf = "lzf"
    gzip = "gzip"


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn the library's user-facing exceptions into one line on stderr and exit code 1."""
    from featstore import StoreError
    from pipeline.backbones import BackboneError
    from pipeline.decode import DecodeError
    from pipeline.sources import SourceError

    handled: tuple = (StoreError, BackboneError, SourceError, DecodeError, ValueError, FileNotFoundError)
    try:
        from heads.cluster import ClusterError
        from heads.train import HeadError
        handled += (HeadError, ClusterError)
    except ImportError:
        pass
    try:
        yield
    except handled as e:
        fail(str(e))
    except KeyboardInterrupt:
        err.print("interrupted: finished items are saved; rerun the same command to resume")
        raise typer.Exit(130)


def parse_shard(value: Optional[str]) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"expected i/N such as 0/4, got {value!r}") from None
    return i, n


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err, transient=False)


@app.command()
def extract(
    source: Annotated[Path, typer.Argument(help="Manifest CSV, folder-per-class, UCF101/HMDB51 root, or a file.")],
    backbone: Annotated[str, typer.Option(help="resnet18/34/50/101/152, quantized_mobilenet_v2.")] = "resnet50",
    weights: Annotated[str, typer.Option(help="DEFAULT, an enum name (IMAGENET1K_V2), none, or a file.")] = "DEFAULT",
    every: Annotated[Optional[int], typer.Option(min=1, help="Keep frames 0, N, 2N, ...")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Keep K uniformly spaced frames.")] = None,
    fps: Annotated[Optional[float], typer.Option(min=0.001, help="Keep F frames per second.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="At most M frames per video.")] = None,
    size: Annotated[Optional[int], typer.Option(min=16, help="Input side (default: the weights' own).")] = None,
    crop: Annotated[Crop, typer.Option(help="center: weights' resize+crop; square; none: squash.")] = Crop.center,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per forward pass, across videos.")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode processes (default: auto).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:i.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="auto: bf16 where supported, else fp16 (GPU) / fp32.")]
    = Precision.auto,
    store: Annotated[Optional[Path], typer.Option(help="Store directory (default: stores/<source>-<backbone>).")]
    = None,
    shard: Annotated[Optional[str], typer.Option(help="i/N: process part i of N (one writer per part).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Retry items recorded as failed.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Process at most N new items.")] = None,
    split_id: Annotated[int, typer.Option(min=1, max=3, help="Official split for UCF101/HMDB51 roots.")] = 1,
    dtype: Annotated[DType, typer.Option(help="Storage dtype of features.")] = DType.float16,
    compression: Annotated[Compression, typer.Option(help="HDF5 compression of features.")] = Compression.none,
) -> None:
    """Decode, sample and embed every item of SOURCE into a resumable HDF5 store."""
    from pipeline.decode import Sampling
    from pipeline.extract import ExtractConfig
    from pipeline.extract import extract as run_extract
    from pipeline.sources import load_source

    if sum(x is not None for x in (every, frames, fps)) > 1:
        fail("choose one of --every, --frames, --fps")
    shard_t = parse_shard(shard)
    with user_errors():
        sampling = Sampling(every=every if (every or frames or fps) else 10, frames=frames, fps=fps,
                            max_frames=max_frames)
        cfg = ExtractConfig(backbone=backbone, weights=weights, sampling=sampling, size=size, crop=crop.value,
                            batch_size=batch_size, workers=workers, device=device, precision=precision.value,
                            dtype=dtype.value, compression=None if compression is Compression.none
                            else compression.value, shard=shard_t, retry_failed=retry_failed, limit=limit)
        items = load_source(source, split_id=split_id)
        store = store or Path("stores") / f"{source.stem}-{backbone}"
        with progress_bar() as bar:
            task = bar.add_task("extract", total=None, rate="")

            def on_progress(p: dict) -> None:
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, total=p["total"], completed=p["done"],
                           rate=f"{p['frames'] / elapsed:.0f} frames/s, {p['failed']} failed")

            result = run_extract(items, store, cfg, on_progress)
    print_extract_summary(result)
    if result.failed:
        raise typer.Exit(2)


def print_extract_summary(result) -> None:
    t = Table(title=f"extract → {result.store}", show_header=False)
    for k, v in [("written", result.done), ("failed", len(result.failed)), ("already in store", result.skipped),
                 ("frames", result.frames), ("frames/s", f"{result.frames_per_s:.1f}"),
                 ("device / precision", f"{result.device} / {result.precision}")]:
        t.add_row(k, str(v))
    out.print(t)
    for vid, reason in result.failed[:20]:
        err.print(f"[red]failed[/] {vid}: {reason}", highlight=False, soft_wrap=True)
    if len(result.failed) > 20:
        err.print(f"... and {len(result.failed) - 20} more: `cli.py info {result.store}` lists them all")


@app.command()
def info(
    store: Annotated[Path, typer.Argument(help="Store directory or compacted .h5 file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Describe a store: counts, backbone, config, fingerprint, failures."""
    from featstore import open_store

    with user_errors(), open_store(store) as s:
        summary = s.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    t = Table(title=f"store {store}", show_header=False)
    for k in ("videos", "ok", "failed", "frames", "dim", "backbone", "fingerprint", "shards"):
        t.add_row(k, str(summary[k]))
    cfg = summary["config"]
    t.add_row("weights", str(cfg.get("weights")))
    t.add_row("sampling", ", ".join(f"{k}={cfg[k]}" for k in ("every", "frames", "fps", "max_frames")
                                    if cfg.get(k) is not None))
    t.add_row("input", f"{cfg.get('size')}px, crop={cfg.get('crop')}, resize={cfg.get('resize')}")
    splits: dict[str, int] = {}
    for it in summary["items"]:
        splits[it["split"] or "(none)"] = splits.get(it["split"] or "(none)", 0) + 1
    t.add_row("splits", ", ".join(f"{k}: {v}" for k, v in sorted(splits.items())))
    out.print(t)
    for it in [i for i in summary["items"] if i["status"] != "ok"][:20]:
        err.print(f"[red]failed[/] {it['id']}: {it['error']}", highlight=False, soft_wrap=True)


@app.command()
def compact(
    store: Annotated[Path, typer.Argument(help="Store directory.")],
    out_file: Annotated[Path, typer.Argument(help="Output .h5 file, usable as a store everywhere.")],
    compression: Annotated[Compression, typer.Option(help="HDF5 compression.")] = Compression.gzip,
) -> None:
    """Write a store as one portable HDF5 file."""
    from featstore import compact as run_compact

    with user_errors():
        path = run_compact(store, out_file, None if compression is Compression.none else compression.value)
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
