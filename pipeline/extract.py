"""Stage one: items → decoded, sampled frames or clips → frozen backbone → feature store.

Decoding runs in DataLoader workers and overlaps inference; units (frames, or clips for video
backbones) are batched ACROSS videos to a fixed batch size; finished videos go to a writer thread
that appends them to the store as crash-safe shards. Memory is bounded by batch size and prefetch
depth (the stages are in pipeline/stages.py).
"""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from featstore import Store, StoreConfig, StoreError, StoreWriter, VideoRecord, open_store
from featstore.errors import FramecacheError
from featstore.finite import fail_non_finite, finite_only
from featstore.meta import MetaChange, diff_meta, write_meta_update
from featstore.format import HEADER
from featstore.settings import check_settings, setting
from featstore.writer import claim_store
from pipeline.accel import (CALIBRATION_UNITS, CLIP_BATCH, COMPILE_MODES, FRAME_BATCH, QUANTIZATION,  # noqa: F401
                            default_batch)
from pipeline.backbones import (REGISTRY, TOKEN_POOLS, Backbone, BackboneError, BackboneSpec, BackboneWeights,
                                Preprocess, available_backbones, build_backbone, get_spec, preprocess_for, weights_for)
from pipeline.decode import (CROPS, DECODERS, RESIZE_ENGINES, SEEK_MODES, ClipSampling, Geometry, Sampling,
                             StackSampling, set_decoder_threads)
from pipeline.decoder_choice import decoder_for
from pipeline.device import (EXTRACT_PRECISIONS, auto_decode_workers, process_cores, resolve_device,
                             resolve_precision)
from pipeline.embed import Embedder
from pipeline.flow.compute import (CLASSICAL, FLOW_METHODS, FlowComputer, RaftWeights, check_flow_size, raft_weights,
                                   recorded_raft)
from pipeline.flow.save import FlowSaver, claim_flow_folder
from pipeline.flow.steps import flow_steps
from pipeline.flow.stream import FlowEmbedder, flow_backbone
from pipeline.lanes import in_lanes
from pipeline.speed import Speed, speed_for
from pipeline.sources import Item, item_kind, shard_items
from pipeline.stages import POLL_S, Batch, DecodeStream, DecodeWorkers, Done, InOrder, Rows, rebatch

# --resize-engine auto on a new store (docs/extract.md, "Decoding cost"); video backbones keep their preset's recipe.
DEFAULT_RESIZE_ENGINE = "exact"
DTYPES = ("float16", "float32")          # storage dtype of features
MODALITIES = ("rgb", "flow")             # what a row embeds: decoded frames (or clips), or optical-flow stacks
FLOW_KEYS = frozenset({"modality", "flow", "flow_stack", "flow_weights"})  # what a flow store records of its flow
DEFAULT_FLOW, DEFAULT_FLOW_STACK = "farneback", 5  # TSN's stack of 5 flows (10 channels); Farneback needs no weights
COMPRESSIONS = ("none", "lzf", "gzip")   # HDF5 compression of features; "none" is stored as None


class ExtractError(FramecacheError, ValueError):
    """An extraction setting that cannot be honoured; the message names the flag."""


@dataclass
class ExtractConfig:
    backbone: str = setting("resnet50", f"One of: {', '.join(available_backbones())}.")
    # enum name, 'none' (seeded random init) or a local file
    weights: str = setting("DEFAULT", "DEFAULT, an enum name (IMAGENET1K_V2), none, or a file.")
    # None: every 10th frame, or the video backbone's own clips (the command sets it from --every/--frames/...)
    sampling: Sampling | ClipSampling | None = setting(None, cli=False)
    size: int | None = setting(None, "Input side (default: the weights' own).", ge=16)  # None = weights' crop size
    crop: str = setting("center", "center: weights' resize+crop; square; none: squash.", choices=CROPS)
    resize_engine: str = setting("auto", "Who resizes frames: exact (the weights' own recipe), swscale (in the "
                                 "decoder), swscale-yuv (fastest, least exact); auto: a resumed store's own, else "
                                 "the default (docs/extract.md).", choices=("auto", *RESIZE_ENGINES))
    decoder: str = setting("auto", "Who decodes: pyav, torchcodec (CPU), torchcodec-cuda (NVDEC); auto: a resumed "
                           "store's own, else torchcodec where installed and measured faster here, else pyav "
                           "(docs/decoders.md).", choices=("auto", *DECODERS))
    seek: str = setting("auto", "Frame sampling: seek to keyframes instead of decoding every frame (auto: where "
                        "that saves half the decoding; same frames either way).", choices=SEEK_MODES)
    # units per forward pass, across videos; None: the device's (batch_size_for)
    batch_size: int | None = setting(None, "Frames (or clips) per forward pass, across videos (default: the "
                                     "device's, docs/extract.md).", ge=1)
    workers: int | None = setting(None, "Decode processes (default: auto).", ge=0)  # auto: 1 on CPU, up to 8 on GPU
    # CPU cores this process may use; None = its affinity (launchers split nodes)
    cores: int | None = setting(None, cli=False)
    # The split of the cores between the model and the decode workers (bench/split.py measures it): the model's torch
    # threads (None: torch's default, one per core) and the niceness decode workers take (0: the model's own)
    model_threads: int | None = setting(None, cli=False, ge=1)
    decode_nice: int = setting(0, cli=False, ge=0, le=19)
    device: str = setting("auto", "auto, cpu, cuda, cuda:i.")
    precision: str = setting("auto", "auto: bf16 where supported, else fp16 (GPU) / fp32; int8: CPU, calibrated on "
                             "the source.", choices=EXTRACT_PRECISIONS)  # autocast dtype, or int8 (CPU, PT2E)
    compile: str = setting("auto", "torch.compile the backbone; auto: where measured to pay back on this run's "
                           "size.", choices=COMPILE_MODES)
    dtype: str = setting("float16", "Storage dtype of features.", choices=DTYPES)
    compression: str | None = setting(None, "HDF5 compression of features.", choices=COMPRESSIONS)  # "none" is None
    shard: tuple[int, int] | None = setting(None, cli=False)  # (i, N): this process handles part i of N
    retry_failed: bool = setting(False, "Retry items recorded as failed.")
    limit: int | None = setting(None, "Process at most N new items.", ge=1)
    flush_videos: int = setting(32, cli=False)  # videos per shard: what a crash can lose at most
    # make a non-empty directory that is not a store into one
    force: bool = setting(False, "Make --store a store even if it is a non-empty other directory.")
    subset: dict | None = setting(None, cli=False)  # sources.Subset.record(): recorded in the config, not fingerprinted
    # rows are this block's output, pooled (None: the model's own row); recorded and fingerprinted where set
    layer: str | None = setting(None, "Rows are this block's output, globally average-pooled (a module name: "
                                "layer3, stages.2, blocks.6; default: the model's own row).")
    # rows are a token model's CLS token or its patch tokens' mean (None: the model's own pooled row)
    token_pool: str | None = setting(None, "Token models (ViTs): the row is the CLS token or the mean of the patch "
                                     "tokens (default: the model's own pooling).", choices=TOKEN_POOLS,
                                     flag="--pool")
    # what a row embeds; the flow settings below apply to --modality flow only (None: their defaults there)
    modality: str = setting("rgb", "rgb: the sampled frames; flow: optical flow from each sampled frame on, a stack "
                            "of --flow-stack flows through the flow-stream backbone (docs/motion.md).",
                            choices=MODALITIES)
    flow: str | None = setting(None, f"--modality flow: the flow method (default {DEFAULT_FLOW}; tvl1 where OpenCV "
                               "has its contrib module; raft_* run on --device).", choices=FLOW_METHODS)
    flow_stack: int | None = setting(None, f"--modality flow: flows per row, L (2L input channels; default "
                                     f"{DEFAULT_FLOW_STACK}).", ge=1)
    flow_weights: str | None = setting(None, "--flow raft_*: RAFT's weights: DEFAULT, an enum name (C_T_V1), none "
                                       "(seeded random init) or a file.")
    save_flow: str | None = setting(None, "--modality flow: also write each row's flow fields (.npz and .png) into "
                                    "this folder, new or empty (or this store's own).")

    def __post_init__(self):
        if self.compression == "none":  # how the command line says "no compression"
            self.compression = None
        check_settings(self, ExtractError)
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise ExtractError(f"--shard i/N needs 0 <= i < N, got {self.shard[0]}/{self.shard[1]}")
        spec = get_spec(self.backbone)
        if self.sampling is None:
            self.sampling = _sampling(self.backbone, spec)
        _check_sampling_kind(self.backbone, spec, self.sampling)
        if spec.clip is not None:  # the one check of the clip's shape, made before any work starts
            spec.clip.check(self.backbone, self.sampling.clip_len, self.size or spec.input_size)
        _check_modality(self)


def _check_modality(cfg: ExtractConfig) -> None:
    """Flow settings only with --modality flow (then defaulted here), and only what the flow stream can honour."""
    flags = {"--flow": cfg.flow, "--flow-stack": cfg.flow_stack, "--flow-weights": cfg.flow_weights,
             "--save-flow": cfg.save_flow}
    if cfg.modality != "flow":
        if given := [flag for flag, value in flags.items() if value is not None]:
            raise ExtractError(f"{', '.join(given)} only apply to --modality flow")
        return
    cfg.flow, cfg.flow_stack = cfg.flow or DEFAULT_FLOW, cfg.flow_stack or DEFAULT_FLOW_STACK
    if cfg.flow in CLASSICAL and cfg.flow_weights is not None:
        raise ExtractError(f"--flow-weights applies to RAFT; --flow {cfg.flow} has no weights")
    if cfg.precision == "int8" or cfg.compile == "on":
        raise ExtractError(f"{'--precision int8' if cfg.precision == 'int8' else '--compile on'} does not apply to "
                           "--modality flow (its backbone runs eager, in fp32, bf16 or fp16)")
    if isinstance(cfg.sampling, ClipSampling):
        raise ExtractError(f"--modality flow embeds flow stacks with an image backbone; {cfg.backbone} embeds clips: "
                           "use resnet18, mobilenet_v2, resnet50, ...")


def sampling_for(backbone: str, every: int | None = None, frames: int | None = None, fps: float | None = None,
                 max_frames: int | None = None, clip_len: int | None = None, clip_stride: int | None = None,
                 clips: int | None = None) -> Sampling | ClipSampling:
    """The sampling the flags ask for, for this backbone: frames (--every/--frames/--fps/--max-frames) for image
    backbones, every 10th by default; clips (--clip-len/--clip-stride/--clips/--fps) for video ones, the model's
    own clip length by default. A flag of the other kind is refused naming it and what applies instead. (The
    clip's length is checked against the model by the ExtractConfig it goes into.)"""
    return _sampling(backbone, get_spec(backbone), every, frames, fps, max_frames, clip_len, clip_stride, clips)


def _sampling(backbone: str, spec: BackboneSpec, every: int | None = None, frames: int | None = None,
              fps: float | None = None, max_frames: int | None = None, clip_len: int | None = None,
              clip_stride: int | None = None, clips: int | None = None) -> Sampling | ClipSampling:
    frame_flags = {"--every": every, "--frames": frames, "--max-frames": max_frames}
    clip_flags = {"--clip-len": clip_len, "--clip-stride": clip_stride, "--clips": clips}
    if spec.clip is None:
        _refuse(backbone, clip_flags, "an image backbone: it embeds frames; use --every, --frames or --fps, or a "
                "video backbone (" + ", ".join(n for n in available_backbones() if REGISTRY[n].clip) + ")")
        return Sampling(every=every if (every or frames or fps) else 10, frames=frames, fps=fps,
                        max_frames=max_frames)
    _refuse(backbone, frame_flags, "a video backbone: it embeds clips; use --clip-len, --clip-stride, --clips "
            "or --fps")
    length = spec.clip.default_len if clip_len is None else clip_len
    return ClipSampling(clip_len=length, clip_stride=clip_stride, clips=clips, fps=fps)


def _refuse(backbone: str, flags: dict, why: str) -> None:
    given = [f"{flag} {value}" for flag, value in flags.items() if value is not None]
    if given:
        raise BackboneError(f"{' and '.join(given)} does not apply to {backbone}, {why}")


def _check_sampling_kind(backbone: str, spec: BackboneSpec, sampling: Sampling | ClipSampling) -> None:
    video = spec.clip is not None
    if video != isinstance(sampling, ClipSampling):
        kind = "clips (ClipSampling)" if video else "frames (Sampling)"
        raise BackboneError(f"{backbone} embeds {kind}; build the config with pipeline.sampling_for")


@dataclass
class ExtractResult:
    store: str
    done: int = 0                 # items written this run (ok + failed)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) written this run
    skipped: int = 0              # already in the store
    frames: int = 0               # rows written: frames, or clips for a video backbone
    seconds: float = 0.0
    device: str = ""
    precision: str = ""
    unit: str = "frames"          # what a row is: frames | clips
    startup_s: float = 0.0        # process start -> first batch embedded (imports, model build, first decode)
    compiled: bool = False        # the backbone ran through torch.compile (always with int8)
    batch_size: int = 0           # units per forward pass this run used
    setup_s: float = 0.0          # one-time compile / int8 calibration seconds, inside `seconds`
    meta_changed: list[MetaChange] = field(default_factory=list)  # items whose manifest label/group/split differ
    notes: list[str] = field(default_factory=list)  # one-line notes for the user (--decoder auto's fallback)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Resolved:
    """Every setting of one extraction, decided once from its ExtractConfig and the store it resumes: each later
    step reads these, none looks the backbone up or decides again. (The sampling is the ExtractConfig's own,
    defaulted and checked against the backbone when the config is made.)"""
    backbone: BackboneWeights         # the spec, the weights (id, file, sha256) and their preprocessing
    geometry: Geometry                # size, resize, crop, resample and the resize engine
    device: torch.device
    speed: Speed                      # precision, compiled or not, batch size
    store: StoreConfig                # what the store records
    note: str | None = None           # why --decoder auto fell back to pyav, where it did (one line, shown)
    raft: RaftWeights | None = None   # --flow raft_*: RAFT's weights (a file hashed once)


def resolve(cfg: ExtractConfig, store: StoreConfig | None, todo: list[Item]) -> Resolved:
    """The run `cfg` asks for, continuing `store` (None: a new one) on the items `todo`. No model is built: a
    weights file is hashed, and `auto` precision, compiling and batch size are chosen from the registry's and
    accel's tables (and the run's size, read from a few headers where a choice needs it)."""
    chosen = weights_for(cfg.backbone, cfg.weights, cfg.layer, cfg.token_pool)
    engine = resize_engine_for(cfg.resize_engine, chosen.is_video, store)
    device = resolve_device(cfg.device, chosen.name, chosen.cpu_only)
    decoder = decoder_for(cfg.decoder, engine, device, store)
    geometry = geometry_of(chosen.preprocess, cfg.size, cfg.crop, engine, decoder.name)
    if cfg.modality != "flow":
        speed = speed_for(cfg.precision, cfg.compile, cfg.batch_size, chosen, device, todo, cfg.sampling,
                          _lane_cores(cfg))
        return Resolved(chosen, geometry, device, speed, store_config(cfg, chosen, geometry, device, speed),
                        note=decoder.note)
    if decoder.name != "pyav":  # flow stacks are cut from PyAV's frame stream (pipeline/decode/stacks.py)
        raise ExtractError(f"--modality flow decodes with PyAV; --decoder {decoder.name} applies to RGB stores")
    check_flow_size(cfg.flow, geometry.size)
    # the flow stream runs eager: accel's measurements (int8, compile, batch) are of the RGB models
    speed = Speed(resolve_precision(cfg.precision, device, chosen), False,
                  cfg.batch_size or default_batch(chosen.name, False, device, "eager"))
    raft = None if cfg.flow in CLASSICAL else raft_weights(cfg.flow, cfg.flow_weights or "DEFAULT")
    store = store_config(cfg, chosen, geometry, device, speed).with_extra(
        modality="flow", flow=cfg.flow, flow_stack=cfg.flow_stack, flow_weights=raft and raft.id,
        **({"flow_weights_file": raft.file} if raft and raft.file else {}))  # recorded, not fingerprinted
    return Resolved(chosen, geometry, device, speed, store, note=decoder.note, raft=raft)


def store_config(cfg: ExtractConfig, chosen: BackboneWeights, geometry: Geometry, device: torch.device,
                 speed: Speed) -> StoreConfig:
    """What the store records of a run (featstore.config.StoreConfig: which of it is fingerprinted)."""
    import av
    import torchvision

    s, pre = cfg.sampling, chosen.preprocess
    clip = isinstance(s, ClipSampling)
    return StoreConfig(
        backbone=chosen.name, weights=chosen.id, weights_arg=cfg.weights, weights_file=chosen.file,
        weights_sha256=chosen.sha256, every=None if clip else s.every, frames=None if clip else s.frames, fps=s.fps,
        max_frames=None if clip else s.max_frames,
        # the stride actually used (None with --clips), so --clip-stride 16 and its default 16 are one store
        clip_len=s.clip_len if clip else None, clip_stride=s.stride if clip and s.clips is None else None,
        clips=s.clips if clip else None, size=geometry.size, crop=geometry.crop,
        # None is the exact recipe, as in the stores made before engines existed (their fingerprint stays the same)
        resize_engine=None if geometry.engine == "exact" else geometry.engine,
        decoder=None if geometry.decoder == "pyav" else geometry.decoder,  # None: PyAV, as every older store
        resize=list(geometry.resize) if isinstance(geometry.resize, tuple) else geometry.resize,  # as JSON reads it
        mean=list(pre.mean), std=list(pre.std), dtype=cfg.dtype, dim=chosen.dim, subset=cfg.subset, autorotate=True,
        device=str(device), precision=speed.precision,
        # int8 changes features beyond bf16's noise: fingerprinted (an optional key, so older stores keep theirs)
        quantization=QUANTIZATION if speed.precision == "int8" else None,
        # compiling keeps the features within bf16 noise (docs/extract.md): recorded, not fingerprinted
        compile=speed.compiled, batch_size=speed.batch_size,
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__, "av": av.__version__},
        recipe=chosen.recipe, layer=None if chosen.layer is None else chosen.layer.name, token_pool=chosen.token_pool,
        # no keys where unset (torchvision stores: no recipe or layer keys); RGB stores no flow keys (with_extra
        # records a flow store's): the attributes of a store made without them stay as they were
        absent=frozenset(k for k in ("recipe", "layer", "token_pool") if getattr(chosen, k) is None) | FLOW_KEYS)


def resize_engine_for(asked: str, is_video: bool, store: StoreConfig | None = None) -> str:
    """The engine `--resize-engine auto` means: the store's own when resuming one (a store without the key was made
    by the exact recipe), else the default for image backbones and the preset's exact recipe for video ones."""
    own = None if store is None else store.geometry().engine
    if asked == "auto":
        return own or ("exact" if is_video else DEFAULT_RESIZE_ENGINE)
    if own is not None and own != asked:
        raise ExtractError(f"the store was made with --resize-engine {own}, this run asks for {asked}: "
                           "drop --resize-engine (auto continues with the store's own) or use another --store")
    return asked


def geometry_of(preprocess: Preprocess, size: int | None, crop: str, engine: str, decoder: str = "pyav") -> Geometry:
    """How frames become model input: the weights' preprocessing, at `size` when set (the resize scaled in the same
    ratio), cut by `crop`, resized by `engine`. Extract, finetune and the bench scripts make theirs here; a store's
    is read back by store_geometry."""
    pre = preprocess if size is None else preprocess.scaled(size)
    return Geometry(size=pre.crop, resize=pre.resize, crop=crop, resample=pre.resample, engine=engine,
                    crop_floor=pre.crop_floor, decoder=decoder)


def geometry_for(cfg: ExtractConfig, backbone: Backbone | None = None) -> Geometry:
    """The geometry `cfg` asks for (`backbone`'s preprocessing, or without it the weights' preset, read without
    building the model), as a new store would get it."""
    preprocess = backbone.preprocess if backbone is not None else preprocess_for(cfg.backbone, cfg.weights)
    is_video = backbone.is_video if backbone is not None else isinstance(cfg.sampling, ClipSampling)
    engine = resize_engine_for(cfg.resize_engine, is_video)
    decoder = decoder_for(cfg.decoder, engine, resolve_device(cfg.device))
    return geometry_of(preprocess, cfg.size, cfg.crop, engine, decoder.name)


def store_geometry(config: StoreConfig) -> Geometry:
    """The geometry a store's features were made with: what extract recorded (size, resize, crop, engine), resampled
    by the architecture's recipe (PIL for image presets, torch for video ones: the same for all its weights)."""
    g, pre = config.geometry(), preprocess_for(config.backbone)
    return Geometry(size=g.size, resize=g.resize, crop=g.crop, resample=pre.resample, engine=g.engine,
                    crop_floor=pre.crop_floor, decoder=config.decoder or "pyav")


class _Writer(threading.Thread):
    """Appends finished records to the store off the inference thread, so HDF5 writes overlap compute."""

    def __init__(self, writer: StoreWriter):
        super().__init__(daemon=True)
        self.writer, self.q, self.error = writer, queue.Queue(maxsize=64), None

    def run(self) -> None:
        while (rec := self._next()) is not None:
            try:
                if self.error is None:
                    self.writer.add(rec)
            except Exception as e:  # noqa: BLE001 — re-raised on the main thread by put()/finish()
                self.error = e

    def _next(self) -> VideoRecord | None:
        # A wait that wakes every second to look again. Seen under load (test_extract_faults, a signal while a
        # worker is blocked): finish() had queued the closing None and joined, while the writer still waited in an
        # unbounded get() (faulthandler dump): a wake-up was lost, most likely to the signal's exception raised
        # inside the main thread's queue calls. The cause is not pinned down; a bounded wait cannot miss the item.
        while True:
            try:
                return self.q.get(timeout=1.0)
            except queue.Empty:
                continue

    def put(self, rec: VideoRecord) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(rec)

    def finish(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            self.writer.abort()  # the write failed (disk full): trying the same shard again would fail again
            raise self.error
        self.writer.close()


@contextmanager
def existing_store(store_path: str | Path) -> Iterator[Store | None]:
    """The store at `store_path` opened for reading, None if there is none yet. Opening reads every shard's
    header (~4 ms a shard), so a run opens it once for all it asks of it."""
    if not (Path(store_path) / HEADER).exists():
        yield None
        return
    with open_store(store_path) as store:
        yield store


def pending_items(items: list[Item], store_path: Path, cfg: ExtractConfig) -> tuple[list[Item], int]:
    """Items this run must do: its shard, minus what the store already holds (resume)."""
    with existing_store(store_path) as store:
        return _pending(items, store, cfg)


def _pending(items: list[Item], store: Store | None, cfg: ExtractConfig) -> tuple[list[Item], int]:
    if cfg.shard is not None:
        items = shard_items(items, *cfg.shard)
    done: set[str] = set()
    if store is not None:
        _check_subset(store.config, cfg.subset, store.path)
        done = set(store.ids(status="ok" if cfg.retry_failed else None))
    todo = [it for it in items if it.id not in done]
    skipped = len(items) - len(todo)
    return (todo if cfg.limit is None else todo[:cfg.limit]), skipped


def _check_subset(config: StoreConfig, subset: dict | None, store_path: Path) -> None:
    """A store's config names one subset: appending another would make that record wrong."""
    if config.subset != subset:
        raise StoreError(f"store {store_path} holds the subset {config.subset or 'all items'}, this run asks "
                         f"for {subset or 'all items'}: rerun with the store's --classes/--per-class, or use "
                         "another --store")


def meta_changes(items: list[Item], store_path: str | Path) -> list[MetaChange]:
    """Items already in the store whose label, group or split in `items` differ from what the store holds."""
    with existing_store(store_path) as store:
        return _meta_changes(items, store)


def _meta_changes(items: list[Item], store: Store | None) -> list[MetaChange]:
    if store is None:
        return []
    return diff_meta(store, {it.id: {"label": it.label, "group": it.group, "split": it.split} for it in items})


def update_meta(items: list[Item], store_path: str | Path) -> list[MetaChange]:
    """Record the label, group and split of `items` for those already in the store; nothing is decoded or embedded."""
    if not (Path(store_path) / HEADER).exists():
        raise StoreError(f"no store at {store_path}: --update-meta updates a store that extract wrote")
    changes = meta_changes(items, store_path)
    write_meta_update(store_path, changes)
    return changes


def extract(items: list[Item], store_path: str | Path, cfg: ExtractConfig,
            on_progress: Callable[[dict], None] | None = None) -> ExtractResult:
    """Embed every pending item into the store at `store_path`; returns what was done."""
    store_path = Path(store_path)
    prefix = "p0" if cfg.shard is None else f"s{cfg.shard[0]}of{cfg.shard[1]}"
    # The lock and the store's shards are checked before the model loads: a refusal costs nothing.
    lock = claim_store(store_path, prefix, cfg.force)
    try:
        with existing_store(store_path) as store:  # resuming: what is done, what changed, the store's settings
            todo, skipped = _pending(items, store, cfg)
            meta_changed = _meta_changes(items, store)
            run = resolve(cfg, None if store is None else store.config, todo)
        save = FlowSaver(claim_flow_folder(cfg.save_flow, store_path), todo) if cfg.save_flow else None
        # Decode workers start now and fill their prefetch queue while the model builds.
        units = iter(decode_loader(todo, cfg, run.geometry, run.device))
        backbone = flow_backbone(run.backbone, cfg.flow_stack) if cfg.modality == "flow" else \
            build_backbone(run.backbone)
    except BaseException:
        lock.abandon()  # a typo in --weights must not leave an empty store directory behind
        raise
    writer = StoreWriter(store_path, run.store, run.store.fingerprint_keys(), run.backbone.dim, prefix=prefix,
                         lock=lock, flush_videos=cfg.flush_videos, dtype=cfg.dtype, compression=cfg.compression)
    result = ExtractResult(str(store_path), skipped=skipped, device=str(run.device), precision=run.speed.precision,
                           unit="clips" if run.backbone.is_video else "frames", meta_changed=meta_changed,
                           compiled=run.speed.compiled, batch_size=run.speed.batch_size,
                           notes=[run.note] if run.note else [])
    _embed_into(writer, backbone, run, items, todo, units, cfg, result, on_progress, save)
    return result


def _embed_into(writer: StoreWriter, backbone: Backbone, run: Resolved, items: list[Item], todo: list[Item],
                units: DecodeWorkers, cfg: ExtractConfig, result: ExtractResult, on_progress,
                save: FlowSaver | None = None) -> None:
    """Embed `todo`, handing each finished item to a writer thread; the store is saved on any exit (Ctrl-C too)."""
    thread = _Writer(writer)
    thread.start()
    start = time.perf_counter()
    try:
        with _model_threads(cfg.model_threads):
            embed, stage = embedder(backbone, run.device, run.speed, cfg, run.raft, save)
            if embed.needs_calibration and todo:
                embed.calibrate(calibration_units(items, cfg, run.geometry, run.device))
            _run(todo, units, run.speed, embed, finite_only(thread.put, cfg.dtype), result, on_progress, stage)
    finally:
        result.seconds = time.perf_counter() - start
        try:
            units.close()  # within seconds, whatever the decode workers are doing
        finally:
            thread.finish()  # on Ctrl-C too: every finished video is saved


@contextmanager
def _model_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the run (None: left as they are), then given back."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embedder(backbone: Backbone, device: torch.device, speed: Speed, cfg: ExtractConfig,
             raft: RaftWeights | None = None, save: FlowSaver | None = None
             ) -> tuple[Embedder | FlowEmbedder, Callable[[Iterator], Iterator] | None]:
    """(what embeds a batch, the stage between rebatching and it): for --modality flow, the flow computed from the
    batch's frames (and saved where --save-flow asks) and embedded by the flow stream; for RGB, no stage."""
    if cfg.modality != "flow":
        # the backbone was built for this run: the embedder may fold it in place (pipeline.fold)
        return Embedder(backbone, device, speed.precision, speed.compiled, speed.batch_size, owns_model=True), None
    compute = FlowComputer(cfg.flow, raft, device)
    return FlowEmbedder(backbone, device, speed.precision), lambda steps: flow_steps(steps, compute, save)


def decode_sampling(cfg: ExtractConfig) -> Sampling | ClipSampling | StackSampling:
    """What the decode workers cut: the sampled frames or clips, or for --modality flow each sampled frame with the
    --flow-stack frames after it."""
    return StackSampling(cfg.sampling, cfg.flow_stack) if cfg.modality == "flow" else cfg.sampling


def _lane_cores(cfg: ExtractConfig) -> int:
    """Cores the model's lanes may use (pipeline.lanes): the process's, or ExtractConfig.model_threads where a
    benchmark set the split by hand (then one lane runs that many threads)."""
    return 1 if cfg.model_threads else process_cores(cfg.cores)


def decode_loader(todo: list[Item], cfg: ExtractConfig, geometry: Geometry, device: torch.device) -> DecodeWorkers:
    """Rows and Done messages of the items (pipeline.stages), from `cfg.workers` processes (auto when None)."""
    workers = auto_decode_workers(device, cfg.cores) if cfg.workers is None else cfg.workers
    init = partial(_init_decode_worker, nice=cfg.decode_nice) if workers else None
    return DecodeWorkers(DataLoader(DecodeStream(todo, decode_sampling(cfg), geometry, cfg.seek), batch_size=None,
                                    num_workers=workers, prefetch_factor=2 if workers else None,
                                    pin_memory=device.type == "cuda", persistent_workers=False,
                                    worker_init_fn=init, timeout=POLL_S if workers else 0))


def _run(todo: list[Item], units: DecodeWorkers, speed: Speed, embed: Embedder | FlowEmbedder,
         sink: Callable[[VideoRecord], None], result: ExtractResult, on_progress,
         stage: Callable[[Iterator], Iterator] | None = None) -> None:
    videos = InOrder(todo, sink)
    steps = rebatch(units, speed.batch_size) if stage is None else stage(rebatch(units, speed.batch_size))
    try:
        steps = calibrated(steps, embed) if embed.needs_calibration else steps
        for step, features in in_lanes(steps, embed, speed.lanes):
            if isinstance(step, Batch):
                videos.add(step, features)
                result.startup_s = result.startup_s or seconds_since_process_start()
                result.setup_s = embed.setup_s
                continue
            for rec in videos.finish(step):
                _count(rec, result, len(todo), on_progress)
    except RuntimeError as e:  # torch says a decode worker died wherever this thread is; WorkerLost is one too
        if (lost := units.lost(e)) is None:
            raise
        for slot, reason in lost.lost.items():  # the items in hand fail; the run ends here (exit 2)
            _count(videos.fail(slot, reason), result, len(todo), on_progress)


def _count(rec: VideoRecord, result: ExtractResult, total: int, on_progress) -> None:
    result.done += 1
    result.frames += rec.length
    if rec.status == "failed":
        result.failed.append((rec.video_id, rec.error))
    _report(on_progress, result, total, rec.video_id)


def calibration_units(items: list[Item], cfg: ExtractConfig, geometry: Geometry, device: torch.device) -> torch.Tensor:
    """The first CALIBRATION_UNITS units of the whole source in its own order, not of this run's pending items: a
    resumed run and every shard quantize with the same activation ranges (two calibrations on different frames
    differ by cosine ~0.995, as much as int8 differs from fp32). Decoded here, in this process (a second or two)."""
    got, n = [], 0
    for message in decode_loader(items, replace(cfg, workers=0), geometry, device):
        if isinstance(message, Rows):
            got.append(message.units)
            n += len(message)
            if n >= CALIBRATION_UNITS:
                break
    if not got:
        raise ExtractError("--precision int8 found no decodable frame to calibrate on in the source")
    return torch.cat(got)[:CALIBRATION_UNITS]


def calibrated(steps: Iterator[Batch | Done], embed: Embedder) -> Iterator[Batch | Done]:
    """The same steps, after int8 calibration on their first CALIBRATION_UNITS units (embed_files: the files given):
    those steps are held (a few hundred frames, tens of MB), `embed` calibrated on them, then replayed."""
    held, units = [], 0
    for step in steps:
        held.append(step)
        units += len(step.units()) if isinstance(step, Batch) else 0
        if units >= CALIBRATION_UNITS:
            break
    frames = [s.units() for s in held if isinstance(s, Batch)]
    if frames:
        embed.calibrate(torch.cat(frames)[:CALIBRATION_UNITS])
    yield from held
    yield from steps


def _init_decode_worker(_: int, nice: int = 0) -> None:
    # A decode worker runs no model: one decoder thread and one torch thread each, the rest for inference; `nice`
    # lets the model's threads keep their cores while the worker fills the gaps (ExtractConfig.decode_nice).
    set_decoder_threads(1)
    torch.set_num_threads(1)
    if nice:
        os.nice(nice)
    # Stopping is the main process's job: it saves the finished videos, then shuts the workers down. Ctrl-C reaches
    # the whole process group, so a worker ignores it (no traceback of its own); SIGTERM (DataLoader's own shutdown,
    # or Slurm/systemd signalling every process) ends a worker quietly, with a status the main process does not
    # report as a crashed worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _quiet_exit)


def _quiet_exit(signum: int, frame) -> None:
    os._exit(0)


_IMPORTED = time.perf_counter()


def seconds_since_process_start() -> float:
    """Wall-clock age of this process: from the kernel's start time on Linux, else since this module's import."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def _report(on_progress, result: ExtractResult, total: int, current: str) -> None:
    if on_progress is not None:
        on_progress({"done": result.done, "total": total, "frames": result.frames,
                     "failed": len(result.failed), "current": current})


def config_from_store(config: StoreConfig, device: str = "auto", workers: int | None = 0,
                      weights: str | None = None) -> ExtractConfig:
    """The ExtractConfig that made a store (its backbone, weights, sampling and preprocessing).

    `weights` replaces a weights file that is no longer where the store recorded it (embed_files checks its hash)."""
    c = config
    if c.is_clip:
        sampling = ClipSampling(clip_len=c.clip_len, clip_stride=c.clip_stride, clips=c.clips, fps=c.fps)
    else:
        sampling = Sampling(every=c.every, frames=c.frames, fps=c.fps, max_frames=c.max_frames)
    return ExtractConfig(backbone=c.backbone, weights=weights or store_weights(c), sampling=sampling, size=c.size,
                         crop=c.crop, device=device, workers=workers, resize_engine=c.geometry().engine, dtype=c.dtype,
                         decoder=c.decoder or "pyav", layer=c.layer, token_pool=c.token_pool,
                         modality="flow" if c.is_flow else "rgb", flow=c.flow, flow_stack=c.flow_stack,
                         flow_weights=_store_flow_weights(c))


def _store_flow_weights(config: StoreConfig) -> str | None:
    """The --flow-weights that rebuilds a flow store's RAFT (None for RGB and classical flow stores)."""
    if config.flow_weights is None:
        return None
    return recorded_raft(config.flow, config.flow_weights, config.value("flow_weights_file")).arg


def store_weights(config: StoreConfig) -> str:
    """The --weights that rebuilds a store's backbone: its enum name, or the weights file, looked for at the absolute
    path extract recorded, then at the path extract was given (relative to the working directory)."""
    if not str(config.weights).startswith("file:"):
        return config.weights_arg
    for candidate in (config.weights_file, config.weights_arg):
        if candidate and Path(candidate).expanduser().is_file():
            return candidate
    raise BackboneError(f"the weights file the store was made with is gone (recorded at "
                        f"{config.weights_file or config.weights_arg}, {config.weights}): "
                        "pass --weights PATH to a copy of it (its sha256 is checked)")


def store_chosen(config: StoreConfig, device: str = "auto",
                 weights: str | None = None) -> tuple[ExtractConfig, BackboneWeights]:
    """(ExtractConfig, weights as chosen, not built) that made the store with `config`: its weights found where
    extract recorded them, or at `weights`, and refused unless they are the same weights (sha256 of a file)."""
    cfg = config_from_store(config, device, weights=weights)
    chosen = weights_for(cfg.backbone, cfg.weights, cfg.layer, cfg.token_pool)
    recorded = config.weights_sha256
    if chosen.id != config.weights or (recorded and chosen.sha256 != recorded):
        raise BackboneError(f"the weights at {cfg.weights} are not the ones the store was made with "
                            f"({chosen.sha256 or chosen.id} vs {recorded or config.weights})")
    return cfg, chosen


def store_backbone(config: StoreConfig, device: str = "auto",
                   weights: str | None = None) -> tuple[ExtractConfig, Backbone]:
    """(ExtractConfig, frozen backbone) that made the store with `config` (its weights checked by store_chosen)."""
    cfg, chosen = store_chosen(config, device, weights)
    return cfg, flow_backbone(chosen, cfg.flow_stack) if config.is_flow else build_backbone(chosen)


def embed_files(paths: list[str], config: StoreConfig, device: str = "auto",
                weights: str | None = None) -> list[VideoRecord]:
    """Decode and embed files exactly as the store with `config` was made; no store is written.

    Features go through the store's dtype, so a file embedded here equals the same file read from the store.
    `weights` points at the store's weights file when it has moved; a file with other content is refused.
    """
    cfg, backbone = store_backbone(config, device, weights)
    dev = resolve_device(cfg.device, backbone.name, backbone.cpu_only)
    geometry = store_geometry(config)
    items = [Item(id=str(p), path=str(Path(p).resolve()), labels=(), kind=item_kind(Path(p))) for p in paths]
    records: list[VideoRecord] = []
    result = ExtractResult("")
    # int8 stores are re-embedded in int8, calibrated on these files (docs/extract.md); nothing else is compiled
    speed = speed_for(config.precision or "auto", "off" if config.precision != "int8" else "auto",
                      config.batch_size, backbone, dev, items, cfg.sampling)
    raft = None if cfg.flow_weights is None else raft_weights(cfg.flow, cfg.flow_weights)
    embed, stage = embedder(backbone, dev, speed, cfg, raft)
    units = decode_loader(items, cfg, geometry, dev)
    try:
        _run(items, units, speed, embed, records.append, result, None, stage)
    finally:
        units.close()
    for r in (fail_non_finite(r, cfg.dtype) for r in records):  # as extract would store them, or failed
        if r.features is not None:
            r.features = r.features.astype(cfg.dtype).astype(np.float32)
    return records
