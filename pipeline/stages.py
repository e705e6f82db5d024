"""The stages of an extraction, each a plain object or generator:

    DecodeStream (DataLoader workers)  ->  Rows / Done messages, one video after another per worker
    rebatch(messages, B)               ->  Batch of exactly B units across videos, Done once a video's rows are out
    Embedder (pipeline.embed)          ->  (B, D) features per Batch
    InOrder                            ->  VideoRecords in item order, each as soon as it and those before it are done

A unit is a frame (H, W, 3) for image backbones or a clip (T, H, W, 3) for video backbones. A worker sends a clip as
soon as it is cut and frames in windows of at most pipeline.decode.WINDOW, so at most one clip or window per video
(plus the DataLoader's prefetch) is in memory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from featstore import VideoRecord
from pipeline.decode import (Clip, ClipSampling, ClipStream, DecodeError, FrameStream, Geometry, Sampling, VideoInfo,
                             decode_image)
from pipeline.sources import Item


@dataclass
class Rows:
    """Some decoded units of one video and the spans of frames they cover."""
    slot: int                 # position of the video in the run's item list
    units: torch.Tensor       # (n, H, W, 3) frames or (n, T, H, W, 3) clips, uint8
    frame_index: np.ndarray   # (n,) first decoded frame of each unit
    frame_end: np.ndarray     # (n,) one past its last real frame
    time_s: np.ndarray        # (n,)
    time_end_s: np.ndarray    # (n,)

    def __len__(self) -> int:
        return len(self.units)

    def split(self, n: int) -> tuple["Rows", "Rows"]:
        """The first n units and the rest."""
        cut = [(a[:n], a[n:]) for a in (self.units, self.frame_index, self.frame_end, self.time_s, self.time_end_s)]
        return Rows(self.slot, *(c[0] for c in cut)), Rows(self.slot, *(c[1] for c in cut))

    def pin_memory(self) -> "Rows":  # called by the DataLoader's pin_memory thread on CUDA
        return Rows(self.slot, self.units.pin_memory(), self.frame_index, self.frame_end, self.time_s,
                    self.time_end_s)


@dataclass
class Done:
    """The end of one video: what decoding measured, or why it failed (then `info` is None)."""
    slot: int
    info: VideoInfo | None = None
    error: str = ""


@dataclass
class Batch:
    """Exactly one forward pass: consecutive parts of one or more videos."""
    parts: list[Rows]

    def units(self) -> torch.Tensor:
        return self.parts[0].units if len(self.parts) == 1 else torch.cat([p.units for p in self.parts])


class DecodeStream(IterableDataset):
    """Rows and Done messages for the items; DataLoader worker w of W decodes items w, w + W, ...

    A bad video becomes a Done with its reason instead of an exception, so it costs one item, not the run. Frames
    and clips both stream: a worker holds one window of a video's sampled frames (or one clip) at a time. `seek`
    applies to frame sampling (pipeline.decode.FrameStream)."""

    def __init__(self, items: list[Item], sampling: Sampling | ClipSampling, geometry: Geometry, seek: str = "never"):
        self.items, self.sampling, self.geometry, self.seek = items, sampling, geometry, seek

    def __iter__(self) -> Iterator[Rows | Done]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for slot in range(first, len(self.items), step):
            yield from self.video(slot)

    def video(self, slot: int) -> Iterator[Rows | Done]:
        item = self.items[slot]
        try:
            if item.kind == "image":
                info = yield from self._image(slot, item)
            elif isinstance(self.sampling, ClipSampling):
                info = yield from self._clips(slot, item)
            else:
                info = yield from self._frames(slot, item)
        except DecodeError as e:
            yield Done(slot, error=str(e))
        except Exception as e:  # noqa: BLE001 — an unforeseen decoder failure must cost one item, not the run
            yield Done(slot, error=f"{type(e).__name__}: {e} ({item.path})")
        else:
            yield Done(slot, info)

    def _frames(self, slot: int, item: Item):
        stream = FrameStream(item.path, self.sampling, self.geometry, seek=self.seek)
        for window in stream:
            yield _frame_rows(slot, window.frames, window.frame_index, window.time_s, window.time_end_s)
        return stream.info

    def _clips(self, slot: int, item: Item):
        stream = ClipStream(item.path, self.sampling, self.geometry)
        for clip in stream:
            yield _clip_rows(slot, clip)
        return stream.info

    def _image(self, slot: int, item: Item):
        v = decode_image(item.path, self.geometry)
        if isinstance(self.sampling, ClipSampling):  # a still image is a clip of one frame, padded like a short video
            frames = np.repeat(v.frames, self.sampling.clip_len, axis=0)
            yield _clip_rows(slot, Clip(frames, 0, 1, 0.0, 0.0))
        else:
            yield _frame_rows(slot, v.frames, v.frame_index, v.time_s, v.time_end_s)
        return VideoInfo(v.fps, v.n_frames, v.width, v.height)


def _frame_rows(slot: int, frames: np.ndarray, index: np.ndarray, time_s: np.ndarray, time_end_s: np.ndarray) -> Rows:
    frames = frames if frames.flags.writeable else frames.copy()  # torch wants writable memory
    return Rows(slot, torch.from_numpy(frames), index, index + 1, time_s, time_end_s)


def _clip_rows(slot: int, clip: Clip) -> Rows:
    return Rows(slot, torch.from_numpy(clip.frames[None]), np.array([clip.frame_index]), np.array([clip.frame_end]),
                np.array([clip.time_s]), np.array([clip.time_end_s]))


def rebatch(messages: Iterable[Rows | Done], size: int) -> Iterator[Batch | Done]:
    """The same stream with Rows regrouped into Batches of exactly `size` units across videos (the last one may be
    smaller). A video's Done comes after the Batch that holds its last rows, never before."""
    queue: list[Rows] = []
    held: list[Done] = []
    for message in messages:
        if isinstance(message, Done):
            if any(r.slot == message.slot for r in queue):
                held.append(message)
            else:
                yield message
            continue
        queue.append(message)
        while sum(map(len, queue)) >= size:
            batch, queue = _take(queue, size)
            yield batch
            waiting = {r.slot for r in queue}
            yield from (d for d in held if d.slot not in waiting)
            held = [d for d in held if d.slot in waiting]
    if queue:
        yield Batch(queue)
    yield from held


def _take(queue: list[Rows], size: int) -> tuple[Batch, list[Rows]]:
    parts, need = [], size
    for i, rows in enumerate(queue):
        if len(rows) >= need:
            head, tail = rows.split(need)
            parts.append(head)
            return Batch(parts), ([tail] if len(tail) else []) + queue[i + 1:]
        parts.append(rows)
        need -= len(rows)
    raise ValueError(f"fewer than {size} units queued")


@dataclass
class PendingVideo:
    """One video whose features are being collected."""
    item: Item
    features: list[np.ndarray] = field(default_factory=list)
    spans: list[Rows] = field(default_factory=list)  # the Rows they came from, units dropped
    done: Done | None = None

    def add(self, rows: Rows, features: np.ndarray) -> None:
        self.features.append(features)
        self.spans.append(Rows(rows.slot, rows.units[:0], rows.frame_index, rows.frame_end, rows.time_s,
                               rows.time_end_s))

    def record(self) -> VideoRecord:
        it = self.item
        base = dict(video_id=it.id, path=it.path, label=it.label, group=it.group, split=it.split)
        info = self.done.info
        if info is None:
            return VideoRecord(**base, status="failed", error=self.done.error)

        def column(name: str) -> np.ndarray:
            return np.concatenate([getattr(s, name) for s in self.spans])

        return VideoRecord(**base, fps=float(info.fps), n_frames=int(info.n_frames), width=int(info.width),
                           height=int(info.height), rotation=int(info.rotation), features=np.concatenate(self.features),
                           frame_index=column("frame_index").astype(np.int64), time_s=column("time_s"),
                           frame_end=column("frame_end").astype(np.int64), time_end_s=column("time_end_s"))


class InOrder:
    """Collects features per video and hands finished records to `sink` in item order."""

    def __init__(self, items: list[Item], sink: Callable[[VideoRecord], None]):
        self.items, self.sink = items, sink
        self.pending: dict[int, PendingVideo] = {}
        self.next = 0  # the first slot not yet handed on

    def _video(self, slot: int) -> PendingVideo:
        return self.pending.setdefault(slot, PendingVideo(self.items[slot]))

    def add(self, batch: Batch, features: np.ndarray) -> None:
        pos = 0
        for part in batch.parts:
            self._video(part.slot).add(part, features[pos:pos + len(part)])
            pos += len(part)

    def finish(self, done: Done) -> list[VideoRecord]:
        """Mark a video done; returns the records handed on because of it."""
        self._video(done.slot).done = done
        out = []
        while self.next in self.pending and self.pending[self.next].done is not None:
            out.append(self.pending.pop(self.next).record())
            self.sink(out[-1])
            self.next += 1
        return out
