"""Clips whose classes differ only in motion: the same kind of textured disc moving left, right, up or down over a
textured background, from a uniformly random start, wrapping around the frame. Any single frame is a disc somewhere
on a background, identically distributed in every class (a class played backwards is its opposite), so an RGB
store's head is at chance and only motion (a flow store) tells the classes apart (docs/motion.md).

    make_motion_dataset("motion", directions=("left", "right"))   # -> motion/manifest.csv (path,label,group,split)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.synth import _write_manifest, write_video

STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx) per pixel of speed


def _texture(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:  # (size, size, 3) uint8
    """Random colour blocks of 4 x 4 pixels: texture that flow can follow at any position."""
    coarse = rng.integers(low, high, (size // 4 + 1, size // 4 + 1, 3))
    return np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:size, :size].astype(np.uint8)


def motion_clip(rng: np.random.Generator, direction: str, frames: int, size: int,
                speed: int = 2) -> np.ndarray:  # (T, size, size, 3)
    """A textured disc (a quarter of the frame across) moving `speed` pixels a frame in `direction`."""
    background, disc = _texture(rng, size, 0, 100), _texture(rng, size, 120, 256)
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - size / 2, xx - size / 2) <= size / 8
    start = rng.integers(0, size, 2)
    dy, dx = STEPS[direction]
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        shift = (start[0] + dy * speed * t, start[1] + dx * speed * t)
        mask, texture = np.roll(inside, shift, axis=(0, 1)), np.roll(disc, shift, axis=(0, 1))
        clip[t] = np.where(mask[..., None], texture, background)
    return clip


def make_motion_dataset(root: str | Path, n_per_class: int = 8, frames: int = 16, size: int = 64, seed: int = 0,
                        directions: tuple[str, ...] = ("left", "right", "up", "down")) -> Path:
    """Write `n_per_class` lossless clips per direction under root/<direction>/ and root/manifest.csv (every 4th
    clip of a class in test, each clip its own group). Returns the manifest's path."""
    root, rng, rows = Path(root), np.random.default_rng(seed), []
    for label in directions:
        for i in range(n_per_class):
            name = f"{label}/{label}_{i:02d}.mp4"
            write_video(root / name, motion_clip(rng, label, frames, size))
            rows.append([name, label, f"{label}_{i:02d}", "test" if i % 4 == 3 else "train"])
    return _write_manifest(root, rows)
