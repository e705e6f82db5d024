"""Extraction benchmark (run by hand, not a test): how close end-to-end gets to its limits.

In one run, on the real clips, for each backbone at --every 10, sampled frames/s of:
  D  decode alone   (the same DataLoader worker setup as extract, no model)
  B  backbone alone (synthetic frames, same batch size, precision, channels_last)
  E  end to end     (pipeline.extract.extract into a temporary store)
On a CPU decode and inference share the cores, so the ceiling is 1 / (1/B + 1/D); on a GPU it is
min(B, D). Also peak RSS of extract on 20 clips vs all clips (memory must not grow with the dataset).

    python bench/extract.py [--data ../shared/data/ucf101_subset20] [--backbones resnet18 resnet50]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.decode import Sampling  # noqa: E402
from pipeline.extract import (ExtractConfig, _Embedder, decode_loader, extract, geometry_for,  # noqa: E402
                              resolve_device, resolve_precision)
from pipeline.sources import load_source  # noqa: E402


def decode_only(items, cfg: ExtractConfig, backbone, device) -> tuple[float, int, int]:
    loader = decode_loader(items, cfg, geometry_for(cfg, backbone), device)
    t, frames, decoded = time.perf_counter(), 0, 0
    for s in loader:
        frames += len(s.get("frames", ()))
        decoded += s.get("n_frames", 0)
    return frames / (time.perf_counter() - t), frames, decoded


def backbone_only(backbone, device, precision, batch_size: int, size: int, batches: int = 6, blocks: int = 3) -> float:
    """Best of `blocks` timed blocks: the least disturbed estimate on a shared machine (so E/B errs low)."""
    embed = _Embedder(backbone, device, precision)
    x = torch.randint(0, 255, (batch_size, size, size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        x = x.pin_memory()
    embed(x)  # warm-up
    best = 0.0
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(batches):
            embed(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, batches * batch_size / (time.perf_counter() - t))
    return best


def end_to_end(items, cfg: ExtractConfig) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        r = extract(items, Path(tmp) / "store", cfg)
    return r.frames_per_s, r.frames


def peak_rss_mb(data: Path, n: int, backbone: str) -> float:
    """Peak RSS of a fresh process that extracts the first n clips (resnet weights=none)."""
    code = (f"import sys, resource, tempfile; sys.path.insert(0, {str(ROOT)!r});"
            "from pipeline.sources import load_source; from pipeline.decode import Sampling;"
            "from pipeline.extract import ExtractConfig, extract;"
            f"items = load_source({str(data / 'manifest.csv')!r})[:{n}];"
            f"cfg = ExtractConfig(backbone={backbone!r}, weights='none', sampling=Sampling(every=10));"
            "extract(items, tempfile.mkdtemp() + '/s', cfg);"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucf101_subset20")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "extract.json")
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()

    items = load_source(args.data / "manifest.csv")[:args.limit]
    results = {"clips": len(items), "every": args.every, "batch_size": args.batch_size,
               "cpu_cores": len(__import__("os").sched_getaffinity(0)), "torch": torch.__version__, "runs": []}
    for name in args.backbones:
        cfg = ExtractConfig(backbone=name, weights="none", sampling=Sampling(every=args.every),
                            batch_size=args.batch_size, workers=args.workers, device=args.device)
        backbone = load_backbone(name, "none")
        device = resolve_device(cfg.device, backbone)
        precision = resolve_precision(cfg.precision, device, backbone)
        D, sampled, decoded = decode_only(items, cfg, backbone, device)
        size = geometry_for(cfg, backbone).size
        B_before = backbone_only(backbone, device, precision, cfg.batch_size, size)
        E, frames = end_to_end(items, cfg)
        B_after = backbone_only(backbone, device, precision, cfg.batch_size, size)
        B = max(B_before, B_after)  # measured on both sides of E: machine load drifts
        ceiling = min(B, D) if device.type == "cuda" else 1 / (1 / B + 1 / D)
        run = {"backbone": name, "device": str(device), "precision": precision, "sampled_frames": frames,
               "decoded_frames": decoded, "decode_fps_D": round(D, 1), "backbone_fps_B": round(B, 1),
               "backbone_fps_before_after": [round(B_before, 1), round(B_after, 1)],
               "end_to_end_fps_E": round(E, 1), "ceiling_fps": round(ceiling, 1),
               "E_over_B": round(E / B, 3), "E_over_ceiling": round(E / ceiling, 3)}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if not args.skip_rss:
        small = peak_rss_mb(args.data, 20, "resnet18")
        full = peak_rss_mb(args.data, len(items), "resnet18")
        results["peak_rss_mb"] = {"clips_20": round(small, 1), f"clips_{len(items)}": round(full, 1),
                                  "growth": round(full / small - 1, 3)}
        print(json.dumps(results["peak_rss_mb"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
