"""How fast heads train on a UCF101-sized cache, compared with extracting that cache. Run by hand:

    python bench/heads.py [--store /tmp/framecache_bench/heads_store] [--lstm-fit]
    python bench/heads.py --streaming [--budget 128MB]     (only the streaming part, see `streaming`)

Writes a synthetic store the size of UCF101 split 1 at every 10th frame (9,537 clips x 25 frames x
2048-d float16, ~1 GB; kept and reused), then measures: store load time (`load_all`, and the
in-memory cache built on it), seconds per training epoch for `linear` and `lstm` (proj_dim 256), a
full `fit_head` of the linear head with default settings (an lstm one with --lstm-fit), and ResNet-50
throughput on synthetic 224 px batches (bf16 autocast, channels_last) to estimate what extracting
the cache would take. Prints the JSON it writes to bench/results/heads.json.

`--streaming` (its own key, "streaming", in the same JSON; the rest is kept) writes a store STREAM_CLIPS x 25 x 2048
float16 (three times and more the --budget as loaded, written by the store writer, no decoding) and measures: the peak
RSS of a real `cli.py fit-head --head linear --memory-budget BUDGET` process on it (and of the in-memory run, no
budget), rows/s of one training epoch and of the bare batches streamed vs in memory (the store fits both ways here),
and the time from opening the store to the first batch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# `python bench/heads.py` puts bench/ first on the path, where this very file would shadow the heads package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from featstore import StoreWriter, VideoRecord, open_store  # noqa: E402
from heads.budget import budget_bytes  # noqa: E402
from heads.data import batches, build_vocab, encode_targets, load_cache, make_splits  # noqa: E402
from heads.run import fit_head  # noqa: E402
from heads.train import TrainConfig, make_optimizer, prepare_head, train_one_epoch  # noqa: E402
from pipeline import cpu_model  # noqa: E402
from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)

CLIPS, FRAMES, DIM, CLASSES = 9537, 25, 2048, 101
STREAM_CLIPS = 2000  # 2000 x 25 x 2048: 0.38 GiB as loaded (float32, as stage two holds a store this size), 3.1x 128MB
RESULTS = Path(__file__).parent / "results" / "heads.json"
PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def write_store(path: Path, clips: int = CLIPS) -> float:
    """A synthetic UCF101-like store of `clips` clips: class-dependent means plus noise, 25 groups, 1 in 4 test."""
    if (path / "_store.h5").exists():
        store = open_store(path)
        if len(store.ids()) == clips and store.dim == DIM:
            return 0.0  # reuse: writing ~1 GB is not what this measures
        shutil.rmtree(path)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 0.4, (CLASSES, DIM)).astype(np.float32)
    config = {"backbone": "synthetic_resnet50", "every": 10, "dim": DIM, "dtype": "float16"}
    start = time.perf_counter()
    with StoreWriter(path, config=config, fingerprint_keys=sorted(config), dim=DIM, flush_videos=512) as w:
        for i in range(clips):
            c = i % CLASSES
            feats = centers[c] + rng.standard_normal((FRAMES, DIM), dtype=np.float32)
            w.add(VideoRecord(f"v{i:05d}", label=f"class{c:03d}", group=f"g{(i // CLASSES) % 25:02d}",
                              split="test" if i % 4 == 0 else "train", features=np.maximum(feats, 0),
                              frame_index=np.arange(FRAMES) * 10, time_s=np.arange(FRAMES) * 0.4))
    return time.perf_counter() - start


def time_load(path: Path) -> dict:
    store = open_store(path)
    t0 = time.perf_counter()
    loaded = store.load_all(dtype=np.float16)
    t1 = time.perf_counter()
    del loaded
    cache = load_cache(path)
    t2 = time.perf_counter()
    return {"load_all_seconds": t1 - t0, "load_cache_seconds": t2 - t1,
            "cache_gb": cache.features.numel() * cache.features.element_size() / 2**30,
            "cache_dtype": str(cache.features.dtype).replace("torch.", "")}, cache


def epoch_seconds(cache, cfg: TrainConfig, epochs: int = 3) -> float:
    """Median wall seconds of one training epoch (after a warm-up epoch) over the official train split."""
    labels = build_vocab(cache.labels)
    y = encode_targets(cache.labels, labels, "multiclass")
    train = make_splits(cache, "official", cfg.val_frac, cfg.test_frac, cfg.seed)["train"]
    device = torch.device("cpu")
    model, loss_fn, aug = prepare_head(cache, y, "multiclass", train, cfg, len(labels), device)
    optimizer = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        data = batches(cache, y, train, cfg.batch_size, cfg.max_frames, device, train=True, gen=gen, aug=aug)
        train_one_epoch(model, data, loss_fn, optimizer)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))  # the median: other work on a shared machine only ever adds time


def resnet50_frames_per_second(batch: int = 16, steps: int = 3) -> dict:
    """ResNet-50 forward throughput on synthetic 224 px frames, bf16 autocast, channels_last, CPU."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        seconds = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "precision": "bf16", "frames_per_s": batch * steps / seconds}


def machine() -> dict:
    """The CPU model and its lscpu flags, beside every figure."""
    model = cpu_model()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), [])
    return {"cpu_model": model, "lscpu_flags": flags, "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def peak_rss_mb(*args: str) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of `cli.py ARGS` run in a child of its own."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return int(done.stdout.rsplit("PEAK_KB", 1)[1]) / 1024, time.perf_counter() - t0


def epoch_rows_per_second(store: Path, budget: int | None, train_model: bool) -> dict:
    """Rows/s of one epoch over the train split (every row of its clips counted once), and the seconds from
    opening the store to the first batch; with `train_model`, a linear head trains on the batches."""
    t0 = time.perf_counter()
    cache = load_cache(open_store(store), budget=budget)
    cfg = TrainConfig(head="linear", device="cpu", max_frames=FRAMES)
    train = make_splits(cache, "official", cfg.val_frac, cfg.test_frac, cfg.seed)["train"]
    labels = build_vocab(cache.labels)
    y = encode_targets(cache.labels, labels, "multiclass")
    model = optimizer = None
    if train_model:
        model, loss_fn, aug = prepare_head(cache, y, "multiclass", train, cfg, len(labels), torch.device("cpu"))
        optimizer = make_optimizer(cfg, model)
    t_ready = time.perf_counter()
    data = batches(cache, y, train, cfg.batch_size, cfg.max_frames, "cpu", train=True,
                   gen=torch.Generator().manual_seed(0))
    first = None
    for x, n, target in data:
        first = first or time.perf_counter()
        if model is not None:
            loss = loss_fn(model(x, n), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - t_ready
    rows = int(cache.lengths[torch.as_tensor(train)].sum())
    return {"source": cache.source, "rows": rows, "rows_per_s": rows / seconds, "epoch_seconds": seconds,
            "first_batch_seconds": first - t0}


def streaming(store: Path, budget_text: str) -> dict:
    """The streaming figures (see the module docstring)."""
    budget = budget_bytes(budget_text)
    out: dict = {"clips": STREAM_CLIPS, "frames_per_clip": FRAMES, "dim": DIM, "dtype_on_disk": "float16",
                 "budget": budget_text, **machine(), "load_average_start": os.getloadavg()}
    out["write_seconds"] = write_store(store, STREAM_CLIPS)
    loaded = STREAM_CLIPS * FRAMES * DIM * 4  # float32: under heads.data.FLOAT32_LIMIT as float32
    out["store_gb_as_loaded"], out["store_to_budget"] = loaded / 2**30, loaded / budget
    runs = Path("/tmp/framecache_bench/runs")
    fit = ["fit-head", str(store), "--head", "linear", "--epochs", "1", "--patience", "1", "--device", "cpu"]
    for name, flags in (("stream", ["--memory-budget", budget_text]), ("memory", ["--memory-budget", "64GB"])):
        peak, seconds = peak_rss_mb(*fit, *flags, "--out", str(runs / f"stream-{name}"), "--force")
        metrics = json.loads((runs / f"stream-{name}" / "metrics.json").read_text())
        out[f"fit_head_{name}"] = {"peak_rss_mb": peak, "seconds": seconds, "data_source": metrics["data_source"],
                                   "test_accuracy": metrics["test"]["accuracy"]}
    out["peak_rss_limit_mb"] = budget / 2**20 + 1024  # the budget plus 1 GB
    out["peak_rss_within_limit"] = out["fit_head_stream"]["peak_rss_mb"] <= out["peak_rss_limit_mb"]
    for kind, train_model in (("batches", False), ("linear_epoch", True)):
        memory = epoch_rows_per_second(store, None, train_model)
        stream = epoch_rows_per_second(store, budget, train_model)
        out[kind] = {"memory": memory, "stream": stream, "stream_to_memory_rows_per_s":
                     stream["rows_per_s"] / memory["rows_per_s"]}
    out["load_average_end"] = os.getloadavg()  # the machine is shared: rows/s move with what else runs on it
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("/tmp/framecache_bench/heads_store"))
    parser.add_argument("--lstm-fit", action="store_true", help="also time a full lstm fit-head (minutes)")
    parser.add_argument("--streaming", action="store_true", help="only the streaming figures (key 'streaming')")
    parser.add_argument("--budget", default="128MB", help="--memory-budget of the streaming figures")
    parser.add_argument("--stream-store", type=Path, default=Path("/tmp/framecache_bench/stream_store"))
    args = parser.parse_args()
    if args.streaming:
        kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        kept["streaming"] = streaming(args.stream_store, args.budget)
        write_text_atomic(RESULTS, json.dumps(kept, indent=2) + "\n")
        print(json.dumps(kept["streaming"], indent=2))
        return
    out: dict = {"clips": CLIPS, "frames_per_clip": FRAMES, "dim": DIM, "rows": CLIPS * FRAMES,
                 "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
                 or platform.machine(), "cpus": os.cpu_count(), "device": "cpu"}
    out["write_seconds"] = write_store(args.store)
    load, cache = time_load(args.store)
    out.update(load)
    linear = TrainConfig(head="linear", device="cpu")
    lstm = TrainConfig(head="lstm", proj_dim=256, device="cpu")
    out["epoch_seconds"] = {"linear": epoch_seconds(cache, linear), "lstm_proj256": epoch_seconds(cache, lstm)}
    del cache
    fits = {"linear": linear}
    if args.lstm_fit:
        fits["lstm_proj256"] = lstm
    out["fit_head"] = {}
    runs = Path("/tmp/framecache_bench/runs")
    for name, cfg in fits.items():
        m = fit_head(args.store, cfg, runs / name)
        out["fit_head"][name] = {"seconds": m["seconds"], "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
                                 "refit": m["refit"], "test_accuracy": m["test"]["accuracy"]}
    out["resnet50"] = resnet50_frames_per_second()
    out["extract_seconds_estimate"] = CLIPS * FRAMES / out["resnet50"]["frames_per_s"]
    out["fit_to_extract_ratio"] = {name: f["seconds"] / out["extract_seconds_estimate"]
                                   for name, f in out["fit_head"].items()}
    # Without a measured lstm fit: the most it can take, every epoch of the default budget plus the refit.
    out["lstm_fit_upper_bound_seconds"] = out["epoch_seconds"]["lstm_proj256"] * 2 * lstm.epochs
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists() and "streaming" in json.loads(RESULTS.read_text()):  # measured by --streaming: kept
        out["streaming"] = json.loads(RESULTS.read_text())["streaming"]
    write_text_atomic(RESULTS, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
