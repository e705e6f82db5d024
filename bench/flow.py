"""Flow benchmark (run by hand, not a test): what optical flow costs beside decoding, whether flow extraction streams,
and what a Farneback flow stream gives on the real clips beside RGB.

1. speed: consecutive frames of the real clips decoded at 224 px (mobilenet_v2's geometry) alone (decode frames/s),
   then flow between them per method (flow frames/s: one flow per frame pair), on the CPU. RAFT runs random-init
   (--flow-weights none: this machine is offline; its cost is the architecture's, not the weights').
2. memory: peak RSS of a fresh process extracting Farneback flow stacks from a 10 s and a 10 min video (--every 10):
   stacks stream, so memory must not follow the length.
3. real clips (--real): a flow store (--modality flow --flow farneback --flow-stack 5) and an RGB store of the same
   sampling (--frames 8), mobilenet_v2 with the dequantized weights file, then fit-head --head linear on the
   official split of each, feature-level fusion (fit-head --fuse concat) and late fusion (fuse, TSN's 1 : 1.5).

    python bench/flow.py [--real] [--data ../shared/data/ucf101_subset20] [--out bench/results/flow.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)
from pipeline import FlowComputer, Geometry, Sampling, cpu_model, decode_video, load_source  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_float_dequantized.pth"
GEOMETRY = Geometry(size=224, resize=256, crop="center")  # mobilenet_v2's preset
PAIRS = {"farneback": 200, "raft_small": 6, "raft_large": 3}  # pairs timed per method (RAFT: seconds a pair on CPU)


def machine() -> dict:
    """The CPU every figure here was measured on (and how busy it was: this machine may be shared)."""
    model = cpu_model()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    import cv2

    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__, "opencv": cv2.__version__,
            "lscpu_flags": flags}


def speed(data: Path, n_clips: int = 3) -> dict:
    """Decode frames/s and each method's flow frames/s on consecutive frames of the first clips."""
    items = load_source(data / "manifest.csv")[:n_clips]
    start = time.perf_counter()
    frames = [decode_video(it.path, Sampling(every=1), GEOMETRY).frames for it in items]
    decode_s = time.perf_counter() - start
    decoded = sum(len(f) for f in frames)
    clip = torch.from_numpy(frames[0])                                 # (T, 224, 224, 3) uint8
    out = {"clips": n_clips, "size": 224, "decode": {"frames": decoded, "seconds": round(decode_s, 2),
                                                     "frames_per_s": round(decoded / decode_s, 1)}}
    for method, pairs in PAIRS.items():
        compute = FlowComputer(method, "none" if method.startswith("raft") else None)
        compute.pairs(clip[:1], clip[1:2])                             # warm-up (first call allocates)
        start = time.perf_counter()
        compute.pairs(clip[:pairs], clip[1:pairs + 1])
        seconds = time.perf_counter() - start
        out[method] = {"pairs": pairs, "seconds": round(seconds, 2), "flow_frames_per_s": round(pairs / seconds, 2)}
    return out


RSS_PROBE = """
import re, sys
sys.path.insert(0, {root!r})
from pipeline import ExtractConfig, Sampling, load_source, run_extraction
cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=10), size=64, workers=0,
                    modality="flow", flow="farneback", flow_stack=5)
run_extraction(load_source({video!r}), {store!r}, cfg)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak (the video's frames)
print(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024)
"""


def rss_video_length() -> dict:
    """Peak RSS (MB) of flow extraction (resnet18 at 64 px, --every 10) from a 10 s and a 10 min 320x240 video, each
    in a fresh process; again with glibc's mmap threshold fixed at its default 128 KiB (MALLOC_MMAP_THRESHOLD_): by
    default glibc raises it after big blocks are freed, and the heap then grows with fragmentation, not with data
    held."""
    from data.synth import write_video

    out = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, seconds in (("10s", 10), ("10min", 600)):
            video = Path(tmp) / f"{name}.mp4"
            base = rng.integers(0, 256, (240 // 8, 320 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            write_video(video, np.stack([np.roll(base, 2 * t, axis=1) for t in range(25 * seconds)]),
                        codec="libx264", lossless=False)
            for env, tag in (({}, ""), ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "_fixed_mmap_threshold")):
                code = RSS_PROBE.format(root=str(ROOT), video=str(video), store=f"{tmp}/{name}{tag}-store")
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, **env})
                out[f"{name}{tag}_peak_rss_mb"] = round(float(done.stdout.split()[-1]), 1)
    return out


def real_clips(data: Path, work: Path) -> dict:
    """Flow and RGB stores of the real clips, a linear head on each (official split), and their two fusions."""
    from heads.api import fit
    from heads.config import TrainConfig
    from heads.fusion import fuse_runs
    from pipeline import ExtractConfig, extract_source

    base = dict(backbone="mobilenet_v2", weights=str(WEIGHTS), sampling=Sampling(frames=8), workers=1)
    out = {"backbone": "mobilenet_v2", "weights": str(WEIGHTS.name), "sampling": "--frames 8", "size": 224}
    runs = {}
    for name, extra in (("rgb", {}), ("flow", {"modality": "flow", "flow": "farneback", "flow_stack": 5})):
        result = extract_source(data / "manifest.csv", ExtractConfig(**base, **extra), work / name)
        fitted = fit(work / name, TrainConfig(head="linear", device="cpu"), work / f"run-{name}")
        runs[name] = work / f"run-{name}"
        out[name] = {"extract_s": round(result.seconds, 1), "rows": result.frames,
                     "rows_per_s": round(result.frames_per_s, 2), "failed": len(result.failed),
                     "precision": result.precision, **_scores(fitted.metrics)}
    concat = fit([work / "rgb", work / "flow"], TrainConfig(head="linear", device="cpu"), work / "run-concat",
                 fuse="concat")
    out["fit_head_fuse_concat"] = _scores(concat.metrics)
    late = fuse_runs([runs["rgb"], runs["flow"]], work / "run-late", [1.0, 1.5])
    out["late_fusion_1_1.5"] = {"test_accuracy": round(late["test"]["accuracy"], 4), "test_n": late["n_common"]}
    return out


def _scores(metrics: dict) -> dict:
    test = metrics["test"]
    return {"test_accuracy": round(test["accuracy"], 4), "test_n": test["n"], "macro_f1": round(test["macro_f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flow.json")
    ap.add_argument("--real", action="store_true", help="also the real-clip stores and heads (minutes)")
    ap.add_argument("--skip-speed", action="store_true", help="keep the speed and memory figures already in --out")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = machine()
    if not args.skip_speed:
        results["speed"] = speed(args.data)
        results["memory"] = rss_video_length()
        print(json.dumps(results["speed"]), json.dumps(results["memory"]))
    if args.real:
        with tempfile.TemporaryDirectory() as tmp:
            results["real_clips"] = real_clips(args.data, Path(tmp))
        print(json.dumps(results["real_clips"]))
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
