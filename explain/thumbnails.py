"""Frames on the cluster map: each point of a cluster-eval scatter drawn as the frame it stands for.

The store keeps vectors only, so the pixels are decoded again from the paths it records, with its own sampling
rule (the same rows come back) and its crop at thumbnail size. Video level: the middle sampled frame of each
clip; frame level: each sampled frame. More points than `max_points`: a seeded uniform choice of them is drawn
(every point still shows as a dot). A file that is gone or no longer gives the stored frame is skipped and named.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from explain import ExplainError
from featstore import StoreConfig, open_store
from heads.plots import palette
from heads.rundir import claim
from pipeline.decode import DecodeError, Geometry, decode_image, decode_video
from pipeline.extract import config_from_store, store_geometry
from pipeline.sources import item_kind

THUMB_PX = 64           # decoded side of a thumbnail
THUMB_SHARE = (0.02, 0.06)  # half-width of a thumbnail as a share of the map's extent: least, most


@dataclass
class Point:
    """One point of the scatter: which clip, which stored row, where it lies."""
    id: str
    row: int
    label: str
    x: float
    y: float


@dataclass
class ThumbnailMap:
    png: Path
    n_points: int
    drawn: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip id, why), one entry per clip


def read_points(run_dir: Path) -> tuple[list[Point], str]:
    """(points of the scatter, its method) from a cluster-eval run directory."""
    path = run_dir / "embedding_2d.csv"
    if not path.exists():
        raise ExplainError(f"{run_dir} has no embedding_2d.csv: run cluster-eval with --plot tsne (or pca) first")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    points = [Point(r["id"], int(r["row"]), r["label"], float(r["x"]), float(r["y"])) for r in rows]
    return points, rows[0]["method"] if rows else "t-SNE"


def thumbnail_geometry(config: StoreConfig, px: int = THUMB_PX) -> Geometry:
    """The store's crop at `px` pixels (resize scaled in the same ratio), so a thumbnail shows what the model saw;
    drawn by the exact recipe whichever engine fed the model (at 64 px they differ by a grey level or two)."""
    stored = store_geometry(config)
    return replace(stored, size=px, resize=max(px, round(px * stored.resize / stored.size)), engine="exact")


def decode_rows(path: str, config: StoreConfig, rows: list[int], stored_index: np.ndarray,
                geometry: Geometry) -> dict[int, np.ndarray]:
    """{row: (px, px, 3) uint8} of the wanted stored rows of one file; DecodeError when the file does not give
    them back (gone, unreadable, or changed since extraction)."""
    if item_kind(Path(path)) == "image":
        video = decode_image(path, geometry)
    else:
        video = decode_video(path, config_from_store(config).sampling, geometry)
    if len(video.frame_index) != len(stored_index) or not np.array_equal(video.frame_index, stored_index):
        raise DecodeError(f"{path} no longer gives the stored frames (changed since extraction)")
    return {r: video.frames[r] for r in rows}


def choose(points: list[Point], max_points: int, seed: int) -> list[int]:
    if len(points) <= max_points:
        return list(range(len(points)))
    return sorted(np.random.default_rng(seed).choice(len(points), max_points, replace=False).tolist())


def draw_thumbnails(run_dir: str | Path, max_points: int = 400, seed: int = 0,
                    on_progress: Callable[[int, int], None] | None = None) -> ThumbnailMap:
    """Write `thumbnails.png` into a cluster-eval run directory; returns what was drawn and what was skipped."""
    run_dir = Path(run_dir)
    if max_points < 1:
        raise ExplainError(f"--max-points must be at least 1, got {max_points}")
    config = json.loads((run_dir / "config.json").read_text())
    points, method = read_points(run_dir)
    with open_store(config["store"]) as store:
        if store.config.is_clip:
            raise ExplainError(f"{config['store']} holds clip rows: thumbnails are drawn for frame stores only")
        video_level = config["level"] == "video"
        chosen = choose(points, max_points, seed)
        wanted: dict[str, list[int]] = {}
        for i in chosen:
            p = points[i]
            row = store.meta(p.id).length // 2 if video_level else p.row
            wanted.setdefault(p.id, []).append(row)
        images, skipped = _decode_all(store, wanted, thumbnail_geometry(store.config), on_progress)
    shown = []
    for i in chosen:
        p = points[i]
        row = wanted[p.id][0] if video_level else p.row
        if (p.id, row) in images:
            shown.append((p, images[p.id, row]))
    what = "middle sampled frame of each clip" if video_level else "sampled frames"
    title = (f"{method} of {len(points)} {'clips' if video_level else 'frames'}: {what} "
             f"({len(shown)} drawn" + (f", {len(skipped)} files skipped" if skipped else "") + ")")
    claim(run_dir / "thumbnails.png")  # the run's own from now on: rerunning cluster-eval replaces it
    png = plot_thumbnails(run_dir / "thumbnails.png", points, shown, title)
    return ThumbnailMap(png, len(points), len(shown), skipped)


def _decode_all(store, wanted: dict[str, list[int]], geometry: Geometry,
                on_progress) -> tuple[dict[tuple[str, int], np.ndarray], list[tuple[str, str]]]:
    images, skipped = {}, []
    for n, (vid, rows) in enumerate(wanted.items(), 1):
        try:
            got = decode_rows(store.meta(vid).path, store.config, rows, store.frame_index(vid), geometry)
            images.update({(vid, r): img for r, img in got.items()})
        except DecodeError as e:
            skipped.append((vid, str(e)))
        if on_progress is not None:
            on_progress(n, len(wanted))
    return images, skipped


def plot_thumbnails(path: Path, points: list[Point], shown: list[tuple[Point, np.ndarray]], title: str) -> Path:
    """Every point as a dot coloured by label, the chosen ones as framed thumbnails at their positions."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    xy = np.array([[p.x, p.y] for p in points])
    names = sorted({p.label for p in points} - {""})
    colour = dict(zip(names, palette(len(names))))
    fig = Figure(figsize=(13.5, 11), layout="constrained")  # the legend takes ~2.5 in
    ax = fig.subplots()
    lo, hi = xy.min(0), xy.max(0)
    # about as many thumbnail widths across as sqrt(count): a dense map gets smaller frames
    share = float(np.clip(0.5 / np.sqrt(max(len(shown), 1)), *THUMB_SHARE))
    hx, hy = np.maximum(share * (hi - lo), 1e-3)  # per axis: squares on a square figure
    for name in names:
        m = np.array([p.label == name for p in points])
        ax.scatter(xy[m, 0], xy[m, 1], s=10, color=colour[name], label=name, linewidths=0, zorder=1)
    for p, img in shown:
        ax.imshow(img, extent=(p.x - hx, p.x + hx, p.y - hy, p.y + hy), zorder=2, interpolation="bilinear")
        ax.add_patch(Rectangle((p.x - hx, p.y - hy), 2 * hx, 2 * hy, fill=False, linewidth=1.6,
                               edgecolor=colour.get(p.label, "grey"), zorder=3))
    ax.set_xlim(lo[0] - 1.5 * hx, hi[0] + 1.5 * hx)
    ax.set_ylim(lo[1] - 1.5 * hy, hi[1] + 1.5 * hy)
    ax.set_aspect("auto")
    ax.set_xticks([])
    ax.set_yticks([])
    if 0 < len(names) <= 25:
        ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1, 1), frameon=False,
                  title="frame border = label", title_fontsize=7)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    return path
