"""What an extraction is asked for, resolved by the library: the sampling flags, the engine and its Ray options, the
subset, the part a launcher gives this process, and the default store. `cli.py extract` only parses and renders;
a notebook caller gets the same rules ("choose one of --every, --frames, --fps", "--address ... only apply to
--engine ray", "--update-meta needs --store") from the same functions.

    cfg = replace(ExtractConfig(backbone="resnet18"), sampling=SamplingFlags(fps=2).resolve("resnet18"))
    result = extract_source("clips/manifest.csv", cfg)            # into stores/clips-manifest-resnet18
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from featstore.meta import MetaChange
from featstore.settings import check_settings, setting
from pipeline.decode import ClipSampling, Sampling
from pipeline.extract import ExtractConfig, ExtractError, ExtractResult, extract, sampling_for, update_meta
from pipeline.launch import ENGINES, Launch, configure, detect_launch
from pipeline.ray_engine import RayOptions, extract_on_ray
from pipeline.sources import Subset, load_source, read_classes


@dataclass(frozen=True)
class SamplingFlags:
    """Which frames (image backbones) or clips (video backbones) to embed, as the command line gives them."""
    every: int | None = setting(None, "Keep frames 0, N, 2N, ...", ge=1)
    frames: int | None = setting(None, "Keep K uniformly spaced frames.", ge=1)
    fps: float | None = setting(None, "Keep F frames per second.", ge=0.001)
    max_frames: int | None = setting(None, "At most M frames per video.", ge=1)
    clip_len: int | None = setting(None, "Video backbones: frames per clip (default: the model's own, 16).", ge=1)
    clip_stride: int | None = setting(None, "Video backbones: frames between clip starts (default: --clip-len).",
                                      ge=1)
    clips: int | None = setting(None, "Video backbones: K clips placed uniformly instead.", ge=1)

    def __post_init__(self):
        if sum(x is not None for x in (self.every, self.frames, self.fps)) > 1:
            raise ExtractError("choose one of --every, --frames, --fps")
        check_settings(self, ExtractError)

    def resolve(self, backbone: str) -> Sampling | ClipSampling:
        """The sampling for `backbone` (flags of the other kind refused by name; see `sampling_for`)."""
        return sampling_for(backbone, self.every, self.frames, self.fps, self.max_frames, self.clip_len,
                            self.clip_stride, self.clips)


@dataclass(frozen=True)
class EngineFlags:
    """Who runs the extraction: this process, or one Ray task per part (with the Ray options)."""
    engine: str = setting("local", "local: this process; ray: one Ray task per part.", choices=ENGINES)
    address: str | None = setting(None, "Ray: auto or HOST:PORT (default: RAY_ADDRESS, else a local cluster).")
    tasks: int | None = setting(None, "Ray: parts (default 4 x GPUs, or CPUs / C).", ge=1)
    gpus_per_task: float | None = setting(None, "Ray: GPUs per task (default 1 if any).", ge=0)
    cpus_per_task: float | None = setting(None, "Ray: CPUs per task C (default: a GPU's share of the cores; 1 "
                                          "without GPUs).", ge=0.01)
    connect_timeout: float = setting(30.0, "Ray: seconds --address may take to answer.", ge=0.1)

    def __post_init__(self):
        check_settings(self, ExtractError)
        ray_only = {"--address": self.address, "--tasks": self.tasks, "--gpus-per-task": self.gpus_per_task,
                    "--cpus-per-task": self.cpus_per_task}
        if self.engine != "ray" and (given := [k for k, v in ray_only.items() if v is not None]):
            raise ExtractError(f"{', '.join(given)} only apply to --engine ray")


def subset_for(classes: str | None = None, classes_file: str | Path | None = None,
               per_class: int | None = None) -> Subset:
    """The items to keep: only these classes (comma-separated and/or listed in a file), at most N per class."""
    return Subset(read_classes(classes, classes_file), per_class)


def launched(cfg: ExtractConfig) -> tuple[ExtractConfig, Launch]:
    """--shard auto: `cfg` with this process's part, GPU and cores from the launcher's environment."""
    launch = detect_launch()
    return configure(cfg, launch), launch


def default_store(source: str | Path, backbone: str) -> Path:
    """stores/<source>-<backbone>; a manifest is often just "manifest.csv", so its folder names the store too."""
    source = Path(source)
    name = source.name if source.is_dir() else f"{source.resolve().parent.name}-{source.stem}"
    return Path("stores") / f"{name}-{backbone}"


def extract_source(source: str | Path, cfg: ExtractConfig, store: str | Path | None = None, *, split_id: int = 1,
                   subset: Subset | None = None, engine: EngineFlags | None = None,
                   on_progress: Callable[[dict], None] | None = None) -> ExtractResult:
    """Embed every pending item of `source` (anything `load_source` reads) into `store` (default:
    `default_store`), in this process or on Ray as `engine` says."""
    subset = subset or Subset()
    cfg = replace(cfg, subset=subset.record())
    items = load_source(source, split_id=split_id, subset=subset)
    store = Path(store) if store is not None else default_store(source, cfg.backbone)
    if engine is not None and engine.engine == "ray":
        options = RayOptions(address=engine.address, tasks=engine.tasks, gpus_per_task=engine.gpus_per_task,
                             cpus_per_task=engine.cpus_per_task, connect_timeout=engine.connect_timeout)
        return extract_on_ray(items, store, cfg, options, on_progress)
    return extract(items, store, cfg, on_progress)


def update_source_meta(source: str | Path, store: str | Path | None, split_id: int = 1) -> list[MetaChange]:
    """extract --update-meta: the source's labels, groups and splits for the items `store` already holds."""
    if store is None:
        raise ExtractError("--update-meta needs --store: the store whose metadata to update")
    return update_meta(load_source(source, split_id=split_id), store)
