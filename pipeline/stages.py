"""The stages of an extraction, each a plain object or generator:

    DecodeStream (DataLoader workers)  ->  Rows / Done messages, one video after another per worker
    rebatch(messages, B)               ->  Batch of exactly B units across videos, Done once a video's rows are out
    Embedder (pipeline.embed)          ->  (B, D) features per Batch
    InOrder                            ->  VideoRecords in item order, each as soon as it and those before it are done

A unit is a frame (H, W, 3) for image backbones, a clip (T, H, W, 3) for video backbones, or the L + 1 frames of
a flow stack (L + 1, H, W, 3) for --modality flow (pipeline.flow turns them into flows after rebatching). A worker
sends a clip (or stack) as soon as it is cut and frames in windows of at most pipeline.decode.WINDOW, so at most one
clip or window per video (plus the DataLoader's prefetch) is in memory.

DecodeWorkers iterates the DataLoader with every wait bounded: no worker, dead, stuck or out of shared memory, can
make the main process wait forever, and a signal reaches it within a second.
"""
from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from featstore import VideoRecord
from featstore.errors import FramecacheError
from pipeline.decode import (Clip, ClipSampling, ClipStream, DecodeError, FrameStream, Geometry, Sampling,
                             StackSampling, StackStream, VideoInfo, decode_image, no_motion)
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
class Fault:
    """A worker that cannot send its frames (shared memory full): the run cannot go on with workers."""
    reason: str


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

    def __init__(self, items: list[Item], sampling: Sampling | ClipSampling | StackSampling, geometry: Geometry,
                 seek: str = "never"):
        self.items, self.sampling, self.geometry, self.seek = items, sampling, geometry, seek
        self.board: Board | None = None  # set by DecodeWorkers before the workers start

    def __iter__(self) -> Iterator[Rows | Done | Fault]:
        worker = get_worker_info()
        if worker is None:
            for slot in range(len(self.items)):
                yield from self.video(slot)
            return
        board = self.board or Board(worker.num_workers)
        board.post(worker.id, IDLE)
        for slot in range(worker.id, len(self.items), worker.num_workers):
            if not (yield from self._sent(slot, worker.id, board)):
                return  # it sent a Fault: another video would only fail the same way (or leave a segment behind)
        board.post(worker.id, FINISHED)

    def _sent(self, slot: int, worker: int, board: Board) -> Generator[Rows | Done | Fault, None, bool]:
        """One video as a worker sends it: the board says `slot` while the worker works on it, and each tensor is
        put in shared memory here, where a failure can be reported, not in the queue's feeder thread (which
        prints it and drops the message, leaving the main process waiting for it). False if it ended in a Fault."""
        board.post(worker, slot)
        for message in self.video(slot):
            if isinstance(message, Rows) and (why := share_units(message.units)):
                yield Fault(why)
                return False
            board.post(worker, IDLE)
            yield message
            board.post(worker, slot)
        board.post(worker, IDLE)
        return True

    def video(self, slot: int) -> Iterator[Rows | Done]:
        item = self.items[slot]
        try:
            if item.kind == "image":
                info = yield from self._image(slot, item)
            elif isinstance(self.sampling, ClipSampling):
                info = yield from self._clips(slot, item)
            elif isinstance(self.sampling, StackSampling):
                info = yield from self._stacks(slot, item)
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

    def _stacks(self, slot: int, item: Item):
        stream = StackStream(item.path, self.sampling, self.geometry)
        for stack in stream:
            yield _clip_rows(slot, stack)
        return stream.info

    def _image(self, slot: int, item: Item):
        if isinstance(self.sampling, StackSampling):
            raise no_motion(item.path, "--modality flow embeds")
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


def share_units(units: torch.Tensor) -> str:
    """Move `units` into shared memory; '' when done, else why not (naming the setting to change). A worker calls
    it before sending: a failure in the queue's feeder thread would only be printed, and the message lost."""
    try:
        units.share_memory_()
    except RuntimeError as e:
        # torch leaves the segment it failed to fill in /dev/shm: removed here, nothing else would
        if named := re.search(r"</(torch_[\w.-]+)>", str(e)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", named[1]))
        return shared_memory_fix(str(e))
    return ""


def shared_memory_fix(error: str) -> str:
    """One line for a failure to put frames in shared memory: what ran out and what to do."""
    if "No space left" in error or "(28)" in error:
        return ("shared memory is full (/dev/shm, which decode workers pass frames through): raise --shm-size "
                "(docker run --shm-size 2g), free /dev/shm, or use --workers 0")
    if "too large" in error or "(27)" in error:
        return ("the file size limit (ulimit -f) stops decode workers passing frames through /dev/shm: raise it, "
                "or use --workers 0")
    return f"decode workers cannot pass frames through shared memory ({' '.join(error.split())}): use --workers 0"


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
        # no view of the units (even an empty one keeps their whole batch's memory alive until the video ends)
        self.spans.append(Rows(rows.slot, rows.units.new_empty(0), rows.frame_index, rows.frame_end, rows.time_s,
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

    def fail(self, slot: int, reason: str) -> VideoRecord:
        """Hand on video `slot` as failed now, out of order (its decode worker was lost: the run ends here)."""
        self.pending.pop(slot, None)
        record = PendingVideo(self.items[slot], done=Done(slot, error=reason)).record()
        self.sink(record)
        return record

    def finish(self, done: Done) -> list[VideoRecord]:
        """Mark a video done; returns the records handed on because of it."""
        self._video(done.slot).done = done
        out = []
        while self.next in self.pending and self.pending[self.next].done is not None:
            out.append(self.pending.pop(self.next).record())
            self.sink(out[-1])
            self.next += 1
        return out


# --- decode workers, watched ----------------------------------------------------------------------------------------

IDLE, FINISHED = -1, -2  # what a worker posts on the board besides the slot it works on
POLL_S = 1.0     # longest single wait for the workers: liveness is checked and signals are handled this often
STALL_S = 60.0   # a worker on one item whose CPU time has not moved this long is stuck (a file that does not answer)
GRACE_S = 2.0    # how long a stopped worker may take to exit before it is killed


class DecodeWorkerError(FramecacheError):
    """The decode workers cannot go on (shared memory full, a worker lost between items); nothing of theirs is
    lost: the finished videos are saved and a rerun continues."""


class WorkerLost(FramecacheError, RuntimeError):
    """Decode workers died or hung while decoding items: those items failed, with `reason`, and the run ends."""

    def __init__(self, lost: dict[int, str]):
        super().__init__("; ".join(lost.values()))
        self.lost = lost  # slot -> reason


class Board:
    """What each decode worker is doing, in memory shared with the main process: its pid and the slot of the item
    it works on (IDLE while it waits for the main process, FINISHED once it has no item left)."""

    def __init__(self, workers: int):
        self.cells = multiprocessing.RawArray("q", [0, IDLE] * workers)  # (pid, slot) per worker

    def post(self, worker: int, slot: int) -> None:
        self.cells[2 * worker], self.cells[2 * worker + 1] = os.getpid(), slot

    def workers(self) -> list[tuple[int, int, int]]:
        """(worker, pid, slot) of the workers that have started."""
        cells = self.cells[:]
        return [(w, cells[2 * w], cells[2 * w + 1]) for w in range(len(cells) // 2) if cells[2 * w]]


def _cpu_ticks(pid: int) -> int | None:
    """CPU time a process has used, in clock ticks (None where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
    except (OSError, ValueError, IndexError):
        return None


class DecodeWorkers:
    """The messages of a DataLoader over a DecodeStream, each wait bounded by the loader's `timeout` (POLL_S).

    Between waits the workers are watched: one that died, or that has worked on one item while its CPU time stood
    still for `stall_s`, raises WorkerLost naming that item; one that cannot put frames in shared memory raises
    DecodeWorkerError with the fix. `close` ends the workers within seconds whatever they are doing. Without
    workers (num_workers=0) it is the loader's own iterator. `rerun` ends the messages: how the command goes on.
    The loader's dataset gets the `board` its workers post on (DecodeStream, or any dataset that posts likewise)."""

    def __init__(self, loader: DataLoader, stall_s: float = STALL_S, rerun: str = "rerun the same command"):
        self.loader, self.stall_s, self.rerun = loader, stall_s, rerun
        self.board = Board(loader.num_workers) if loader.num_workers else None
        self._it: Iterator | None = None
        self._children: list = []  # the worker processes (multiprocessing.Process)
        self._seen: list | None = None  # (pid, slot, CPU ticks) of the working workers when last polled
        self._still_since = 0.0

    def __iter__(self) -> "DecodeWorkers":
        if self._it is None:  # the workers start now and fill their prefetch queue while the model builds
            self._start()
        return self

    def __next__(self) -> Rows | Done:
        self._seen = None  # the clock of a stall runs while the main process waits, not while it embeds
        while True:
            try:
                message = next(self._it)
            except RuntimeError as e:  # a poll that timed out, or torch saying a worker died
                if (lost := self.lost(e)) is not None:
                    raise lost from None
                if not str(e).startswith("DataLoader timed out"):
                    raise
                self._check_stall()
                continue
            if isinstance(message, Fault):
                raise DecodeWorkerError(message.reason)
            return message

    def _start(self) -> None:
        if self.board is not None:
            self.loader.dataset.board = self.board  # forked into the workers with the dataset
            # A decoder left to the garbage collector here still has its FFmpeg threads; freed in a forked worker,
            # which has none of them, it waits for them forever. Collected now, before the fork.
            gc.collect()
        failed, before = None, set(multiprocessing.active_children())
        try:
            self._it = iter(self.loader)
        except OSError as e:  # the loader's queues and semaphores live in /dev/shm too
            failed = e
        self._children = [p for p in multiprocessing.active_children() if p not in before]
        if failed is None:
            return
        fix = shared_memory_fix(str(failed))
        # dropping the error frees the half-built iterator, whose __del__ then fails with a traceback of its own
        hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
        try:
            del failed
        finally:
            sys.unraisablehook = hook
        raise DecodeWorkerError(fix)

    def lost(self, error: BaseException) -> WorkerLost | None:
        """What `error` (torch raises one wherever the main thread is when a worker dies) means for the run:
        WorkerLost for the items dead workers held, None when every worker lives. A worker that died holding no
        item raises DecodeWorkerError."""
        if isinstance(error, WorkerLost) or self.board is None:
            return error if isinstance(error, WorkerLost) else None
        alive = {p.pid for p in self._children if p.is_alive()}
        dead = [(w, pid, slot) for w, pid, slot in self.board.workers() if pid not in alive and slot != FINISHED]
        if not dead:
            return None
        said = " ".join(str(error).split())
        if not any(slot >= 0 for *_, slot in dead):
            raise DecodeWorkerError(f"decode worker {dead[0][0]} died between items ({said}): {self.rerun} to go "
                                    "on") from None
        return WorkerLost({slot: f"decode worker {w} (pid {pid}) died while decoding it ({said}); the run stopped "
                                 f"here: {self.rerun} for the rest" for w, pid, slot in dead if slot >= 0})

    def _check_stall(self) -> None:
        working = [(w, pid, slot) for w, pid, slot in self.board.workers() if slot >= 0]
        seen = [(pid, slot, _cpu_ticks(pid)) for _, pid, slot in working]
        now = time.monotonic()
        if seen != self._seen or any(ticks is None for *_, ticks in seen):
            self._seen, self._still_since = seen, now
            return
        if now - self._still_since < self.stall_s:
            return
        if not working:  # every worker waits for the main process, which waits for them: a message was lost
            raise DecodeWorkerError(f"the decode workers sent nothing for {self.stall_s:.0f} s (a message of theirs "
                                    f"was lost, see the error above): {self.rerun}, or use --workers 0")
        raise WorkerLost({slot: f"decode worker {w} (pid {pid}) made no progress on it for {self.stall_s:.0f} s (a "
                                "file that does not answer, such as one on a stalled network mount); the run stopped "
                                f"here: {self.rerun} for the rest" for w, pid, slot in working})

    def close(self) -> None:
        """End the workers within seconds: those inside a video at once (they hold nothing to save), the others as
        the DataLoader ends them; any that does not end is killed."""
        if self._it is None or self.board is None:
            self._it = None
            return
        slots = {pid: slot for _, pid, slot in self.board.workers()}
        busy = [p for p in self._children if slots.get(p.pid, IDLE) >= 0]  # in our generator: holding no torch lock
        for p in busy:
            p.terminate()
        _ended(busy)
        shutdown = getattr(self._it, "_shutdown_workers", None)  # what the iterator's __del__ would do, now
        if shutdown is not None:
            # bounded: a worker that died inside a queue operation leaves that queue's lock held for good, and
            # torch's shutdown would wait on it forever
            done = threading.Thread(target=shutdown, daemon=True)
            done.start()
            done.join(GRACE_S)
        self._it = None
        _ended(self._children)


def _ended(processes: list) -> None:
    """Wait up to GRACE_S for `processes` to exit; kill those that do not (stuck where SIGTERM cannot reach)."""
    deadline = time.monotonic() + GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            try:
                p.kill()
                p.join(GRACE_S)
            except RuntimeError:  # torch's SIGCHLD handler reports the kill as a crashed worker: it is not one
                p.join(GRACE_S)
