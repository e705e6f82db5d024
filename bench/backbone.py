"""Backbone speed on CPU (run by hand, not a test): images/s, one-time cost and cosine to fp32 of each variant.

Variants, each through pipeline.Embedder exactly as extract runs them (uint8 NHWC frames in, normalization inside):
  eager     bf16 autocast + channels_last (extract's path before issue 13)
  compiled  the same, through torch.compile (inductor, freezing)   -- one-time cost: the first call
  autocast  eager bf16 autocast without pipeline.fold's folded bf16 weights (what `eager` was before it)
  int8      PT2E static int8 (torchao X86InductorQuantizer), calibrated on --calib frames of the real clips, then
            compiled                                                 -- one-time cost: export + calibrate + compile
Backbones are any --backbone name, families' included (`timm:convnext_tiny`): measure those with `--variants eager`
(only torchvision's are measured compiled and int8; pipeline/accel.py keeps eager-only results as CPU_BATCH).
Frames are decoded from the real clips (every 10th frame, the weights' resize/crop); calibration and cosine use
different clips. Cosine is to the same backbone in eager fp32 on those frames. Only mobilenet_v2 has trustworthy
(ImageNet) weights offline (/work/shared/weights, see its README); the resnets are random init, so their cosines
say less about real features. Inductor's cache goes to a fresh directory per run: compile costs are cold.
Results merge into --out keyed by backbone/variant/batch, so a table is built over several short runs:

    flock /tmp/framecache-bench.lock python bench/backbone.py --backbones resnet18 --variants eager compiled
    python bench/backbone.py --table      # the CPU_TABLES lines for pipeline/accel.py, from --out
    python bench/backbone.py --out bench/results/backbone_amx.json ...   # one file per CPU kind (cpu_kind)

The meta records the CPU model, its kind, its lscpu flags and the load average before and after: on a shared machine
absolute images/s are noisy, and what carries over is the ratio between backbones measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-bench-"))  # cold compiles

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)
from pipeline import (Embedder, ExtractConfig, cpu_flags, cpu_kind, cpu_model, decode_video, geometry_for,  # noqa: E402
                      load_backbone, load_source, sampling_for)

SHARED = ROOT.parent / "shared"
WEIGHTS = {"mobilenet_v2": str(SHARED / "weights" / "mobilenet_v2_float_dequantized.pth")}
TABLE_VARIANTS = ("eager", "compiled", "int8")  # what pipeline/accel.py's Measured holds
VARIANTS = (*TABLE_VARIANTS, "autocast")  # autocast: eager bf16 as before pipeline.fold (for the ratio)


def real_frames(manifest: Path, backbone, n_calib: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, evaluation) uint8 frames, every 10th frame, from disjoint clips (calibration: the first ones;
    evaluation: every 7th clip from the end, so other classes too)."""
    items = load_source(manifest)
    cfg = ExtractConfig(backbone=backbone.name, weights="none", sampling=sampling_for(backbone.name, every=10))
    geometry = geometry_for(cfg, backbone)

    def take(order, n):
        out, count = [], 0
        for it in order:
            frames = decode_video(it.path, cfg.sampling, geometry).frames
            out.append(frames)
            count += len(frames)
            if count >= n:
                break
        return torch.from_numpy(np.concatenate(out)[:n])

    evaluation = take(items[::-7], n_eval)
    used = {it.id for it in items[::-7]}
    return take([it for it in items if it.id not in used], n_calib), evaluation


def rate(embed: Embedder, x: torch.Tensor, batch: int, seconds: float, blocks: int = 3) -> float:
    """Images/s, best of `blocks` blocks of about `seconds` each on `batch` real frames (least disturbed)."""
    x = x[:batch] if len(x) >= batch else x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
    t = time.perf_counter()
    embed(x)
    calls = max(1, int(seconds / max(time.perf_counter() - t, 1e-3)))
    best = 0.0
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(calls):
            embed(x)
        best = max(best, calls * batch / (time.perf_counter() - t))
    return best


def cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(c.min()), float(c.mean())


def embed_all(embed: Embedder, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([embed(x[i:i + batch]) for i in range(0, len(x), batch)])


def measure(backbone, variant: str, batch: int, calib: torch.Tensor, evaluation: torch.Tensor,
            reference: np.ndarray, seconds: float) -> dict:
    embed = Embedder(backbone, torch.device("cpu"), "int8" if variant == "int8" else "bf16",
                     compile=variant == "compiled", batch=batch, fold=variant != "autocast")
    if variant == "int8":
        embed.calibrate(calib)
    t = time.perf_counter()
    out = embed_all(embed, evaluation, batch)  # compiles on its first call
    setup = embed.setup_s if variant in ("compiled", "int8") else 0.0
    lo, mean = cosine(out, reference)
    row = {"backbone": backbone.name, "variant": variant, "batch": batch, "setup_s": round(setup, 2),
           "images_per_s": round(rate(embed, evaluation, batch, seconds), 1), "cosine_min": round(lo, 5),
           "cosine_mean": round(mean, 5), "first_pass_s": round(time.perf_counter() - t, 2),
           "loadavg_1m": round(os.getloadavg()[0], 1)}
    print(json.dumps(row), flush=True)
    return row


def calibration_noise(backbone, calib: torch.Tensor, evaluation: torch.Tensor, batch: int) -> dict:
    """Cosine between two int8 models of one backbone calibrated on the two halves of `calib` (as two runs, or a run
    and its resume, would be): how much int8 features depend on which frames calibrated them."""
    half = len(calib) // 2
    outs = []
    for part in (calib[:half], calib[half:]):
        embed = Embedder(backbone, torch.device("cpu"), "int8", batch=batch)
        embed.calibrate(part)
        outs.append(embed_all(embed, evaluation, batch))
        torch._dynamo.reset()
    lo, mean = cosine(*outs)
    row = {"backbone": backbone.name, "int8_batch": batch, "calibration_frames_each": half,
           "cosine_min": round(lo, 5), "cosine_mean": round(mean, 5)}
    print(json.dumps(row), flush=True)
    return row


def merge(out: Path, rows: list[dict], meta: dict) -> None:
    old = json.loads(out.read_text()) if out.exists() else {"rows": []}
    keys = {(r["backbone"], r["variant"], r["batch"]) for r in rows}
    kept = [r for r in old["rows"] if (r["backbone"], r["variant"], r["batch"]) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = sorted(kept + rows, key=lambda r: (r["backbone"], VARIANTS.index(r["variant"]), r["batch"]))
    meta["weights"] = {**old.get("meta", {}).get("weights", {}), **meta["weights"]}  # over every run merged
    write_text_atomic(out, json.dumps({**old, "meta": meta, "rows": merged}, indent=1) + "\n")


def best_of(rows: list[dict], tolerance: float = 0.02) -> dict:
    """The fastest row, or the smallest batch within `tolerance` of it (less memory and padding, same speed)."""
    top = max(r["images_per_s"] for r in rows)
    return min((r for r in rows if r["images_per_s"] >= (1 - tolerance) * top), key=lambda r: r["batch"])


def table(out: Path) -> None:
    """The CPU_SPEED entries: per backbone, each variant's best batch and images/s, its worst one-time cost over the
    batches (the coldest compile), and its min cosine; `trusted` where the weights are real (ImageNet)."""
    rows = json.loads(out.read_text())["rows"]
    for name in sorted({r["backbone"] for r in rows}):
        mine = {v: [r for r in rows if r["backbone"] == name and r["variant"] == v] for v in TABLE_VARIANTS}
        if mine["eager"] and not (mine["compiled"] or mine["int8"]):  # a family's: eager only
            print(f'    "{name}": {best_of(mine["eager"])["batch"]},  # CPU_BATCH')
            continue
        if not all(mine.values()):
            print(f"# {name}: missing {[v for v, r in mine.items() if not r]}")
            continue
        e, c, q = (best_of(mine[v]) for v in TABLE_VARIANTS)
        cost = {v: max(r["setup_s"] for r in mine[v]) for v in TABLE_VARIANTS}
        cos = {v: min(r["cosine_min"] for r in mine[v]) for v in TABLE_VARIANTS}
        print(f'    "{name}": Measured(batch={e["batch"]}, eager={e["images_per_s"]}, compiled={c["images_per_s"]}, '
              f'compiled_batch={c["batch"]}, compile_s={cost["compiled"]}, compile_cosine={cos["compiled"]}, '
              f'int8={q["images_per_s"]}, int8_batch={q["batch"]}, int8_s={cost["int8"]}, '
              f'int8_cosine={cos["int8"]}, trusted={name in WEIGHTS}),')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20" / "manifest.csv")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    ap.add_argument("--calib", type=int, default=256, help="calibration frames for int8")
    ap.add_argument("--eval", type=int, default=64, help="frames the cosine is computed on")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of one timed block")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backbone.json")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core); 1 measures one lane of pipeline.lanes")
    ap.add_argument("--table", action="store_true", help="print the CPU_SPEED entries from --out and exit")
    ap.add_argument("--calibration-noise", action="store_true",
                    help="instead: int8 cosine between two calibrations on disjoint halves of --calib frames")
    args = ap.parse_args()
    if args.table:
        return table(args.out)
    rows, load_before, ready = [], os.getloadavg(), []
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.backbones:
        backbone = load_backbone(name, WEIGHTS.get(name, "none"))
        calib, evaluation = real_frames(args.data, backbone, args.calib, args.eval)
        if args.calibration_noise:
            noise = calibration_noise(backbone, calib, evaluation, args.batches[0])
            old = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
            old.setdefault("calibration_noise", {})[name] = noise
            write_text_atomic(args.out, json.dumps(old, indent=1) + "\n")
            continue
        reference = embed_all(Embedder(backbone, torch.device("cpu"), "fp32"), evaluation, 16)
        ready.append((backbone, calib, evaluation, reference))
    # backbones take turns at each batch: on a shared machine their ratio is then measured under the same load
    for variant in args.variants:
        for batch in args.batches:
            for backbone, calib, evaluation, reference in ready:
                rows.append(measure(backbone, variant, batch, calib, evaluation, reference, args.seconds))
                torch._dynamo.reset()  # each compiled variant starts from nothing, as a new process would
    if not rows:
        return
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": os.cpu_count(),
            "cpu_model": cpu_model(), "cpu_kind": cpu_kind(),  # the table is kept per kind (pipeline/accel.py)
            "lscpu_flags": sorted(cpu_flags()), "loadavg_before_after": [load_before, os.getloadavg()],
            "weights": {n: WEIGHTS.get(n, "none (random init, seed 0)") for n in args.backbones},
            "calibration_frames": args.calib, "eval_frames": args.eval, "size": "weights' own (224)"}
    merge(args.out, rows, meta)


if __name__ == "__main__":
    main()
