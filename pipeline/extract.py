"""Stage one: items → decoded, sampled frames → frozen backbone → feature store.

Decoding runs in DataLoader workers (one video per item) and overlaps inference; frames are
batched ACROSS videos to a fixed batch size; finished videos go to a writer thread that appends
them to the store as crash-safe shards. Memory is bounded by batch size and prefetch depth.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featstore import StoreWriter, VideoRecord, open_store
from featstore.store import HEADER
from pipeline.backbones import Backbone, BackboneError, load_backbone
from pipeline.decode import DecodeError, Geometry, Sampling, decode_image, decode_video, set_decoder_threads
from pipeline.sources import Item, item_kind, shard_items

STORE_FORMAT = 1
# Settings that change the features: a store refuses appends that differ in any of them.
FINGERPRINT_KEYS = ("format", "backbone", "weights", "every", "frames", "fps", "max_frames",
                    "size", "resize", "crop", "mean", "std", "dtype")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class ExtractConfig:
    backbone: str = "resnet50"
    weights: str = "DEFAULT"          # enum name, 'none' (seeded random init) or a local file
    sampling: Sampling = field(default_factory=lambda: Sampling(every=10))
    size: int | None = None           # model input side; None = the weights' own crop size
    crop: str = "center"              # center (weights' recipe) | square | none (squash)
    batch_size: int = 64              # frames per forward pass, across videos
    workers: int | None = None        # decode processes; None = auto (1 on CPU, up to 8 on GPU)
    device: str = "auto"              # auto | cpu | cuda | cuda:i
    precision: str = "auto"           # auto | fp32 | bf16 | fp16 (autocast dtype)
    dtype: str = "float16"            # storage dtype of features: float16 | float32
    compression: str | None = None    # None | lzf | gzip
    shard: tuple[int, int] | None = None  # (i, N): this process handles part i of N
    retry_failed: bool = False
    limit: int | None = None          # process at most this many new items
    flush_videos: int = 32            # videos per shard: what a crash can lose at most

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.crop not in ("center", "square", "none"):
            raise ValueError(f"--crop must be center, square or none, not {self.crop!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"--dtype must be float16 or float32, not {self.dtype!r}")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise ValueError(f"--shard i/N needs 0 <= i < N, got {self.shard[0]}/{self.shard[1]}")


@dataclass
class ExtractResult:
    store: str
    done: int = 0                 # items written this run (ok + failed)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) written this run
    skipped: int = 0              # already in the store
    frames: int = 0
    seconds: float = 0.0
    device: str = ""
    precision: str = ""

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def resolve_device(device: str, backbone: Backbone) -> torch.device:
    if backbone.cpu_only:
        if device.startswith("cuda"):
            raise BackboneError(f"{backbone.name} is an int8 CPU-only model; use --device cpu or another backbone")
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, backbone: Backbone) -> str:
    """auto: bf16 on GPUs that have it (else fp16); bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    if backbone.cpu_only:
        return "fp32"  # int8 kernels: autocast does not apply
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def store_config(cfg: ExtractConfig, backbone: Backbone, geometry: Geometry, device: torch.device,
                 precision: str) -> dict:
    import av
    import torchvision

    s = cfg.sampling
    return {
        "format": STORE_FORMAT, "backbone": backbone.name, "weights": backbone.weights_id,
        "weights_arg": cfg.weights, "every": s.every, "frames": s.frames, "fps": s.fps,
        "max_frames": s.max_frames, "size": geometry.size, "resize": geometry.resize, "crop": geometry.crop,
        "mean": list(backbone.preprocess.mean), "std": list(backbone.preprocess.std), "dtype": cfg.dtype,
        "dim": backbone.dim, "device": str(device), "precision": precision, "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                                          "av": av.__version__},
    }


def geometry_for(cfg: ExtractConfig, backbone: Backbone) -> Geometry:
    pre = backbone.preprocess if cfg.size is None else backbone.preprocess.scaled(cfg.size)
    return Geometry(size=pre.crop, resize=pre.resize, crop=cfg.crop)


class _Decoded(Dataset):
    """One item per video; a bad video becomes a failure record instead of an exception."""

    def __init__(self, items: list[Item], sampling: Sampling, geometry: Geometry):
        self.items, self.sampling, self.geometry = items, sampling, geometry

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            if item.kind == "image":
                v = decode_image(item.path, self.geometry)
            else:
                v = decode_video(item.path, self.sampling, self.geometry)
        except DecodeError as e:
            return {"i": i, "error": str(e)}
        except Exception as e:  # noqa: BLE001 — an unforeseen decoder failure must cost one item, not the run
            return {"i": i, "error": f"{type(e).__name__}: {e} ({item.path})"}
        frames = v.frames if v.frames.flags.writeable else v.frames.copy()  # torch wants writable memory
        return {"i": i, "frames": torch.from_numpy(frames), "frame_index": v.frame_index, "time_s": v.time_s,
                "fps": v.fps, "n_frames": v.n_frames, "width": v.width, "height": v.height}


class _Writer(threading.Thread):
    """Appends finished records to the store off the inference thread, so HDF5 writes overlap compute."""

    def __init__(self, writer: StoreWriter):
        super().__init__(daemon=True)
        self.writer, self.q, self.error = writer, queue.Queue(maxsize=64), None

    def run(self) -> None:
        while (rec := self.q.get()) is not None:
            try:
                if self.error is None:
                    self.writer.add(rec)
            except Exception as e:  # noqa: BLE001 — re-raised on the main thread by put()/finish()
                self.error = e

    def put(self, rec: VideoRecord) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(rec)

    def finish(self) -> None:
        self.q.put(None)
        self.join()
        try:
            self.writer.close()
        finally:
            if self.error is not None:
                raise self.error


class _Embedder:
    """Frozen model + on-device normalization, channels_last and autocast, chosen once per device."""

    def __init__(self, backbone: Backbone, device: torch.device, precision: str):
        self.device, self.quantized = device, backbone.cpu_only
        self.model = backbone.model.to(device)
        if not self.quantized:
            self.model = self.model.to(memory_format=torch.channels_last)
        pre = backbone.preprocess
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, D) float32
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory = channels_last
        x = (x.float() - self.mean) / self.std
        if self.quantized:
            x = x.contiguous()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            out = self.model(x)
        return out.float().cpu().numpy()


def pending_items(items: list[Item], store_path: Path, cfg: ExtractConfig) -> tuple[list[Item], int]:
    """Items this run must do: its shard, minus what the store already holds (resume)."""
    if cfg.shard is not None:
        items = shard_items(items, *cfg.shard)
    done: set[str] = set()
    if (store_path / HEADER).exists():
        with open_store(store_path) as store:
            done = set(store.ids(status="ok" if cfg.retry_failed else None))
    todo = [it for it in items if it.id not in done]
    skipped = len(items) - len(todo)
    return (todo if cfg.limit is None else todo[:cfg.limit]), skipped


def extract(items: list[Item], store_path: str | Path, cfg: ExtractConfig,
            on_progress: Callable[[dict], None] | None = None) -> ExtractResult:
    """Embed every pending item into the store at `store_path`; returns what was done."""
    store_path = Path(store_path)
    backbone = load_backbone(cfg.backbone, cfg.weights)
    device = resolve_device(cfg.device, backbone)
    precision = resolve_precision(cfg.precision, device, backbone)
    geometry = geometry_for(cfg, backbone)
    config = store_config(cfg, backbone, geometry, device, precision)
    prefix = "p0" if cfg.shard is None else f"s{cfg.shard[0]}of{cfg.shard[1]}"
    writer = StoreWriter(store_path, config, FINGERPRINT_KEYS, backbone.dim, prefix=prefix,
                         flush_videos=cfg.flush_videos, dtype=cfg.dtype, compression=cfg.compression)
    result = ExtractResult(str(store_path), device=str(device), precision=precision)
    try:
        todo, result.skipped = pending_items(items, store_path, cfg)
    except BaseException:
        writer.close()
        raise
    thread = _Writer(writer)
    thread.start()
    start = time.perf_counter()
    try:
        _run(todo, cfg, geometry, _Embedder(backbone, device, precision), thread.put, result, on_progress)
    finally:
        result.seconds = time.perf_counter() - start
        thread.finish()  # on Ctrl-C too: every finished video is saved
    return result


def auto_workers(device: torch.device) -> int:
    cores = len(os.sched_getaffinity(0))
    return min(8, max(1, cores - 1)) if device.type == "cuda" else 1


def decode_loader(todo: list[Item], cfg: ExtractConfig, geometry: Geometry, device: torch.device) -> DataLoader:
    """Decoded videos in item order, one per step, from `cfg.workers` processes (auto when None)."""
    workers = auto_workers(device) if cfg.workers is None else cfg.workers
    return DataLoader(_Decoded(todo, cfg.sampling, geometry), batch_size=None, shuffle=False,
                      num_workers=workers, prefetch_factor=2 if workers else None,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      worker_init_fn=_init_decode_worker if workers else None)


def _run(todo: list[Item], cfg: ExtractConfig, geometry: Geometry, embed: _Embedder,
         sink: Callable[[VideoRecord], None],
         result: ExtractResult, on_progress) -> None:
    loader = decode_loader(todo, cfg, geometry, embed.device)
    open_videos: dict[int, dict] = {}   # videos whose frames are not all embedded yet, in order
    chunks: list[tuple[int, torch.Tensor]] = []   # (video slot, frames) waiting for a batch
    queued = 0

    def finish_ready():
        # Write videos in item order, as soon as all their frames have features.
        while open_videos:
            slot = next(iter(open_videos))
            v = open_videos[slot]
            if v["missing"]:
                return
            del open_videos[slot]
            rec = _record(todo[slot], v)
            sink(rec)
            result.done += 1
            result.frames += rec.length
            if rec.status == "failed":
                result.failed.append((rec.video_id, rec.error))
            _report(on_progress, result, len(todo), rec.video_id)

    def run_batch(n: int):
        nonlocal queued, chunks
        taken, rest, need = [], [], n
        for slot, fr in chunks:
            if need <= 0:
                rest.append((slot, fr))
            elif len(fr) <= need:
                taken.append((slot, fr)); need -= len(fr)
            else:
                taken.append((slot, fr[:need])); rest.append((slot, fr[need:])); need = 0
        chunks, queued = rest, queued - n
        feats = embed(torch.cat([fr for _, fr in taken]))
        pos = 0
        for slot, fr in taken:
            v = open_videos[slot]
            v["feats"].append(feats[pos:pos + len(fr)]); pos += len(fr)
            v["missing"] -= len(fr)
        finish_ready()

    for sample in loader:
        slot = sample["i"]
        if "error" in sample:
            open_videos[slot] = {"error": sample["error"], "missing": 0}
            finish_ready()
            continue
        frames = sample.pop("frames")
        open_videos[slot] = {**sample, "feats": [], "missing": len(frames)}
        chunks.append((slot, frames))
        queued += len(frames)
        while queued >= cfg.batch_size:
            run_batch(cfg.batch_size)
    if queued:
        run_batch(queued)
    finish_ready()


def _init_decode_worker(_: int) -> None:
    # A decode worker runs no model: one decoder thread and one torch thread each, the rest for inference.
    set_decoder_threads(1)
    torch.set_num_threads(1)


def _record(item: Item, v: dict) -> VideoRecord:
    base = dict(video_id=item.id, path=item.path, label=item.label, group=item.group, split=item.split)
    if "error" in v:
        return VideoRecord(**base, status="failed", error=v["error"])
    return VideoRecord(**base, fps=float(v["fps"]), n_frames=int(v["n_frames"]), width=int(v["width"]),
                       height=int(v["height"]), features=np.concatenate(v["feats"]),
                       frame_index=np.asarray(v["frame_index"]), time_s=np.asarray(v["time_s"]))


def _report(on_progress, result: ExtractResult, total: int, current: str) -> None:
    if on_progress is not None:
        on_progress({"done": result.done, "total": total, "frames": result.frames,
                     "failed": len(result.failed), "current": current})


def config_from_store(config: dict, device: str = "auto", workers: int | None = 0) -> ExtractConfig:
    """The ExtractConfig that made a store (its backbone, weights, sampling and preprocessing)."""
    sampling = Sampling(every=config["every"], frames=config["frames"], fps=config["fps"],
                        max_frames=config["max_frames"])
    return ExtractConfig(backbone=config["backbone"], weights=config["weights_arg"], sampling=sampling,
                         size=config["size"], crop=config["crop"], device=device, workers=workers,
                         dtype=config["dtype"])


def embed_files(paths: list[str], config: dict, device: str = "auto") -> list[VideoRecord]:
    """Decode and embed files exactly as the store with `config` was made; no store is written.

    Features go through the store's dtype, so a file embedded here equals the same file read from the store.
    """
    cfg = config_from_store(config, device)
    backbone = load_backbone(cfg.backbone, cfg.weights)
    if backbone.weights_id != config["weights"]:
        raise BackboneError(f"the weights at {cfg.weights} are not the ones the store was made with "
                            f"({backbone.weights_id} vs {config['weights']})")
    dev = resolve_device(cfg.device, backbone)
    geometry = geometry_for(cfg, backbone)
    items = [Item(id=str(p), path=str(Path(p).resolve()), labels=(), kind=item_kind(Path(p))) for p in paths]
    records: list[VideoRecord] = []
    result = ExtractResult("")
    embed = _Embedder(backbone, dev, resolve_precision(config.get("precision", "auto"), dev, backbone))
    _run(items, cfg, geometry, embed, records.append, result, None)
    for r in records:
        if r.features is not None:
            r.features = r.features.astype(cfg.dtype).astype(np.float32)
    return records
