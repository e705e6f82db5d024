"""Resize-engine benchmark (run by hand, not a test): what each way of resizing sampled frames costs in decoding and
changes in the embeddings.

In one run, on the real clips at --every 10, for each `--resize-engine`, in parts (`--parts`, each one invocation
short enough for the shared machine; a partial run keeps the other parts' entries in --out):
  d           D, sampled frames/s of decode alone, with extract's own DataLoader worker setup (pipeline.decode_loader)
              and the geometry of --d-backbone; --rounds passes, the engines interleaved (their order reversed every
              other round), the median of each engine and its per-round ratio to 'exact' (same round, same load)
  cosine      of each --cosine-backbones' fp32 embeddings to those of the exact recipe (PIL bilinear, which is what
              the weights' transforms() do), on the same frames of every --cosine-every-clip-th clip: min / 1st
              percentile / mean. mobilenet_v2 takes --weights (real weights); the others random init (--weights none)
  model-side  the variant the worker cannot express: full-size RGB out of the worker (D_rgb24, same one-thread
              decoder, timed in this process) and torch's batched antialiased resize of those frames (R, frames/s on
              this process's threads), whose cost lands beside the backbone's; cosine with mobilenet_v2
Uses only the public API (`pipeline`) and PyAV.

    python bench/resize.py --parts d [--engines exact swscale torch] [--rounds 5]
    python bench/resize.py --parts cosine model-side [--cosine-backbones resnet18 resnet50 mobilenet_v2]
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

from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)
from pipeline import (RESIZE_ENGINES, Done, Embedder, ExtractConfig, Rows, decode_loader, decode_video,  # noqa: E402
                      geometry_for, load_backbone, load_source, sampling_for)

SHARED = ROOT.parent / "shared"
PARTS = ("d", "cosine", "model-side")


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


def frame_config(backbone: str, weights: str, every: int) -> ExtractConfig:
    return ExtractConfig(backbone=backbone, weights=weights, sampling=sampling_for(backbone, every=every),
                         precision="fp32")


def engine_geometries(cfg: ExtractConfig, engines) -> dict:
    base = geometry_for(cfg)  # the weights' preset, no model needed
    return {engine: dataclasses.replace(base, engine=engine) for engine in engines}


def interleaved_rates(items, cfg: ExtractConfig, geometries: dict, rounds: int) -> tuple[dict, int]:
    """D per engine per round. Every round runs each engine once, in reversed order every other round, so a drift
    in the machine's load (or a position effect) hits every engine alike."""
    decode_rate(items[:10], cfg, next(iter(geometries.values())))  # warm the page cache: nobody pays for the disk
    rates: dict[str, list[float]] = {engine: [] for engine in geometries}
    units = 0
    for r in range(rounds):
        order = list(geometries) if r % 2 == 0 else list(geometries)[::-1]
        for engine in order:
            rate, units = decode_rate(items, cfg, geometries[engine])
            rates[engine].append(round(rate, 1))
            print(f"round {r} {engine} D {rate:.1f}", flush=True)
    return rates, units


def d_part(items, args) -> dict:
    """D of each engine, its median, and its per-round ratio to exact (the number the default is decided on)."""
    cfg = frame_config(args.d_backbone, "none", args.every)
    geometries = engine_geometries(cfg, args.engines)
    rates, units = interleaved_rates(items, cfg, geometries, args.rounds)
    exact = rates["exact"]
    engines = {}
    for engine, rounds in rates.items():
        ratios = [round(a / b, 3) for a, b in zip(rounds, exact)]
        engines[engine] = {"D": float(np.median(rounds)), "D_rounds": rounds, "ratio_to_exact_rounds": ratios,
                           "ratio_to_exact_median": float(np.median(ratios)),
                           "rounds_faster_than_exact": sum(x > 1 for x in ratios)}
    g = geometries["exact"]
    return {"clips": len(items), "every": args.every, "frames": units, "rounds": args.rounds,
            "geometry_of": args.d_backbone, "resize": g.resize, "size": g.size, "workers": "extract's (auto)",
            "engines": engines}


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(c.min()), 5), "p1": round(float(np.percentile(c, 1)), 5),
            "mean": round(float(c.mean()), 5)}


def embed(embedder: Embedder, frames: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.concatenate(frames))
    return np.concatenate([embedder(x[i:i + 64]) for i in range(0, len(x), 64)])


def engine_features(name: str, weights: str, paths: list[str], args) -> dict[str, np.ndarray]:
    """fp32 embeddings of the same sampled frames, decoded by each engine ('exact' first: the reference)."""
    cfg = frame_config(name, weights, args.every)
    backbone = load_backbone(name, weights)
    embedder = Embedder(backbone, torch.device("cpu"), "fp32")
    geometries = engine_geometries(cfg, ["exact", *(e for e in RESIZE_ENGINES if e != "exact")])
    return {engine: embed(embedder, [decode_video(p, cfg.sampling, g).frames for p in paths])
            for engine, g in geometries.items()}


def cosine_part(items, args) -> dict:
    paths = [it.path for it in items[::args.cosine_every_clip]]
    out = {"clips": len(paths), "every": args.every, "precision": "fp32", "backbones": {}}
    for name in args.cosine_backbones:
        weights = args.weights if name == "mobilenet_v2" else "none"
        features = engine_features(name, weights, paths, args)
        out["frames"] = len(features["exact"])
        out["backbones"][name] = {"weights": Path(weights).name, "engines": {
            engine: cosines(f, features["exact"]) for engine, f in features.items()}}
        print(name, json.dumps(out["backbones"][name]), flush=True)
    return out


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


def model_side_part(items, args) -> dict:
    """Full-size RGB + batched torch antialiased resize, against the exact recipe (real mobilenet_v2 weights)."""
    paths = [it.path for it in items[::args.cosine_every_clip]]
    cfg = frame_config("mobilenet_v2", args.weights, args.every)
    backbone = load_backbone("mobilenet_v2", args.weights)
    embedder = Embedder(backbone, torch.device("cpu"), "fp32")
    geometry = geometry_for(cfg, backbone)
    reference = embed(embedder, [decode_video(p, cfg.sampling, dataclasses.replace(geometry, engine="exact")).frames
                                 for p in paths])
    d_rgb, r, frames = model_side(paths, args.every, geometry)
    return {"clips": len(paths), "backbone": "mobilenet_v2", "weights": Path(args.weights).name,
            "D_rgb24": round(d_rgb, 1), "R_batched_resize": round(r, 1),
            "D_effective_cpu": round(1 / (1 / d_rgb + 1 / r), 1), "cosine": cosines(embed(embedder, frames), reference)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20")
    ap.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_float_dequantized.pth"),
                    help="mobilenet_v2's weights file (the cosine and model-side parts)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="use the first N clips (default all)")
    ap.add_argument("--engines", nargs="+", choices=RESIZE_ENGINES, default=list(RESIZE_ENGINES),
                    help="engines of the d part ('exact' is always measured: the ratios are to it)")
    ap.add_argument("--rounds", type=int, default=5, help="d: passes per engine, interleaved")
    ap.add_argument("--d-backbone", default="resnet18", help="d: whose preset geometry the frames are resized to")
    ap.add_argument("--cosine-backbones", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--cosine-every-clip", type=int, default=12, help="cosine: on every k-th clip")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "resize.json")
    args = ap.parse_args()
    args.engines = ["exact", *(e for e in args.engines if e != "exact")]

    items = load_source(args.data / "manifest.csv")[:args.limit]
    parts = {"d": d_part, "cosine": cosine_part, "model-side": model_side_part}
    results = {"torch_threads": torch.get_num_threads()}
    for part in args.parts:
        results[part] = parts[part](items, args)
        print(part, json.dumps(results[part]), flush=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    old = {k: v for k, v in old.items() if k in (*PARTS, "torch_threads")}  # older layouts' keys are dropped
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({**old, **results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
