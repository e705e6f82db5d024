"""explain: for each video, the frames the run's head reads, the heat map of one class over each, one PNG.

The composed model is given every frame the head reads at evaluation (what `predict` would feed it), so the
title's label and probability are predict's; `frames` only chooses how many of those frames the PNG shows
(uniformly spaced). A video that cannot be decoded is recorded as failed and the others are still explained.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from explain import ExplainError
from explain.cam import Maps, cam_class, compute_maps, default_layer, find_layer
from explain.model import RunModel, clip_probabilities, decode_for, head_rows, load_run_model, model_input
from explain.render import Panel, render
from heads.report import mistakes
from heads.run import split_predictions
from heads.rundir import claim, write_json
from pipeline.decode import DecodeError, Sampling, sample_indices


@dataclass
class ExplainConfig:
    frames: int = 8               # frames shown per video (uniformly spaced among those the head reads)
    layer: str | None = None      # target module; None: a --layer store's layer, else the registry's cam_layer
    method: str = "gradcam"       # a key of explain.METHODS
    target: str | None = None     # class to explain; None: the predicted one (and the true one for mistakes)
    device: str = "auto"
    weights: str | None = None    # the store's weights file if it moved since extract (sha256 checked)

    def __post_init__(self):
        if self.frames < 1:
            raise ExplainError(f"--frames must be at least 1, got {self.frames}")


@dataclass
class Explained:
    """One video's outcome: what the head predicted and where the PNG is, or why it failed."""
    path: str
    label: str | None = None      # predicted class
    prob: float | None = None     # its probability
    png: str | None = None
    classes: list[str] = field(default_factory=list)  # the classes the rows explain
    true: str | None = None       # known label (mistakes), else None
    error: str | None = None


class Explainer:
    """A run's composed model with a checked layer, method and class, ready to explain files one by one."""

    def __init__(self, run_dir: str | Path, cfg: ExplainConfig):
        self.cfg = cfg
        cam_class(cfg.method)  # the install hint comes before any decoding
        self.run: RunModel = load_run_model(run_dir, cfg.device, cfg.weights)
        self.layer = cfg.layer or default_layer(self.run.model.backbone, self.run.backbone)
        if not self.layer:
            raise ExplainError(f"the registry records no default layer for {self.run.backbone}: pass --layer")
        find_layer(self.run.model.backbone, self.layer, self.run.backbone)
        self.target = None if cfg.target is None else self._class_index(cfg.target)

    def _class_index(self, name: str) -> int:
        if name not in self.run.labels:
            shown = ", ".join(self.run.labels[:30]) + (" ..." if len(self.run.labels) > 30 else "")
            raise ExplainError(f"--class {name!r} is not one of the run's labels: {shown}")
        return self.run.labels.index(name)

    def explain(self, path: str, png: Path, true: str | None = None) -> Explained:
        """Explain one file into `png`; a file that cannot be decoded gives an Explained with its error."""
        try:
            video = decode_for(self.run, path)
        except DecodeError as e:
            return Explained(str(path), true=true, error=str(e))
        rows = head_rows(len(video.frames), self.run.max_frames)
        pixels = model_input(video, rows, self.run.device)
        targets = [self.target] if self.target is not None else [None]
        if self.target is None and true is not None:
            targets.append(self._class_index(true))
        logits, maps = compute_maps(self.run.model, pixels, self.layer, self.run.backbone, self.cfg.method, targets)
        probs = clip_probabilities(logits, self.run.task)
        top = int(probs.argmax())
        maps = [m for i, m in enumerate(maps) if i == 0 or m.target != maps[0].target]  # predicted == true
        shown = sample_indices(len(rows), Sampling(frames=self.cfg.frames))
        panel = Panel(self._title(path, probs, top, true, len(shown), len(video.frames)), video.frames[rows][shown],
                      video.frame_index[rows][shown], [_subset(m, shown) for m in maps],
                      [self._row_name(m.target, top, true) for m in maps])
        claim(png)  # inside a run folder: the run's own from now on (a rerun replaces it, not refuses it)
        render(panel, png)
        return Explained(str(path), self.run.labels[top], float(probs[top]), str(png),
                         [self.run.labels[m.target] for m in maps], true)

    def _title(self, path: str, probs: np.ndarray, top: int, true: str | None, shown: int, sampled: int) -> str:
        truth = f", true {true}" if true is not None else ""
        stream = "" if self.run.stacks is None else f" on {self.run.flow.method} flow x{self.run.stacks.length}"
        return (f"{Path(path).name}\npredicted {self.run.labels[top]} ({probs[top]:.2f}){truth} · "
                f"{self.run.backbone} {self.layer}{stream}, {self.cfg.method} · {shown} of {sampled} sampled frames")

    def _row_name(self, target: int, top: int, true: str | None) -> str:
        name = self.run.labels[target]
        why = ("asked" if self.target is not None else "predicted" if target == top
               else "true" if name == true else "")
        return f"{name} ({why})" if why else name


def _subset(maps: Maps, shown: np.ndarray) -> Maps:
    return Maps(maps.target, maps.cams[shown], maps.share[shown])


def png_paths(paths: list[str], out_dir: Path, method: str) -> list[Path]:
    """One PNG name per input, from its file name; repeated names get -2, -3, ..."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        suffix = "" if seen[stem] == 1 else f"-{seen[stem]}"
        out.append(out_dir / f"{stem}{suffix}.{method}.png")
    return out


@dataclass
class Job:
    """One file to explain: where it is, where its PNG goes, its label when known."""
    path: str
    png: Path
    true: str | None = None


def video_jobs(paths: list[str], out_dir: Path, method: str) -> list[Job]:
    return [Job(p, png) for p, png in zip(paths, png_paths(paths, out_dir, method))]


def mistake_jobs(run_dir: str | Path, n: int, out_dir: Path, method: str, split: str = "test") -> list[Job]:
    """The `n` most confident mistakes of the run's `split` (from its stored features), as files to explain."""
    if n < 1:
        raise ExplainError(f"--mistakes must be at least 1, got {n}")
    found = mistakes(split_predictions(run_dir, None, split), n)
    if not found:
        raise ExplainError(f"the run makes no mistake on its {split} split: nothing to explain")
    pngs = png_paths([m.path for m in found], out_dir, method)
    return [Job(m.path, png.with_name(f"mistake{rank:02d}-{png.name}"), m.true.split("|")[0])
            for rank, (m, png) in enumerate(zip(found, pngs), 1)]


def write_index(results: list[Explained], out_dir: Path) -> Path:
    """index.json beside the PNGs: every video's outcome, failures included."""
    path = out_dir / "index.json"
    claim(path)
    write_json(path, [asdict(r) for r in results])
    return path
