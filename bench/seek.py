"""Seek benchmark (run by hand, not a test): sparse frame sampling by seeking vs decoding every frame.

A generated 10-minute 1280x720 H.264 video at 25 fps (keyframe at least every 250 frames, B-frames, and scene cuts
at irregular times, which x264 turns into extra keyframes, as in a film), sampled at 1 frame / 10 s (--fps 0.1):
seconds and frames decoded for `--seek never` and `--seek always`, what `--seek auto` chose, and whether
both give identical frames (indices, times, pixels). The video is made once into --cache (not the repository).
Also the peak RSS of a fresh process streaming the 10-minute video's frames at --every 10 (1,500 sampled frames)
against a 10-second one (25), and holding them all (decode_video): streaming holds one window, so memory must
not follow the length.
Then what `--seek auto` costs where it does not seek: D (sampled frames/s, extract's decode workers) on the real
clips at --every 10 with auto vs never (auto reads each video's packets once more to decide).
Uses only the public API (`pipeline`) and PyAV.

    python bench/seek.py [--cache /tmp/framecache-bench] [--out bench/results/seek.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)
from pipeline import (Done, ExtractConfig, FrameStream, Geometry, Rows, Sampling, decode_loader,  # noqa: E402
                      geometry_for, load_backbone, load_source, sampling_for)

SHARED = ROOT.parent / "shared"

SECONDS, FPS, WIDTH, HEIGHT, GOP = 600, 25, 1280, 720, 250


def make_video(path: Path, seconds: int = SECONDS) -> Path:
    """FFmpeg's moving test pattern (its first 8 s, looped: making 720p frames costs more than encoding them), a
    keyframe forced at a scene cut every 17-43 s (seeded) besides x264's own every GOP frames; encoded once, reused
    when already there."""
    if path.exists():
        return path
    cuts = set(np.cumsum(np.random.default_rng(0).integers(17 * FPS, 43 * FPS, 40)).tolist())
    tmp = path.with_suffix(".part.mp4")
    with av.open(f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration=8", format="lavfi") as src:
        loop = list(src.decode(video=0))
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(GOP),
                                                                     "bf": "3", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(seconds * FPS):
            frame = loop[k % len(loop)]
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            frame.pict_type = PictureType.I if k in cuts else PictureType.NONE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)
    return path


def run(path: Path, sampling: Sampling, seek: str) -> dict:
    stream = FrameStream(path, sampling, Geometry(), seek=seek)
    t = time.perf_counter()
    windows = list(stream)
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "frames_decoded": stream.decoded, "seeks": stream.seeks,
            "sampled": sum(len(w) for w in windows), "windows": windows, "n_frames": stream.info.n_frames}


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.concatenate([getattr(w, k) for w in a["windows"]]),
                              np.concatenate([getattr(w, k) for w in b["windows"]]))
               for k in ("frames", "frame_index", "time_s", "time_end_s"))


def real_clips_rate(data: Path, seek: str, rounds: int = 2) -> list[float]:
    """Sampled frames/s of extract's decode stage alone on the real clips at --every 10, `rounds` passes."""
    items = load_source(data / "manifest.csv")
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=sampling_for("resnet18", every=10), seek=seek)
    geometry = geometry_for(cfg, load_backbone("resnet18", "none"))
    rates = []
    for _ in range(rounds):
        t, units = time.perf_counter(), 0
        for m in decode_loader(items, cfg, geometry, torch.device("cpu")):
            units += len(m) if isinstance(m, Rows) else 0
            if isinstance(m, Done) and m.error:
                raise RuntimeError(m.error)
        rates.append(round(units / (time.perf_counter() - t), 1))
    return rates


# VmHWM, not ru_maxrss: a child started from this process reported its parent's peak (ru_maxrss survives exec).
RSS_PROBE = """
import re, sys
sys.path.insert(0, {root!r})
from pipeline import FrameStream, Geometry, Sampling, decode_video
if {whole!r}:  # all sampled frames in one piece, as frame sampling held them before it streamed
    sampled = len(decode_video({path!r}, Sampling(every=10), Geometry()).frames)
else:
    sampled = sum(len(window) for window in FrameStream({path!r}, Sampling(every=10), Geometry(), seek="never"))
print(sampled, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1])
"""


def peak_rss(path: Path, whole: bool = False) -> dict:
    """Sampled frames and peak RSS (MB) of a fresh process streaming `path` at --every 10 (`whole`: holding them)."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE.format(root=str(ROOT), path=str(path), whole=whole)],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"sampled": int(out[0]), "peak_rss_mb": round(int(out[1]) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "framecache-bench")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "seek.json")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ucf101_subset20")
    ap.add_argument("--make-only", action="store_true", help="make the video (not timed) and stop")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    path = make_video(args.cache / f"seek_{SECONDS}s_{HEIGHT}p_gop{GOP}.mp4")
    made = time.perf_counter() - t
    if args.make_only:
        return
    with av.open(str(path)) as container:
        keys = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    results = {"video": {"seconds": SECONDS, "fps": FPS, "size": [WIDTH, HEIGHT], "max_gop": GOP, "keyframes": keys,
                         "bytes": path.stat().st_size, "made_in_s": round(made, 1)}, "runs": []}
    sampling = Sampling(fps=0.1)
    never, always, auto = (run(path, sampling, mode) for mode in ("never", "always", "auto"))
    row = {"sampling_fps": 0.1, "identical": same(never, always), "auto_seeked": auto["seeks"] > 0,
           "auto_seconds": auto["seconds"], "speedup": round(never["seconds"] / always["seconds"], 2),
           **{mode: {k: v for k, v in r.items() if k != "windows"} for mode, r in (("never", never),
                                                                                 ("always", always))}}
    results["runs"].append(row)
    print(json.dumps(row), flush=True)
    short = make_video(args.cache / f"seek_10s_{HEIGHT}p_gop{GOP}.mp4", seconds=10)
    results["rss_every10"] = {"10s": peak_rss(short), "10min": peak_rss(path),
                              "10min_in_one_piece": peak_rss(path, whole=True)}
    print(json.dumps(results["rss_every10"]), flush=True)
    if (args.data / "manifest.csv").exists():
        rates = {mode: [] for mode in ("never", "auto")}
        for _ in range(2):  # interleaved
            for mode in rates:
                rates[mode] += real_clips_rate(args.data, mode, rounds=1)
        results["real_clips_every10_D"] = {**rates, "auto_over_never": round(
            float(np.median(rates["auto"]) / np.median(rates["never"])), 3)}
        print(json.dumps(results["real_clips_every10_D"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
