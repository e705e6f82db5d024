"""Tiny real videos and images, written with PyAV: test fixtures and the offline demo dataset.

`make_temporal_dataset` writes classes that differ only in the ORDER of their frames ('grow' is 'shrink' played
backwards, 'brighten' is 'darken' backwards), with random positions and colours per clip. Pooled over time, every
class pair has the same distribution of single frames, so a head that ignores order is at chance on each pair and a
sequence head (rnn/gru/lstm/attention) can beat it.

    python data/synth.py OUT_DIR [--n-per-class 15] [--frames 16] [--size 64] [--seed 0] [--images DIR]
"""
from __future__ import annotations

import argparse
import csv
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# codec -> (pixel format, encoder options) when lossless=True and when not. Only libx264rgb, ffv1 and libvpx-vp9
# (gbrp) return the input bit-exactly; libx264 at crf 0 is lossless in YUV 4:4:4 (RGB<->YUV rounding: +-2 levels);
# mpeg4 has no lossless mode, so "lossless" means its finest quantizer (4:2:0 chroma still blurs colour edges).
_CODECS = {
    "libx264rgb": (("rgb24", {"crf": "0", "preset": "ultrafast"}), ("rgb24", {"crf": "18", "preset": "veryfast"})),
    "libx264": (("yuv444p", {"crf": "0", "preset": "ultrafast"}), ("yuv420p", {"crf": "18", "preset": "veryfast"})),
    "mpeg4": (("yuv420p", {"qmin": "1", "qmax": "1"}), ("yuv420p", {})),
    "libvpx-vp9": (("gbrp", {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}),
                   ("yuv420p", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"})),
    "ffv1": (("bgr0", {}), ("bgr0", {})),
}
VFR_TIME_BASE = Fraction(1, 1000)  # Matroska stores milliseconds, so VFR times are rounded to them
TEMPORAL_PAIRS = (("grow", "shrink"), ("brighten", "darken"))
CLIPS_PER_GROUP = 3  # like UCF101's gNN: clips of one group share a scene, and a split never cuts a group


def codec_available(codec: str) -> bool:
    """Whether this PyAV/FFmpeg build can encode with `codec`."""
    return codec in av.codecs_available and codec in _CODECS


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25, codec: str = "libx264rgb",
                lossless: bool = True, container_options: dict[str, str] | None = None,
                codec_options: dict[str, str] | None = None) -> Path:
    """Write frames (T, H, W, 3) uint8 RGB as a constant-rate video; the container follows the file extension.

    `container_options` go to the muxer, e.g. {"movflags": "faststart"} puts the MP4 index first;
    `codec_options` to the encoder, over the codec's own, e.g. {"g": "250", "bf": "3"} (GOP, B-frames). The 4:2:0
    formats of libx264 with lossless=False need an even width and height."""
    rate = Fraction(fps).limit_denominator(100_000)
    pts = np.arange(len(_check_frames(frames)))
    return _encode(Path(path), frames, pts, 1 / rate, rate, codec, lossless, container_options, codec_options)


def write_vfr_video(path: str | Path, frames: np.ndarray, times_s, codec: str = "libx264rgb",
                    lossless: bool = True, codec_options: dict[str, str] | None = None) -> Path:
    """Write frames with explicit presentation times (seconds, strictly increasing): a variable-frame-rate video."""
    pts = np.round(np.asarray(times_s, dtype=np.float64) / float(VFR_TIME_BASE)).astype(np.int64)
    if len(pts) != len(_check_frames(frames)) or np.any(np.diff(pts) <= 0):
        raise ValueError(f"need one strictly increasing time per frame (in {float(VFR_TIME_BASE)} s steps), "
                         f"got {len(pts)} times for {len(frames)} frames")
    return _encode(Path(path), frames, pts, VFR_TIME_BASE, None, codec, lossless, None)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    return frames


def _encode(path: Path, frames: np.ndarray, pts: np.ndarray, time_base: Fraction, rate: Fraction | None,
            codec: str, lossless: bool, container_options: dict[str, str] | None,
            codec_options: dict[str, str] | None = None) -> Path:
    if not codec_available(codec):
        raise ValueError(f"codec {codec!r} is not available here; choose from "
                         f"{[c for c in _CODECS if codec_available(c)]}")
    pix_fmt, options = _CODECS[codec][0 if lossless else 1]
    options = {**options, **(codec_options or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.time_base = stream.codec_context.time_base = time_base
        for image, t in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


# --- the temporal-order dataset -----------------------------------------------------------------------------------


def _disc_clip(rng: np.random.Generator, scene: dict, frames: int, size: int) -> np.ndarray:  # (T, S, S, 3)
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    radii = np.linspace(rng.uniform(0.05, 0.15), rng.uniform(0.3, 0.45), frames) * size
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - cy, xx - cx)[None] <= radii[:, None, None]   # (T, S, S)
    return np.where(inside[..., None], scene["fg"], scene["bg"]).astype(np.uint8)


def _ramp_clip(rng: np.random.Generator, scene: dict, frames: int, size: int) -> np.ndarray:  # (T, S, S, 3)
    yy, xx = np.mgrid[:size, :size] / size
    phase = rng.uniform(0, 2 * math.pi, size=2)
    texture = 0.5 + 0.25 * (np.sin(2 * math.pi * scene["freq"] * xx + phase[0])
                            + np.sin(2 * math.pi * scene["freq"] * yy + phase[1]))       # (S, S) in [0, 1]
    levels = np.linspace(rng.uniform(0.15, 0.35), rng.uniform(0.75, 1.0), frames)        # (T,)
    clip = levels[:, None, None, None] * texture[None, ..., None] * scene["fg"]          # (T, S, S, 3)
    return np.clip(clip, 0, 255).astype(np.uint8)


_CLIP_MAKERS = {"grow": _disc_clip, "brighten": _ramp_clip}


def _scene(rng: np.random.Generator) -> dict:
    return {"fg": rng.integers(60, 256, size=3), "bg": rng.integers(0, 60, size=3), "freq": rng.uniform(1, 3)}


def _split_of(group: int, n_groups: int) -> str:
    n_test = max(1, round(n_groups / 3))
    return "test" if group >= n_groups - n_test else "train"


def make_temporal_dataset(root: str | Path, n_per_class: int = 15, frames: int = 16, size: int = 64,
                          seed: int = 0) -> Path:
    """Write a folder-per-class dataset of H.264 MP4 clips (grow/shrink, brighten/darken) plus `manifest.csv`
    (path,label,group,split; about a third of each class's groups are test). Returns the manifest's path; its
    folder is also a valid folder-per-class source."""
    if size < 16 or frames < 2 or n_per_class < 2:
        raise ValueError(f"need size >= 16, frames >= 2 and n_per_class >= 2; got {size}, {frames}, {n_per_class}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for forward, backward in TEMPORAL_PAIRS:
        for label in (forward, backward):
            rows += _write_class(root, label, _CLIP_MAKERS[forward], label == backward, n_per_class, frames, size, rng)
    return _write_manifest(root, rows)


def _write_class(root: Path, label: str, make_clip, reverse: bool, n_clips: int, frames: int, size: int,
                 rng: np.random.Generator) -> list[list[str]]:
    n_groups = math.ceil(n_clips / CLIPS_PER_GROUP)
    rows = []
    scenes = [_scene(rng) for _ in range(n_groups)]
    for clip in range(n_clips):
        group = clip // CLIPS_PER_GROUP
        video = make_clip(rng, scenes[group], frames, size)
        name = f"{label}/v_{label}_g{group + 1:02d}_c{clip % CLIPS_PER_GROUP + 1:02d}.mp4"
        # Lossless: lossy coding is not symmetric in time (the first frame is the key frame), so its artifacts
        # would tell a shrinking disc's big first frame from a growing disc's big last frame.
        write_video(root / name, video[::-1] if reverse else video, codec="libx264", lossless=True)
        rows.append([name, label, f"{label}_g{group + 1:02d}", _split_of(group, n_groups)])
    return rows


def make_images(root: str | Path, n_per_class: int = 3, size: int = 64, seed: int = 0) -> Path:
    """Write a folder-per-class set of still images ('disc' and 'square', alternating .jpg and .png); returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label in ("disc", "square"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.1, 0.25) * size
            shape = np.hypot(yy - cy, xx - cx) <= r if label == "disc" else np.maximum(abs(yy - cy), abs(xx - cx)) <= r
            image = np.where(shape[..., None], rng.integers(60, 256, size=3), rng.integers(0, 60, size=3))
            Image.fromarray(image.astype(np.uint8)).save(root / label / f"{label}_{i:02d}.{('jpg', 'png')[i % 2]}")
    return root


def make_pattern_dataset(root: str | Path, n_per_class: int = 32, frames: int = 4, size: int = 32,
                         patch: int = 4, seed: int = 0) -> Path:
    """Two classes that differ only in a small high-frequency patch: 1-pixel stripes, horizontal ('rows') or
    vertical ('cols'), on a smooth random background. Both classes have the same colours and the same amount of
    fine detail, so a frozen random-init CNN's globally pooled features hardly tell them apart; a backbone that is
    trained can learn the orientation. Every frame has its own background and patch position, so a clip cannot be
    learnt by its background, and each random segment pick is a new example. Lossless RGB H.264 (the stripes
    survive); returns the manifest."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    rows = []
    for label in ("rows", "cols"):
        (root / label).mkdir(parents=True, exist_ok=True)
        stripes = (np.arange(patch) % 2)[:, None] if label == "rows" else (np.arange(patch) % 2)[None, :]
        for i in range(n_per_class):
            clip = np.empty((frames, size, size, 3))
            for t in range(frames):
                base, tilt = rng.uniform(40, 200, size=3), rng.uniform(-40, 40, size=(2, 3))
                image = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1] + rng.normal(0, 4, (size, size, 1))
                y0, x0 = rng.integers(0, size - patch, size=2)
                image[y0:y0 + patch, x0:x0 + patch] = 255 * np.broadcast_to(stripes, (patch, patch))[..., None]
                clip[t] = image
            name = f"{label}/{label}_{i:02d}.mp4"
            write_video(root / name, np.clip(clip, 0, 255).astype(np.uint8), codec="libx264rgb", lossless=True)
            rows.append([name, label, f"{label}_g{i:02d}", "test" if i % 4 == 3 else "train"])
    return _write_manifest(root, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic temporal-order dataset (and images).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-per-class", type=int, default=15)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, help="also write a few still images into this folder")
    args = parser.parse_args()
    manifest = make_temporal_dataset(args.out_dir, args.n_per_class, args.frames, args.size, args.seed)
    print(f"wrote {manifest}")
    if args.images:
        print(f"wrote images under {make_images(args.images, size=args.size, seed=args.seed)}")


if __name__ == "__main__":
    main()


def _write_manifest(root: Path, rows: list[list[str]]) -> Path:
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "split"])
        writer.writerows(rows)
    return manifest
