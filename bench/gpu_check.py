"""The extraction benchmark of bench/gpu_check.sh (run there, on a GPU node): for each backbone, B (backbone alone,
synthetic units, the device's batch), then for each decoder (PyAV, torchcodec on CPU, torchcodec on the GPU: NVDEC)
D (decode alone) with 8 workers and E (end to end, into a temporary store) with each of --workers; frames at
--every 10 for image backbones, 16-frame clips for video ones, random init. Runs are ordered so that a cut-off run
still has B, D and E of every backbone with 8 workers; once --budget-s is spent the rest are recorded as skipped,
never run. A run that fails is recorded with its one-line reason; the others go on. Writes one JSON, after
each run (so a run killed by gpu_check.sh's timeout keeps what it measured).

    python bench/gpu_check.py --out bench/results/gpu_check_extract.json [--budget-s 320] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from extract import backbone_only, decode_only, end_to_end  # noqa: E402

from featstore.atomic import write_text_atomic  # noqa: E402
from pipeline import (ExtractConfig, cpu_model, geometry_for, load_backbone, load_source,  # noqa: E402
                      resolve_device, sampling_for, speed_for)

DECODERS = ("pyav", "torchcodec", "torchcodec-cuda")
BACKBONES = ("resnet18", "resnet50", "r2plus1d_18")


def config(name: str, decoder: str, workers: int) -> ExtractConfig:
    clip = name == "r2plus1d_18"
    sampling = sampling_for(name, clip_len=16, clip_stride=16) if clip else sampling_for(name, every=10)
    return ExtractConfig(backbone=name, weights="none", sampling=sampling, device="cuda", decoder=decoder,
                         workers=workers)


def plan(workers: list[int]) -> list[tuple[str, str, str, int]]:
    """(part, backbone, decoder, workers), the 8-worker runs of every backbone first."""
    first = [(part, b, d, 8) for b in BACKBONES for d in DECODERS for part in ("D", "E")]
    rest = [("E", b, d, w) for w in workers if w != 8 for b in BACKBONES for d in DECODERS]
    return [("B", b, "-", 0) for b in BACKBONES] + first + rest


def run_one(part: str, name: str, decoder: str, workers: int, items) -> dict:
    if part == "B":
        backbone = load_backbone(name, "none")
        cfg = config(name, "pyav", 0)
        device = resolve_device("cuda")
        speed = speed_for(cfg.precision, cfg.compile, None, backbone, device, items, cfg.sampling)
        clip_len = cfg.sampling.clip_len if backbone.is_video else None
        rate = backbone_only(backbone, device, speed.precision, speed.batch_size, geometry_for(cfg, backbone).size,
                             clip_len)
        return {"units_per_s": round(rate, 1), "batch_size": speed.batch_size, "precision": speed.precision}
    cfg = config(name, decoder, workers)
    if part == "D":
        backbone = load_backbone(name, "none")
        rate, units, decoded = decode_only(items, cfg, backbone, resolve_device("cuda"))
        return {"units_per_s": round(rate, 1), "units": units, "decoded_frames": decoded}
    rate, rows = end_to_end(items, cfg)
    return {"units_per_s": round(rate, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucf101_subset20")
    ap.add_argument("--workers", nargs="+", type=int, default=[4, 8, 15])
    ap.add_argument("--budget-s", type=float, default=320.0, help="no run starts after this many seconds")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    items = load_source(args.data / "manifest.csv")[:args.limit]
    start, runs = time.perf_counter(), []
    head = {"gpu": torch.cuda.get_device_name(0), "cpu_model": cpu_model(), "clips": len(items),
            "torch": torch.__version__, "runs": runs}
    for part, name, decoder, workers in plan(args.workers):
        row = {"part": part, "backbone": name, "decoder": decoder, "workers": workers}
        if time.perf_counter() - start > args.budget_s:
            runs.append({**row, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
            continue
        t = time.perf_counter()
        try:
            row.update(run_one(part, name, decoder, workers, items))
        except Exception as e:  # noqa: BLE001 — one failed run (NVDEC missing, say) must not cost the others
            row["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        row["seconds"] = round(time.perf_counter() - t, 1)
        runs.append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(args.out, json.dumps(head, indent=1) + "\n")  # after each run: a kill keeps the rest
    write_text_atomic(args.out, json.dumps(head, indent=1) + "\n")


if __name__ == "__main__":
    main()
