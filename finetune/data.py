"""Clips for fine-tuning, decoded on the fly on extract's PyAV path, in DataLoader worker processes.

A clip gives either K TSN segment frames (one random frame per equal segment at training, the segment centres at
evaluation) or a temporal pair (two frames of one video at most --pos-window seconds apart). Every random choice
(frame positions, augmentation, epoch order) is seeded by (seed, epoch, clip), never by process state, so a resumed
run sees exactly the data an uninterrupted one sees, whatever the number of workers.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.transforms import v2

from finetune.config import FinetuneError
from finetune.flow import FlowInput
from heads.data import Cache
from pipeline.decode import DecodeError, Geometry, decode_chosen, decode_image, no_motion, set_decoder_threads
from pipeline.sources import Item
from pipeline.stages import IDLE, POLL_S, STALL_S, Board, DecodeWorkers, Fault, share_units

SAMPLERS = ("segments", "pair")
# How a run goes on after its decode workers were lost (the checkpoint keeps every finished epoch).
RERUN = "rerun with --resume"


@dataclass(frozen=True)
class FrameSampler:
    """Which frames a clip contributes."""
    kind: str = "segments"   # segments (TSN, K frames in order) | pair (two frames, temporal positives)
    segments: int = 8        # K, for kind="segments"
    window_s: float = 1.0    # most seconds between the two frames of a pair
    random: bool = True      # training: random positions; evaluation: segment centres / fixed pairs

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise FinetuneError(f"frame sampler {self.kind!r} is unknown; choose one of: {', '.join(SAMPLERS)}")

    @property
    def frames(self) -> int:
        return self.segments if self.kind == "segments" else 2


def segment_positions(n_frames: int, segments: int, rng: np.random.Generator | None) -> np.ndarray:
    """(K,) frame positions: [0, n) cut in K equal segments, one random frame in each (rng) or each centre."""
    edges = np.linspace(0, n_frames, segments + 1)
    offset = 0.5 if rng is None else rng.random(segments)
    pos = np.floor(edges[:-1] + offset * (edges[1:] - edges[:-1])).astype(np.int64)
    return np.clip(pos, 0, max(n_frames - 1, 0))


def pair_positions(n_frames: int, fps: float, window_s: float, rng: np.random.Generator) -> np.ndarray:
    """(2,) positions of two distinct frames (when the clip has two) at most window_s apart, in random order."""
    span = max(1, int(window_s * fps)) if fps > 0 else 1
    i = int(rng.integers(n_frames))
    lo, hi = max(0, i - span), min(n_frames - 1, i + span)
    if hi == lo:
        return np.array([i, i], dtype=np.int64)
    j = int(rng.integers(lo, hi))  # one of the hi - lo other frames of the window
    return np.array([i, j + (j >= i)], dtype=np.int64)


class _Chooser:
    """choose(n_frames, fps) for decode_chosen: a pure function of its arguments, as decode_chosen requires.
    With `flow`, each segment's start is followed by the L frames its flow stack needs."""

    def __init__(self, sampler: FrameSampler, seed: tuple[int, ...], flow: FlowInput | None = None):
        self.sampler, self.seed, self.flow = sampler, seed, flow

    def __call__(self, n_frames: int, fps: float) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        if self.sampler.kind == "pair":
            return pair_positions(n_frames, fps, self.sampler.window_s, rng)
        rng = rng if self.sampler.random else None
        if self.flow is None:
            return segment_positions(n_frames, self.sampler.segments, rng)
        starts = segment_positions(self.flow.segment_span(n_frames), self.sampler.segments, rng)
        return self.flow.frame_positions(starts, n_frames)


def augmentation(size: int, flow: bool = False) -> v2.Compose:
    """Pixel augmentation at training (none at evaluation). One call draws one set of parameters for all frames
    it is given: the K segments of a clip share a crop (as in TSN), the two views of a pair are drawn apart.
    No hue jitter: it costs 32 of the 47 ms this takes on a clip of 8 frames at 224 px (one thread), a quarter of
    a decode worker's time per clip, and TSN trains without it. Frames for flow get no colour jitter either
    (TSN's flow stream trains on crops and flips; the flow ignores colour)."""
    geometric = [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(geometric if flow else
                      [*geometric, v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)])


@dataclass
class Batch:
    """Clips of one step; clips that failed to decode are left out and listed."""
    frames: torch.Tensor                # (B, T, H, W, 3) uint8, or flow stacks (B, T, 2L, H, W) float32
    index: torch.Tensor                 # (B,) int64, positions in the source's item list
    failed: list[tuple[int, str]]       # (source position, reason)

    def pin_memory(self) -> "Batch":
        return Batch(self.frames.pin_memory(), self.index.pin_memory(), self.failed)

    def __len__(self) -> int:
        return len(self.index)


class ClipFrames(Dataset):
    """The clips `chosen` (positions in `items`, the whole source): dataset entry k gives (chosen[k], frames
    (T, H, W, 3) uint8 or None, error), so batches carry source positions, which index targets and ids whatever
    the split. With `flow`, each of the T segments is a flow stack: frames (T, 2L, H, W) float32 (finetune.flow).
    Set `epoch` before iterating."""

    def __init__(self, items: list[Item], chosen: list[int] | np.ndarray, geometry: Geometry, sampler: FrameSampler,
                 augment: bool, seed: int, flow: FlowInput | None = None):
        self.items, self.chosen = items, [int(i) for i in chosen]
        self.geometry, self.sampler, self.seed, self.flow = geometry, sampler, seed, flow
        self.augment = augmentation(geometry.size, flow is not None) if augment else None
        self.epoch = 0
        self.board: Board | None = None  # set by DecodeWorkers: what each worker decodes, for its liveness checks
        self._computer = None  # the flow method, built on first use in the process decoding (never pickled)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_computer": None}

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, str]:
        worker = get_worker_info() if self.board is not None else None
        if worker is not None:
            self.board.post(worker.id, self.chosen[k])  # a worker that dies or hangs now costs this clip
        try:
            return self._clip(k)
        finally:
            if worker is not None:
                self.board.post(worker.id, IDLE)

    def _clip(self, k: int) -> tuple[int, torch.Tensor | None, str]:
        i = self.chosen[k]
        epoch = self.epoch if self.sampler.random else 0  # evaluation sees the same frames every epoch
        seed = (self.seed, epoch, i)
        try:
            frames = self._decode(self.items[i], _Chooser(self.sampler, seed, self.flow))
        except DecodeError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 — an unforeseen decoder failure must cost one clip, not the run
            return i, None, f"{type(e).__name__}: {e} ({self.items[i].path})"
        frames = self._augmented(frames, seed)
        if self.flow is None:
            return i, frames, ""
        if self._computer is None:
            self._computer = self.flow.computer()
        return i, self.flow.stacks(frames, self._computer), ""

    def _decode(self, item: Item, choose: _Chooser) -> torch.Tensor:  # (T, H, W, 3) uint8
        if item.kind == "image" and self.flow is not None:  # as extract --modality flow refuses it
            raise no_motion(item.path, "--modality flow trains on")
        if item.kind == "image":
            video = decode_image(item.path, self.geometry)
            wanted = np.zeros(self.sampler.frames, dtype=np.int64)
        else:
            video = decode_chosen(item.path, choose, self.geometry)
            wanted = choose(video.n_frames, video.fps)
        rows = np.clip(np.searchsorted(video.frame_index, wanted), 0, len(video.frame_index) - 1)
        return torch.from_numpy(np.ascontiguousarray(video.frames[rows]))

    def _augmented(self, frames: torch.Tensor, seed: tuple[int, ...]) -> torch.Tensor:
        if self.augment is None:
            return frames
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W): v2 transforms read the last three dims as one image
        with torch.random.fork_rng(devices=[]):  # v2 draws from torch's global RNG; keep the caller's intact
            torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
            if self.sampler.kind == "pair":
                x = torch.stack([self.augment(view) for view in x])
            else:
                x = self.augment(x)
        return x.permute(0, 2, 3, 1).contiguous()


def collate(samples: list[tuple[int, torch.Tensor | None, str]]) -> Batch | Fault:
    """One Batch of a step's clips; in a worker, a Fault when its frames cannot be put in shared memory."""
    ok = [(i, f) for i, f, _ in samples if f is not None]
    failed = [(i, e) for i, f, e in samples if f is None]
    if not ok:
        return Batch(torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), failed)
    frames = torch.stack([f for _, f in ok])
    if get_worker_info() is not None and (why := share_units(frames)):
        return Fault(why)
    return Batch(frames, torch.tensor([i for i, _ in ok], dtype=torch.int64), failed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch `epoch`: a permutation drawn from (seed, epoch) alone."""
    return np.random.default_rng((seed, epoch, 0x5EED)).permutation(n).tolist()


class ClipsLost(FinetuneError):
    """Decode workers died or hung while decoding clips: the run stopped there (exit 2); `failures` maps each
    clip's id to why, and the checkpoint keeps every finished epoch."""

    def __init__(self, failures: dict[str, str]):
        super().__init__("; ".join(f"clip {vid}: {why}" for vid, why in failures.items()))
        self.failures = failures


@contextmanager
def clip_batches(dataset: ClipFrames, order: list[int], batch_size: int, workers: int, pin_memory: bool,
                 stall_s: float = STALL_S) -> Iterator[DecodeWorkers]:
    """Batches of decoded clips in `order`, decoded by `workers` processes (0: in this process), watched as
    extract's are (pipeline.stages.DecodeWorkers): every wait is bounded, a worker that dies or makes no progress
    on a clip for `stall_s` raises ClipsLost naming it (wherever the body is: torch reports a dead worker in the
    main thread), shared memory running out raises DecodeWorkerError with the fix, and on leaving, Ctrl-C and
    SIGTERM included, the workers end within seconds."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=collate, num_workers=workers,
                        prefetch_factor=2 if workers else None, pin_memory=pin_memory, persistent_workers=False,
                        worker_init_fn=_init_worker if workers else None, timeout=POLL_S if workers else 0)
    batches = DecodeWorkers(loader, stall_s, rerun=RERUN)
    try:
        yield batches
    except RuntimeError as e:
        if (lost := batches.lost(e)) is None:
            raise
        raise ClipsLost({dataset.items[slot].id: why for slot, why in lost.lost.items()}) from None
    finally:
        batches.close()


def _init_worker(_: int) -> None:
    # As in extract: a decode worker runs no model, so one decoder thread and one torch thread each.
    set_decoder_threads(1)
    torch.set_num_threads(1)


def item_index(items: list[Item]) -> Cache:
    """The items as a feature-less Cache: the columns heads.data.make_splits reads, so splits are fit-head's."""
    n = len(items)
    return Cache(torch.zeros(0, 1), torch.arange(n), torch.ones(n, dtype=torch.int64), [it.id for it in items],
                 [list(it.labels) for it in items], [it.group for it in items], [it.split for it in items])


def steps_per_epoch(n_clips: int, batch_size: int) -> int:
    return max(1, math.ceil(n_clips / batch_size))
