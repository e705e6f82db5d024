"""Extraction benchmark (run by hand, not a test): how close end-to-end gets to its limits.

In one run, on the real clips, for each backbone, units/s (sampled frames at --every 10 for image
backbones, clips of --clip-len for video ones) of:
  D  decode alone   (the same DataLoader worker setup as extract, no model)
  B  backbone alone (synthetic units, same batch size, precision, memory format)
  E  end to end     (pipeline.extract into a temporary store)
On a CPU decode and inference share the cores, so the ceiling is 1 / (1/B + 1/D); on a GPU it is
min(B, D). Also peak RSS of extract on the shortest vs the longest clips (memory must not grow with
the dataset or with a video's length; video backbones add a generated 10-minute video against a
10-second one), and startup: `cli.py extract` from process start to its first batch.
`--parts options` (image backbones) adds issue 13's table: B of each CPU option (eager bf16, compiled, int8), D of
each --resize-engine, and the whole `cli.py extract` command's wall-clock on every clip with the defaults and with
--precision int8 (startup, compile and calibration included), against the defaults' serial ceiling.
`--parts peer` (image backbones) measures, in one run, the whole `cli.py extract` command with the defaults and the
usual open-source extractor's recipe (PEER_RECIPE, needs OpenCV: the `bench` extra), and their ratio.
Uses only the public API (`pipeline`). A partial run (--parts) updates the backbone's entry in --out.

    python bench/extract.py [--data ../shared/data/ucf101_subset20] [--backbones resnet18 resnet50]
    python bench/extract.py --backbones resnet18 --parts options
    python bench/extract.py --backbones resnet50 --parts peer --peer-every-clip 2
    python bench/extract.py --backbones r2plus1d_18 --out bench/results/clips.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import (RESIZE_ENGINES, Done, Embedder, ExtractConfig, Rows, decode_loader,  # noqa: E402
                      default_batch, geometry_for, get_spec, load_backbone, load_source, resolve_device,
                      run_extraction, sampling_for, speed_for)


def decode_only(items, cfg: ExtractConfig, backbone, device) -> tuple[float, int, int]:
    loader = decode_loader(items, cfg, geometry_for(cfg, backbone), device)
    t, units, decoded = time.perf_counter(), 0, 0
    for m in loader:
        if isinstance(m, Rows):
            units += len(m)
        elif isinstance(m, Done) and m.info is not None:
            decoded += m.info.n_frames
    return units / (time.perf_counter() - t), units, decoded


def backbone_only(backbone, device, precision, batch_size: int, size: int, clip_len: int | None,
                  batches: int = 6, blocks: int = 3) -> float:
    """Best of `blocks` timed blocks: the least disturbed estimate on a shared machine (so E/B errs low)."""
    embed = Embedder(backbone, device, precision)
    shape = (batch_size, size, size, 3) if clip_len is None else (batch_size, clip_len, size, size, 3)
    x = torch.randint(0, 255, shape, dtype=torch.uint8)
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
        r = run_extraction(items, Path(tmp) / "store", cfg)
    return r.frames_per_s, r.frames


RSS_PROBE = """
import resource, sys, tempfile
sys.path.insert(0, {root!r})
from pipeline import ExtractConfig, load_source, run_extraction, sampling_for
items = [it for it in load_source({manifest!r}) if it.id in set({ids!r})]
flags = {flags!r}
cfg = ExtractConfig(backbone={backbone!r}, weights="none", size={size!r}, sampling=sampling_for({backbone!r}, **flags))
run_extraction(items, tempfile.mkdtemp() + "/s", cfg)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(manifest: Path, ids: list[str], backbone: str, flags: dict, size: int | None = None) -> float:
    """Peak RSS (this process + its decode workers) of a fresh process extracting the items `ids`."""
    code = RSS_PROBE.format(root=str(ROOT), manifest=str(manifest), ids=ids, backbone=backbone, flags=flags,
                            size=size)
    kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return kb / 1024


def frames_by_id(data: Path) -> dict[str, int]:
    with open(data / "clips_info.csv") as f:
        return {row["path"].rsplit(".", 1)[0]: int(row["frames_decoded_pyav"]) for row in csv.DictReader(f)}


def rss_short_vs_long(data: Path, backbone: str, flags: dict, n: int = 20) -> dict:
    """Peak RSS extracting the n shortest vs the n longest clips of the whole dataset."""
    frames = frames_by_id(data)
    ranked = sorted((it.id for it in load_source(data / "manifest.csv")), key=lambda v: frames.get(v, 0))
    short, long = ranked[:n], ranked[-n:]
    a = peak_rss_mb(data / "manifest.csv", short, backbone, flags)
    b = peak_rss_mb(data / "manifest.csv", long, backbone, flags)
    return {f"shortest_{n}_mb": round(a, 1), f"longest_{n}_mb": round(b, 1),
            "frames_shortest_longest": [sum(frames[v] for v in short), sum(frames[v] for v in long)],
            "growth": round(b / a - 1, 3)}


def rss_video_length(backbone: str, flags: dict, size: int = 32) -> dict:
    """A generated 10-second vs 10-minute video (64x48, 25 fps), same settings at a small --size: RSS must not
    follow the length (clips stream). The small size keeps 900+ clips affordable on a CPU; decode memory is
    what would grow."""
    from data.synth import write_video

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, seconds in (("10s", 10), ("10min", 600)):
            n = 25 * seconds
            frames = (torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1) * 7 % 256).to(torch.uint8)
            write_video(Path(tmp) / f"{name}.mp4", frames.expand(n, 48, 64, 3).contiguous().numpy(),
                        codec="libx264", lossless=False)
            (Path(tmp) / f"{name}.csv").write_text(f"path,label\n{name}.mp4,x\n")
            out[f"{name}_mb"] = round(peak_rss_mb(Path(tmp) / f"{name}.csv", [name], backbone, flags, size), 1)
    out["growth"] = round(out["10min_mb"] / out["10s_mb"] - 1, 3)
    out["size"] = size
    return out


def startup_s(data: Path, backbone: str, flags: list[str]) -> tuple[float, float]:
    """(`cli.py extract` process start -> first batch, as the command reports it; whole command wall-clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "extract", str(data / "manifest.csv"),
                            "--backbone", backbone, "--weights", "none", "--limit", "1", *flags,
                            "--store", f"{tmp}/s"], capture_output=True, text=True, check=True, cwd=ROOT)
        wall = time.perf_counter() - t
    found = re.search(r"startup \(to first batch\)\s*\S?\s*([\d.]+) s", p.stdout)
    return (float(found[1]) if found else float("nan")), wall


def measure(name: str, items, args) -> dict:
    """D, B and E of one backbone in one run, B on both sides of E (machine load drifts)."""
    clip = get_spec(name).clip is not None
    flags = {"clip_len": args.clip_len, "clip_stride": args.clip_stride} if clip else {"every": args.every}
    cfg = ExtractConfig(backbone=name, weights="none", sampling=sampling_for(name, **flags),
                        batch_size=args.batch_size, workers=args.workers, device=args.device, size=args.size)
    backbone = load_backbone(name, "none")
    device = resolve_device(cfg.device, backbone.name, backbone.cpu_only)
    speed = speed_for(cfg.precision, cfg.compile, cfg.batch_size, backbone, device, items, cfg.sampling)
    precision, batch_size = speed.precision, speed.batch_size  # what extract will run: the device's batch
    D, units, decoded = decode_only(items, cfg, backbone, device)
    size, clip_len = geometry_for(cfg, backbone).size, cfg.sampling.clip_len if clip else None
    timing = {"batches": args.b_batches, "blocks": args.b_blocks}
    B_before = backbone_only(backbone, device, precision, batch_size, size, clip_len, **timing)
    E, rows = end_to_end(items, cfg)
    B_after = backbone_only(backbone, device, precision, batch_size, size, clip_len, **timing)
    B = max(B_before, B_after)
    ceiling = min(B, D) if device.type == "cuda" else 1 / (1 / B + 1 / D)
    return {"backbone": name, "unit": "clips" if clip else "frames", **flags, "size": size,
            "batch_size": batch_size, "compiled": speed.compiled, "device": str(device), "precision": precision,
            "rows": rows,
            "decoded_frames": decoded, "decode_D": round(D, 2), "backbone_B": round(B, 2),
            "backbone_B_before_after": [round(B_before, 2), round(B_after, 2)], "end_to_end_E": round(E, 2),
            "ceiling": round(ceiling, 2), "E_over_B": round(E / B, 3), "E_over_ceiling": round(E / ceiling, 3)}


def decode_by_engine(items, cfg: ExtractConfig, backbone, device) -> dict:
    """D (sampled frames/s, decode alone) for each --resize-engine, same workers."""
    return {e: round(decode_only(items, replace(cfg, resize_engine=e), backbone, device)[0], 1)
            for e in RESIZE_ENGINES}


def backbone_variants(backbone, device, size: int, args) -> dict:
    """B of each CPU option (eager bf16, compiled bf16, int8) at its own default batch, synthetic frames; the
    one-time cost (compile / calibration) apart. int8 calibrates on random frames here: speed does not depend on
    the ranges (cosines: bench/backbone.py, on real frames)."""
    out = {}
    for variant, precision, compiled in (("eager", "bf16", False), ("compiled", "bf16", True), ("int8", "int8", True)):
        batch = default_batch(backbone.name, False, device, variant)
        embed = Embedder(backbone, device, precision, compile=compiled, batch=batch)
        x = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8)
        if embed.needs_calibration:
            embed.calibrate(torch.randint(0, 255, (64, size, size, 3), dtype=torch.uint8))
        embed(x)  # compiles
        best = 0.0
        for _ in range(args.b_blocks):
            t = time.perf_counter()
            for _ in range(args.b_batches):
                embed(x)
            best = max(best, args.b_batches * batch / (time.perf_counter() - t))
        out[variant] = {"B": round(best, 1), "batch": batch, "setup_s": round(embed.setup_s, 1)}
        torch._dynamo.reset()
    return out


def wall_clock(data: Path, name: str, flags: list[str]) -> dict:
    """The whole `cli.py extract` command on every clip, as a new user runs it: rows / wall-clock seconds (startup,
    model build, compile or calibration all included)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "extract", str(data / "manifest.csv"),
                            "--backbone", name, "--weights", "none", *flags, "--store", f"{tmp}/s"],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        wall = time.perf_counter() - t
    rows = int(re.search(r"│ (?:frames|clips)\s*│\s*(\d+)", p.stdout)[1])
    loop = float(re.search(r"│ (?:frames|clips)/s\s*│\s*([\d.]+)", p.stdout)[1])
    start = re.search(r"startup \(to first batch\)\s*\S?\s*([\d.]+) s", p.stdout)
    return {"flags": flags, "rows": rows, "wall_s": round(wall, 1), "E_wall": round(rows / wall, 1),
            "E_loop": loop, "startup_s": float(start[1]) if start else None}


def speed_options(name: str, items, args) -> dict:
    """Issue 13's table for one image backbone: B per option, D per resize engine, E wall-clock (defaults, and
    --precision int8), and the ratios to the serial ceiling of the defaults."""
    cfg = ExtractConfig(backbone=name, weights="none", sampling=sampling_for(name, every=args.every))
    backbone = load_backbone(name, "none")
    device = resolve_device(cfg.device, backbone.name, backbone.cpu_only)
    # The commands first: compiling in this process leaves inductor's compile workers behind, which would share
    # the cores with them.
    flags = ["--every", str(args.every)]
    default, int8 = wall_clock(args.data, name, flags), wall_clock(args.data, name, flags + ["--precision", "int8"])
    D = decode_by_engine(items, cfg, backbone, device)
    B = backbone_variants(backbone, device, geometry_for(cfg, backbone).size, args)
    ceiling = 1 / (1 / B["eager"]["B"] + 1 / D["exact"])
    ceiling_int8 = 1 / (1 / B["int8"]["B"] + 1 / D["exact"])
    return {"D_by_engine": D, "B_by_option": B, "E_default": default, "E_int8": int8,
            "ceiling_default": round(ceiling, 1), "E_wall_over_ceiling": round(default["E_wall"] / ceiling, 3),
            "E_loop_over_ceiling": round(default["E_loop"] / ceiling, 3), "ceiling_int8": round(ceiling_int8, 1),
            "E_int8_wall_over_ceiling": round(int8["E_wall"] / ceiling_int8, 3)}


PEER_RECIPE = ("v-iashin/video_features' ResNet extractor without its ffmpeg re-encode: OpenCV decodes every frame, "
               "every Nth kept, BGR->RGB, PIL Resize(256) + CenterCrop(224), ToTensor + Normalize, fp32, batch 1, "
               "torch threads = all cores; timed from the first open to the last forward (imports and model build "
               "excluded)")


def peer_model(name: str):
    """The peer's network: torchvision's random-init backbone, classifier removed, eval, fp32, default layout."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    model.fc = torch.nn.Identity()
    return model.eval()


def peer_frames(cv2, path: str, every: int):
    """RGB frames 0, N, 2N, ... as the peer reads them: cv2.VideoCapture decoding every frame."""
    cap = cv2.VideoCapture(path)
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % every == 0:
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        i += 1
    cap.release()


def peer_rate(name: str, paths: list[str], every: int) -> dict:
    """Frames/s of the usual open-source extractor's recipe (PEER_RECIPE) on `paths`."""
    import cv2
    from torchvision import transforms as T

    transform = T.Compose([T.ToPILImage(), T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    model, threads = peer_model(name), torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    frames, t = 0, time.perf_counter()
    with torch.no_grad():
        for path in paths:
            for rgb in peer_frames(cv2, path, every):
                model(transform(rgb).unsqueeze(0))
                frames += 1
    seconds = time.perf_counter() - t
    torch.set_num_threads(threads)
    return {"recipe": PEER_RECIPE, "clips": len(paths), "frames": frames, "seconds": round(seconds, 1),
            "frames_per_s": round(frames / seconds, 1), "torch_threads": len(os.sched_getaffinity(0)),
            "opencv": cv2.__version__}


def peer_comparison(name: str, items, args) -> dict:
    """framecache's whole command with the defaults, then the peer, in one run: their frames/s and the ratio."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return {"skipped": "the peer part needs OpenCV: pip install -e '.[bench]'"}
    ours = wall_clock(args.data, name, ["--every", str(args.every)])
    peer = peer_rate(name, [it.path for it in items[::args.peer_every_clip]], args.every)
    return {"framecache": ours, "peer": peer, "ratio_wall": round(ours["E_wall"] / peer["frames_per_s"], 2),
            "ratio_loop": round(ours["E_loop"] / peer["frames_per_s"], 2)}


PARTS = ("speed", "startup", "rss", "options", "peer")
DEFAULT_PARTS = ("speed", "startup", "rss")


def run_parts(name: str, items, args) -> dict:
    clip = get_spec(name).clip is not None
    run = measure(name, items, args) if "speed" in args.parts else {"backbone": name}
    flags = {"clip_len": args.clip_len, "clip_stride": args.clip_stride} if clip else {"every": args.every}
    if "startup" in args.parts:
        cli_flags = (["--clip-len", str(args.clip_len)] if clip else ["--every", str(args.every)])
        run["startup_s"], run["startup_command_wall_s"] = startup_s(args.data, name, cli_flags)
    if "options" in args.parts and not clip:
        run["options"] = speed_options(name, items, args)
    if "peer" in args.parts and not clip:
        run["peer"] = peer_comparison(name, items, args)
    if "rss" in args.parts and not args.skip_rss:
        run["peak_rss"] = rss_short_vs_long(args.data, name, flags, args.rss_clips)
        if clip:
            run["peak_rss_video_length"] = rss_video_length(name, flags)
    return run


def merged(old: dict | None, new: dict) -> dict:
    """`new`'s runs over `old`'s, entry by entry (a partial run keeps the other measurements)."""
    if not old:
        return new
    runs = {r["backbone"]: r for r in old.get("runs", [])}
    for r in new["runs"]:
        runs[r["backbone"]] = {**runs.get(r["backbone"], {}), **r}
    return {**old, **{k: v for k, v in new.items() if k != "runs"}, "runs": list(runs.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucf101_subset20")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--clip-stride", type=int, default=16)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the library's (64 frames, 8 clips)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "extract.json")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(DEFAULT_PARTS),
                    help="what to measure; a partial run updates the backbone's entry in --out")
    ap.add_argument("--rss-clips", type=int, default=20, help="clips in each of the shortest / longest sets")
    ap.add_argument("--peer-every-clip", type=int, default=1, help="peer: its recipe on every k-th clip only")
    ap.add_argument("--b-batches", type=int, default=6, help="batches per timed block of B")
    ap.add_argument("--b-blocks", type=int, default=3, help="timed blocks of B (the best counts)")
    args = ap.parse_args()

    items = load_source(args.data / "manifest.csv")[:args.limit]
    results = {"clips": len(items), "cpu_cores": len(os.sched_getaffinity(0)),
               "torch": torch.__version__, "runs": []}
    for name in args.backbones:
        run = run_parts(name, items, args)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.exists() and args.parts != list(DEFAULT_PARTS) else None
    write_text_atomic(args.out, json.dumps(merged(old, results), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
