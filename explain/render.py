"""One PNG per explained video: a row of frames with the heat map over each, one row per explained class."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explain.cam import Maps
from featstore.atomic import atomic_output

IMAGE_WEIGHT = 0.55  # share of the frame in the overlay: enough of the scene stays visible under the map


@dataclass
class Panel:
    """What one PNG shows."""
    title: str                # first line: the video; second: predicted label and probability (and truth)
    frames: np.ndarray        # (T, H, W, 3) uint8, the model's input pixels
    frame_index: np.ndarray   # (T,) position of each frame in the video
    maps: list[Maps]          # one row each
    row_names: list[str]      # what each row explains, e.g. "gradcam: BenchPress (predicted)"


def overlay(frame: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the jet-coloured map blended over it (grad-cam's own overlay)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(frame.astype(np.float32) / 255, cam, use_rgb=True, image_weight=IMAGE_WEIGHT)


def render(panel: Panel, path: Path) -> Path:
    from matplotlib.figure import Figure

    rows, cols = len(panel.maps), len(panel.frames)
    fig = Figure(figsize=(1.9 * cols + 0.6, 2.15 * rows + 0.75), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (maps, name) in enumerate(zip(panel.maps, panel.row_names)):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(overlay(panel.frames[c], maps.cams[c]))
            ax.set_title(f"frame {int(panel.frame_index[c])}  ·  {maps.share[c]:.0%}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(panel.title, fontsize=10)
    with atomic_output(path) as tmp:  # a PNG of this run or the one before, never half of one
        fig.savefig(tmp, dpi=100, format="png")
    return path
