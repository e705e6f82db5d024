"""Resize-engine benchmark (run by hand, not a test): what each way of resizing sampled frames costs in decoding and
changes in the embeddings.

In one run, on the real clips at --every 10, for each `--resize-engine`:
  D       sampled frames/s of decode alone, with extract's own DataLoader worker setup (pipeline.decode_loader);
          the median of --rounds passes, the engines interleaved
  cosine  of float mobilenet_v2 embeddings (real weights, fp32) to those of the exact recipe (PIL bilinear, which
          is what the weights' transforms() do), on the same frames: min / mean / 1st percentile
plus the model-side variant the worker cannot express: full-size RGB out of the worker (D_rgb24, same one-thread
decoder, timed in this process) and torch's batched antialiased resize of those frames (R, frames/s on this
process's threads), whose cost lands beside the backbone's. Uses only the public API (`pipeline`) and PyAV.

    python bench/resize.py [--data ../shared/data/ucf101_subset20] [--weights ../shared/weights/...pth]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import (RESIZE_ENGINES, Done, Embedder, ExtractConfig, Rows, decode_loader, decode_video,  # noqa: E402
                      geometry_for, load_backbone, load_source, sampling_for)

SHARED = ROOT.parent / "shared"


def decode_rate(items, cfg: ExtractConfig, geometry) -> tuple[float, int]:
    """Sampled frames/s of extract's decode stage alone (its workers, its messages), no model."""
    loader = decode_loader(items, cfg, geometry, torch.device("cpu"))
    t, units = time.perf_counter(), 0
    for m in loader:
        if isinstance(m, Rows):
            units += len(m)
        elif isinstance(m, Done) and m.error:
            raise RuntimeError(m.error)
    return units / (time.perf_counter() - t), units


def full_size_frames(path: str, every: int) -> np.ndarray:
    """The sampled frames at source size, rgb24, one decoder thread (as a decode worker runs)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "AUTO", 1
        kept = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if i % every == 0]
    return np.stack(kept)


def model_side(paths: list[str], every: int, geometry) -> tuple[float, float, list[np.ndarray]]:
    """(D_rgb24 frames/s, R batched resize frames/s, frames at model size) for full-size RGB + torch resize."""
    from torchvision.transforms import functional as tvf

    decode_s, resize_s, out = 0.0, 0.0, []
    for path in paths:
        t = time.perf_counter()
        rgb = torch.from_numpy(full_size_frames(path, every)).permute(0, 3, 1, 2)  # one video's frames, one size
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        h, w = rgb.shape[2:]
        short = geometry.resize
        size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        scaled = tvf.center_crop(tvf.resize(rgb, list(size), antialias=True), [geometry.size, geometry.size])
        resize_s += time.perf_counter() - t
        out.append(scaled.permute(0, 2, 3, 1).contiguous().numpy())
    n = sum(len(o) for o in out)
    return n / decode_s, n / resize_s, out


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(c.min()), 5), "p1": round(float(np.percentile(c, 1)), 5),
            "mean": round(float(c.mean()), 5)}


def embed(embedder: Embedder, frames: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.concatenate(frames))
    return np.concatenate([embedder(x[i:i + 64]) for i in range(0, len(x), 64)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20")
    ap.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_float_dequantized.pth"))
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="D on the first N clips (default all)")
    ap.add_argument("--rounds", type=int, default=3, help="D passes per engine, interleaved (the median counts)")
    ap.add_argument("--cosine-every-clip", type=int, default=5, help="cosine on every k-th clip")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "resize.json")
    args = ap.parse_args()

    items = load_source(args.data / "manifest.csv")[:args.limit]
    backbone = load_backbone("mobilenet_v2", args.weights)
    cfg = ExtractConfig(backbone="mobilenet_v2", weights=args.weights, sampling=sampling_for("mobilenet_v2",
                        every=args.every), precision="fp32")
    base = geometry_for(cfg, backbone)
    embedder = Embedder(backbone, torch.device("cpu"), "fp32")
    picked = [it.path for it in items[::args.cosine_every_clip]]
    results = {"clips": len(items), "every": args.every, "cosine_clips": len(picked), "backbone": "mobilenet_v2",
               "weights": Path(args.weights).name, "precision": "fp32", "torch_threads": torch.get_num_threads(),
               "engines": {}}
    geometries = {engine: dataclasses.replace(base, engine=engine) for engine in RESIZE_ENGINES}
    decode_rate(items[:10], cfg, base)  # warm the page cache: the first engine must not pay for the disk
    rates: dict[str, list[float]] = {engine: [] for engine in RESIZE_ENGINES}
    for _ in range(args.rounds):  # interleaved, so a drift in the machine's load hits every engine alike
        for engine, geometry in geometries.items():
            rate, units = decode_rate(items, cfg, geometry)
            rates[engine].append(round(rate, 1))
    reference = None
    for engine, geometry in geometries.items():  # 'exact' first: it is the reference
        frames = [decode_video(p, cfg.sampling, geometry).frames for p in picked]
        features = embed(embedder, frames)
        reference = features if reference is None else reference
        results["engines"][engine] = {"D": float(np.median(rates[engine])), "D_rounds": rates[engine],
                                      "frames": units, "cosine": cosines(features, reference)}
        print(engine, json.dumps(results["engines"][engine]), flush=True)
    d_rgb, r, frames = model_side(picked, args.every, base)
    results["model_side_torch_antialias"] = {
        "D_rgb24": round(d_rgb, 1), "R_batched_resize": round(r, 1),
        "D_effective_cpu": round(1 / (1 / d_rgb + 1 / r), 1), "cosine": cosines(embed(embedder, frames), reference)}
    print("model-side", json.dumps(results["model_side_torch_antialias"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
