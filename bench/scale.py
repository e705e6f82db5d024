"""Scale-out benchmark (run by hand, not a test): whole-store checks on thousands of shards, and the Ray engine.

  verify   a synthetic store of --shards small shards (one video each): seconds for open_store, `info`'s parts,
           verify and verify --deep (featstore.verify.verify_store, what `cli.py verify` runs)
  ray      on the real clips (int8 MobileNetV2, every 10th frame): one local process vs `--engine ray --tasks 2`
           on a local Ray cluster, both through the CLI as a user runs them; the engine's overhead as ratios of
           wall time (Ray's start included) and of frames/s (the extraction alone)
  done     the issue's closing check: `--engine ray --tasks 4 --store stores/ray` passes verify --deep and its
           features equal the single-process store's

    python bench/scale.py [verify] [ray] [done] [--shards 2000] [--data ../shared/data/ucf101_subset20]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore import StoreWriter, VideoRecord, open_store  # noqa: E402
from featstore.parts import store_parts  # noqa: E402
from featstore.format import VIDEO_COLUMNS, shard_files  # noqa: E402
from featstore.verify import verify_store  # noqa: E402
from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_qnnpack_state_dict.pth"


def timed(fn):
    """(value, wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier one."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, round(time.perf_counter() - start, 3), round(time.process_time() - cpu, 3)


def column_reads(store: Path) -> dict:
    """ms per shard to read the 13 per-video columns with h5py's high-level API vs its low-level one (what
    featstore.integrity uses): the reason opening a store of small shards costs what it does."""
    files = shard_files(store)

    def high():
        for path in files:
            with h5py.File(path, "r") as f:
                [f[name][()] for name in VIDEO_COLUMNS]

    def low():
        for path in files:
            with h5py.File(path, "r") as f:
                for name, dtype in VIDEO_COLUMNS.items():
                    ds = h5py.h5d.open(f.id, name.encode())
                    ds.read(h5py.h5s.ALL, h5py.h5s.ALL,
                            np.empty(ds.shape, h5py.string_dtype("utf-8") if dtype == "str" else dtype))

    return {name: round(1000 * timed(fn)[2] / len(files), 2) for name, fn in (("high_level", high), ("low_level", low))}


def synthetic_store(path: Path, shards: int, frames: int = 8, dim: int = 256) -> None:
    """`shards` shards of one video each, written by 8 parts as a sharded run writes them."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((frames, dim)).astype(np.float32)
    per_part = shards // 8
    for part in range(8):
        with StoreWriter(path, {"backbone": "synthetic"}, ["backbone"], dim, prefix=f"s{part}of8",
                         flush_videos=1) as w:
            for k in range(per_part):
                w.add(VideoRecord(f"v{part}-{k:05d}", label="a", features=feats, frame_index=np.arange(frames),
                                  time_s=np.arange(frames) * 0.4, n_frames=frames))


def bench_verify(shards: int) -> dict:
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        store = Path(tmp) / "many"
        timings = {}
        _, *timings["write"] = timed(lambda: synthetic_store(store, shards))
        s, *timings["open_store"] = timed(lambda: open_store(store))
        _, *timings["info_parts"] = timed(lambda: store_parts(s))
        report, *timings["verify"] = timed(lambda: verify_store(store))
        deep, *timings["verify_deep"] = timed(lambda: verify_store(store, deep=True))
        assert report.passed and deep.passed and deep.videos == len(s) == shards
        return {"shards": shards, "videos": len(s), "seconds_wall_cpu": timings,
                "verify_deep_cpu_ms_per_shard": round(1000 * timings["verify_deep"][1] / shards, 2),
                "column_read_cpu_ms_per_shard": column_reads(store)}


def cli_extract(manifest: Path, store: Path, *extra: str) -> tuple[float, float, str]:
    """Wall seconds of the whole command, frames/s from its summary, and its output."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "extract", str(manifest), "--backbone", "quantized_mobilenet_v2",
           "--weights", str(WEIGHTS), "--every", "10", "--store", str(store), *extra]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    rate = float(re.search(r"frames/s\s*│\s*([\d.]+)", res.stdout)[1])
    return round(wall, 2), rate, res.stdout


def compare_stores(a: Path, b: Path) -> dict:
    sa, sb = open_store(a), open_store(b)
    same_ids = sorted(sa.ids(status=None)) == sorted(sb.ids(status=None))
    worst_abs, worst_cos = 0.0, 1.0
    for vid in sb.ids():
        fa, fb = sa.features(vid), sb.features(vid)
        if fa.shape != fb.shape:
            return {"same_ids": same_ids, "same_shapes": False}
        worst_abs = max(worst_abs, float(np.abs(fa - fb).max()))
        cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1) + 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
    return {"same_ids": same_ids, "same_shapes": True, "videos": len(sb.ids()), "max_abs_diff": worst_abs,
            "min_cosine": worst_cos}


def bench_ray(manifest: Path, work: Path) -> dict:
    local_wall, local_rate, _ = cli_extract(manifest, work / "local")
    ray_wall, ray_rate, _ = cli_extract(manifest, work / "ray2", "--engine", "ray", "--tasks", "2")
    return {"local": {"wall_s": local_wall, "frames_per_s": local_rate},
            "ray_tasks_2": {"wall_s": ray_wall, "frames_per_s": ray_rate},
            "wall_ratio_ray_over_local": round(ray_wall / local_wall, 3),
            "throughput_ratio_ray_over_local": round(ray_rate / local_rate, 3),
            "same_as_local": compare_stores(work / "ray2", work / "local")}


def done_check(manifest: Path, single: Path) -> dict:
    """The issue's closing command, run from the repository root into stores/ray."""
    store = ROOT / "stores" / "ray"
    wall, rate, _ = cli_extract(manifest, store, "--engine", "ray", "--tasks", "4")
    deep = verify_store(store, deep=True)
    return {"command": f"cli.py extract {manifest} --backbone quantized_mobilenet_v2 --weights {WEIGHTS} "
                       "--engine ray --tasks 4 --store stores/ray",
            "wall_s": wall, "frames_per_s": rate, "verify_deep_passed": deep.passed, "verify_bad": deep.bad,
            "shards": deep.shards, "equal_to_single_process": compare_stores(store, single)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["verify", "ray", "done"], choices=["verify", "ray", "done"])
    ap.add_argument("--shards", type=int, default=2000)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if "verify" in args.parts:
        results["verify"] = bench_verify(args.shards)
        print(json.dumps(results["verify"]), flush=True)
    manifest = args.data / "manifest.csv"
    if {"ray", "done"} & set(args.parts):
        with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
            work = Path(tmp)
            if "ray" in args.parts:
                results["ray"] = bench_ray(manifest, work)
                print(json.dumps(results["ray"]), flush=True)
            else:
                cli_extract(manifest, work / "local")
            if "done" in args.parts:
                results["done"] = done_check(manifest, work / "local")
                print(json.dumps(results["done"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
