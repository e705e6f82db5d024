"""How to split a CPU's cores between decoding and the model (run by hand, not a test): for each backbone, the
in-loop rate E (extract's own frames/s, every 10th frame of the real clips, one decode worker, random init) of
each split in SPLITS, each in a fresh process, the splits alternating round by round; against the serial ceiling
1 / (1/B + 1/D) of the same run (B: backbone alone at extract's batch and precision; D: decode alone, one worker).
The issue's bar: E >= 0.9 of the ceiling for resnet18 and resnet50. On a machine shared with other work only the
ratios between splits of one round mean much; rerun on an idle machine for the figures.

    python bench/split.py [--backbones resnet18 resnet50] [--rounds 3] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from extract import backbone_only, decode_only  # noqa: E402

from featstore.atomic import write_text_atomic  # noqa: E402
from pipeline import (ExtractConfig, cpu_flags, cpu_kind, cpu_model, load_backbone, load_source,  # noqa: E402
                      resolve_device, sampling_for, speed_for)

# name -> (ExtractConfig.model_threads, ExtractConfig.decode_nice, extra environment of the process)
CORES = len(os.sched_getaffinity(0))
SPLITS = {
    "default": (None, 0, {}),                   # eager: one lane per core (pipeline.lanes), the worker beside them
    "one_lane": (CORES, 0, {}),                 # one lane, torch's threads on every core (the default before lanes)
    "worker_nice_10": (None, 10, {}),                         # the model keeps its cores, the worker fills the gaps
    "omp_passive": (None, 0, {"OMP_WAIT_POLICY": "PASSIVE"}),  # idle model threads sleep instead of spinning
    "omp_passive_nice_10": (None, 10, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "model_cores_minus_1": (max(1, CORES - 1), 0, {}),  # one lane, a core of the decoder's own
}

CHILD = """
import json, sys, tempfile
sys.path.insert(0, {root!r})
from pipeline import ExtractConfig, load_source, run_extraction, sampling_for
items = load_source({manifest!r})[:{limit!r}]
cfg = ExtractConfig(backbone={name!r}, weights="none", sampling=sampling_for({name!r}, every={every}),
                    model_threads={threads!r}, decode_nice={nice!r})
r = run_extraction(items, tempfile.mkdtemp() + "/s", cfg)
print(json.dumps({{"E_loop": r.frames_per_s, "rows": r.frames, "startup_s": r.startup_s}}))
"""


def in_loop(name: str, split: str, manifest: Path, every: int, limit: int | None) -> dict:
    threads, nice, env = SPLITS[split]
    code = CHILD.format(root=str(ROOT), manifest=str(manifest), limit=limit, name=name, every=every,
                        threads=threads, nice=nice)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, **env})
    return json.loads(p.stdout.strip().splitlines()[-1])


def ceiling(name: str, items, every: int) -> dict:
    cfg = ExtractConfig(backbone=name, weights="none", sampling=sampling_for(name, every=every))
    backbone = load_backbone(name, "none")
    device = resolve_device("cpu")
    speed = speed_for(cfg.precision, cfg.compile, None, backbone, device, items, cfg.sampling)
    D = decode_only(items, cfg, backbone, device)[0]
    B = backbone_only(backbone, device, speed.precision, speed.batch_size, 224, None)
    return {"D": round(D, 1), "B": round(B, 1), "ceiling": round(1 / (1 / B + 1 / D), 1),
            "batch_size": speed.batch_size, "precision": speed.precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucf101_subset20")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "split.json")
    args = ap.parse_args()
    manifest = args.data / "manifest.csv"
    items = load_source(manifest)[:args.limit]
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512", "avx_vnni", "avx2")))
    result = {"cpu_model": cpu_model(), "cpu_kind": cpu_kind(), "flags": flags, "cores": CORES,
              "clips": len(items), "every": args.every, "runs": []}
    for name in args.backbones:
        run = {"backbone": name, **ceiling(name, items, args.every), "E_loop": {s: [] for s in args.splits}}
        for _ in range(args.rounds):
            for split in args.splits:
                run["E_loop"][split].append(round(in_loop(name, split, manifest, args.every, args.limit)["E_loop"], 1))
                print(name, split, run["E_loop"][split][-1], flush=True)
        run["E_over_ceiling"] = {s: round(statistics.median(v) / run["ceiling"], 3) for s, v in run["E_loop"].items()}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
