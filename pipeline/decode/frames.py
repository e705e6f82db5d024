"""Frame streams: the sampled frames of one video, decoded once and converted only where sampled, in windows
(`FrameStream`) or at once (`decode_video`, `decode_chosen`, `decode_image`), with their timestamps."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps

from pipeline.decode.container import (_AV_ERRORS, DecodeError, _check_file, _count_packets, _demux_count,
                                       _FrameReader, _no_frames, _no_timestamps, _nominal_rate, _opened, _reason)
from pipeline.decode.conversion import Geometry, _Converter, _scale, image_rgb, quarter_turns
from pipeline.decode.sampling import Sampling, SamplingError, _FpsPicker, sample_indices
from pipeline.decode.seek import SEEK_MODES, SEEK_WORTH, StreamIndex, _NotExact, _Seeker, read_index
from pipeline.decode.torchcodec_frames import TorchcodecVideo, indexed_video

WINDOW = 64  # sampled frames per window: what decoding holds of one video at most (beside the DataLoader prefetch)


@dataclass
class DecodedVideo:
    """The sampled frames of one video and what decoding measured about it."""

    frames: np.ndarray       # (T, size, size, 3) uint8 RGB
    frame_index: np.ndarray  # (T,) int64, 0-based position in decode order of each sampled frame
    time_s: np.ndarray       # (T,) float64, pts * time_base (index / nominal fps where a frame has no pts)
    fps: float               # measured: (frames - 1) / (t_last - t_first); the stream's nominal rate if unmeasurable
    n_frames: int            # frames decoded, not the header's claim (see decode_video for max_frames)
    width: int               # source frame size as displayed (after `rotation`)
    height: int
    time_end_s: np.ndarray | None = None  # (T,) float64, end of each sampled frame: its time + its duration
    rotation: int = 0        # degrees counter-clockwise applied from the display matrix (phone videos): 0/90/180/270


@dataclass
class VideoInfo:
    """What decoding measured about a video (see DecodedVideo)."""

    fps: float
    n_frames: int
    width: int
    height: int
    rotation: int = 0  # see DecodedVideo


@dataclass
class FrameWindow:
    """Consecutive sampled frames of one video (see DecodedVideo for the fields)."""

    frames: np.ndarray
    frame_index: np.ndarray
    time_s: np.ndarray
    time_end_s: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def decode_video(path: str | os.PathLike, sampling: Sampling, geometry: Geometry, seek: str = "never") -> DecodedVideo:
    """Decode the first video stream of `path` and return only the sampled frames, resized and cropped, at once
    (`FrameStream` gives them in windows, which is what long videos want).

    A truncated or partly corrupt file gives the frames that could be decoded. `frames=K` picks from the packet
    count (demuxed, not decoded); if decoding finds a different count, the pick is redone against the true count.
    With `max_frames` under every/fps, decoding stops at the M-th kept frame and the rest of the stream is only
    demuxed, so `n_frames` then counts packets for that remainder. `seek` as in FrameStream. Raises DecodeError
    for unreadable input."""
    stream = FrameStream(path, sampling, geometry, seek=seek)
    return _joined(list(stream), stream.info)


def _joined(windows: list[FrameWindow], info: VideoInfo) -> DecodedVideo:
    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(w, name) for w in windows])

    return DecodedVideo(frames=column("frames"), frame_index=column("frame_index"), time_s=column("time_s"),
                        fps=info.fps, n_frames=info.n_frames, width=info.width, height=info.height,
                        rotation=info.rotation, time_end_s=column("time_end_s"))


def decode_chosen(path: str | os.PathLike, choose: Callable[[int, float], np.ndarray],
                  geometry: Geometry) -> DecodedVideo:
    """Decode the frames that `choose(n_frames, nominal_fps)` picks (frame positions, any order, repeats allowed;
    the result holds each picked frame once, ascending). Fine-tuning samples new positions every epoch this way.

    `choose` must be a pure function of its arguments: like `frames=K`, it is called on the packet count and again
    on the decoded count when the two differ. Raises DecodeError for unreadable input."""
    path = os.fspath(path)
    _check_file(path)
    with _opened(path) as (container, stream):
        counted, rate = _demux_count(container, stream), _nominal_rate(stream)
    stream = FrameStream(path, Sampling(), geometry)
    windows = stream.picked(counted, lambda n: np.unique(np.clip(np.asarray(choose(n, rate), dtype=np.int64), 0,
                                                                   max(n - 1, 0))))
    return _joined(windows, stream.info)


def decode_image(path: str | os.PathLike, geometry: Geometry) -> DecodedVideo:
    """One image as a one-frame video (frame_index [0], time_s [0.0], fps 0.0), EXIF rotation applied."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            rgb = image_rgb(ImageOps.exif_transpose(img), path)
    # PIL reports some corrupt PNG chunks as SyntaxError.
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError(f"failed to open {path}: {_reason(e)}") from e
    frame = _scale(rgb, geometry)
    return DecodedVideo(frames=np.array(frame[None]), frame_index=np.zeros(1, dtype=np.int64),  # own, writable
                        time_s=np.zeros(1, dtype=np.float64), fps=0.0, n_frames=1, width=rgb.shape[1],
                        height=rgb.shape[0], time_end_s=np.zeros(1, dtype=np.float64))


class FrameStream:
    """The sampled frames of one video, decoded while they are iterated, in windows of at most `window` frames;
    `info` is set once iteration has ended, `decoded` counts the frames decoded, `seeks` the seeks made.

    every/fps stream: a 10-minute video holds no more than a 10-second one. frames=K picks from the packet count
    and holds its K frames until decoding confirms the count (then windows). `seek`: 'never' decodes every frame;
    'always' seeks to the keyframe before each sampled frame wherever that skips packets; 'auto' does so when the
    plan decodes at most SEEK_WORTH of the frames. Seeking numbers frames from the packets (pipeline.decode.seek),
    checks every decoded frame against them, and falls back to sequential decoding where they could differ, so the
    same frames (indices, times, pixels) come out either way. Raises DecodeError."""

    def __init__(self, path: str | os.PathLike, sampling: Sampling, geometry: Geometry, seek: str = "never",
                 window: int = WINDOW):
        if seek not in SEEK_MODES:
            raise SamplingError(f"--seek must be one of {', '.join(SEEK_MODES)}; got {seek!r}")
        self.path, self.sampling, self.geometry = os.fspath(path), sampling, geometry
        self.seek, self.window = seek, window
        self.info: VideoInfo | None = None
        self.decoded = self.seeks = 0
        self._given: list[tuple[int, float]] = []  # (index, time) of the frames a seek pass gave before falling back

    def __iter__(self) -> Iterator[FrameWindow]:
        _check_file(self.path)
        if self.geometry.decoder != "pyav":
            yield from self._torchcodec()
            return
        plan = None
        if self.seek != "never":
            with _opened(self.path) as opened:
                plan = self._seek_plan(*opened)
                if isinstance(plan, list):  # auto said no after a few packets: decode on from them, one open
                    yield from self._sequential(None, opened, plan)
                    return
        if plan is not None:
            try:
                yield from self._seeking(*plan)
                return
            except _NotExact:
                pass  # continued sequentially below, after the frames already given
        if self.sampling.frames is None:
            yield from self._sequential(None)
            return
        yield from self.picked(_count_packets(self.path), lambda n: sample_indices(n, self.sampling))

    def picked(self, counted: int, pick: Callable[[int], np.ndarray]) -> list[FrameWindow]:
        """The frames `pick(n)` names among n = `counted` packets, decoded in one pass and held; where decoding
        finds another count (rare: the packet count was wrong), picked again from the decoded count."""
        held = list(self._sequential(pick(counted)))
        if self.info.n_frames != counted:
            held = list(self._sequential(pick(self.info.n_frames)))
        return held

    def _sequential(self, picks: np.ndarray | None, opened: tuple | None = None,
                    demuxed: list[av.Packet] = ()) -> Iterator[FrameWindow]:
        """Decode every frame (of `opened`, from its `demuxed` packets on, or of the file opened anew)."""
        skip_through = self._given[-1][0] if self._given else -1
        with contextlib.nullcontext(opened) if opened else _opened(self.path) as (container, stream):
            reader = _FrameReader(container, stream, demuxed)
            limit = self.sampling.max_frames if picks is None else None  # frames=K already capped its picks
            taken = _Pass(_picker(self.sampling, picks), _Converter(self.geometry), _nominal_rate(stream), limit,
                          skip_through)
            stopped_early = False
            for frame in reader:
                self.decoded += 1
                if not taken.add(frame):
                    stopped_early = True
                    break
                if len(taken.window) >= self.window:
                    yield taken.window.take()
            n_frames = reader.packets + _demux_count(container, stream) if stopped_early else taken.n
        if taken.n == 0:
            raise _no_frames(self.path, reader.error)
        if taken.kept == 0:
            raise _no_timestamps(self.path)
        if self._given and list(zip(taken.skipped.index, taken.skipped.times)) != self._given:
            raise DecodeError(f"failed to decode {self.path}: seeking and sequential decoding number its frames "
                              "differently; use --seek never")
        self.info = taken.info(n_frames)
        if len(taken.window):
            yield taken.window.take()

    def _seek_plan(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
                   ) -> tuple[StreamIndex, np.ndarray] | list[av.Packet] | None:
        """(index, frames to give) where seeking goes ahead; None to decode sequentially; under `auto`, the packets
        read when the first 2 sampling intervals of them hold a single keyframe (too few to seek between: then
        decoding goes on from them, in this container; --frames K, which counts all packets first, excepted)."""
        packets = container.demux(stream)
        interval = self._interval(stream)
        if self.seek == "auto" and interval:
            try:
                head = list(itertools.islice(packets, 2 * interval))
            except _AV_ERRORS:
                return None  # sequential decoding, in a fresh container, reports it
            if sum(p.is_keyframe for p in head if p.size) < 2:
                return head if self.sampling.frames is None else None
            packets = itertools.chain(head, packets)
        index = read_index(stream, packets)
        if index is None:
            return None
        targets = self._targets(index)
        if self.seek == "auto" and index.planned_decodes(targets) > SEEK_WORTH * len(index):
            return None
        return index, targets

    def _targets(self, index: StreamIndex) -> np.ndarray:
        """The frames the sampling keeps among those `index` lists."""
        s = self.sampling
        if s.fps is not None:
            pick = _FpsPicker(s.fps)
            targets = np.asarray([i for i, t in enumerate(index.times) if pick(i, t)], dtype=np.int64)
        elif s.every is not None:
            targets = np.arange(0, len(index), s.every, dtype=np.int64)
        else:
            targets = sample_indices(len(index), s)
        return targets[:s.max_frames]

    def _torchcodec(self) -> Iterator[FrameWindow]:
        """The sampled frames decoded by torchcodec at the index's frame numbers; PyAV's sequential pass where the
        packets cannot number the frames (read_index), and for the rest of the video where torchcodec disagrees."""
        video, rate = indexed_video(self.path, self.geometry.decoder)
        if video is not None:
            try:
                yield from self._indexed(video, self._targets(video.index), rate)
                return
            except _NotExact:
                pass  # the frames already given are skipped by the sequential pass
        if self.sampling.frames is None:
            yield from self._sequential(None)
        else:
            yield from self.picked(_count_packets(self.path), lambda n: sample_indices(n, self.sampling))

    def _indexed(self, video: TorchcodecVideo, targets: np.ndarray, rate: float) -> Iterator[FrameWindow]:
        index, kept = video.index, _Collected()
        for i, rgb in video.frames(targets):
            self.decoded += 1
            kept.add(_scale(rgb, self.geometry), i, index.times[i], index.times[i] + index.duration_s(i, rate))
            if len(kept) >= self.window:
                yield self._give(kept)
        seen = targets[-1] + 1 if len(targets) == self.sampling.max_frames else len(index)
        self.info = VideoInfo(_measured_fps(seen, index.times[0], index.times[seen - 1], rate), len(index),
                              video.width, video.height, video.rotation)
        if len(kept):
            yield self._give(kept)

    def _interval(self, stream: av.video.stream.VideoStream) -> int | None:
        """Frames between sampled frames, as the headers suggest (None where they do not say)."""
        s, rate = self.sampling, _nominal_rate(stream)
        if s.every is not None:
            return s.every
        if s.fps is not None:
            return max(1, round(rate / s.fps)) if rate else None
        return max(1, stream.frames // s.frames) if stream.frames else None

    def _seeking(self, index: StreamIndex, targets: np.ndarray) -> Iterator[FrameWindow]:
        with _opened(self.path) as (container, stream):
            rate, convert, kept = _nominal_rate(stream), _Converter(self.geometry), _Collected()
            first = None
            for i, frame in _Seeker(container, stream, index, self).frames(targets):
                if frame.time != index.times[i]:
                    raise _NotExact
                first = frame if first is None else first
                kept.add(convert(frame), i, frame.time, frame.time + _duration(frame, rate))
                if len(kept) >= self.window:
                    yield self._give(kept)
        turns = quarter_turns(first)
        size = (first.height, first.width) if turns % 2 else (first.width, first.height)
        # As sequential decoding measures it: a pass that stops at the M-th kept frame has seen frames up to it.
        seen = targets[-1] + 1 if len(targets) == self.sampling.max_frames else len(index)
        self.info = VideoInfo(_measured_fps(seen, index.times[0], index.times[seen - 1], rate), len(index),
                              size[0], size[1], 90 * turns)
        if len(kept):
            yield self._give(kept)

    def _give(self, kept: _Collected) -> FrameWindow:
        window = kept.take()
        self._given += zip(window.frame_index.tolist(), window.time_s.tolist())
        return window


def _picker(sampling: Sampling, picks: np.ndarray | None) -> Callable[[int, float], bool]:
    if picks is not None:
        wanted = set(picks.tolist())
        return lambda index, time_s: index in wanted
    if sampling.fps is not None:
        return _FpsPicker(sampling.fps)
    return lambda index, time_s: index % sampling.every == 0


class _Collected:
    """Sampled frames collected until a window is full."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.index: list[int] = []
        self.times: list[float] = []
        self.ends: list[float] = []

    def add(self, image: np.ndarray, index: int, time_s: float, time_end_s: float) -> None:
        self.frames.append(image)
        self.index.append(index)
        self.times.append(time_s)
        self.ends.append(time_end_s)

    def __len__(self) -> int:
        return len(self.frames)

    def take(self) -> FrameWindow:
        window = FrameWindow(np.stack(self.frames), np.asarray(self.index, dtype=np.int64),
                             np.asarray(self.times, dtype=np.float64), np.asarray(self.ends, dtype=np.float64))
        self.__init__()
        return window


class _Pass:
    """One sequential pass over the frames: each goes through the sampling rule and only kept frames are converted.
    Frames kept at or before `skip_through` are counted, not converted (a seek pass already gave them)."""

    def __init__(self, pick: Callable[[int, float], bool], convert: _Converter, rate: float, limit: int | None,
                 skip_through: int = -1):
        self.pick, self.convert, self.rate, self.limit, self.skip_through = pick, convert, rate, limit, skip_through
        self.kept, self.window, self.skipped = 0, _Collected(), _Collected()
        self.n, self.t_first, self.t_last, self.source_size, self.rotation = 0, math.nan, math.nan, (0, 0), 0

    def add(self, frame: av.VideoFrame) -> bool:
        """Take one decoded frame; False once the cap on kept frames is reached."""
        t = _frame_time(frame, self.n, self.rate)
        if self.n == 0:
            turns = quarter_turns(frame)
            self.t_first, self.rotation = t, 90 * turns
            self.source_size = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        if self.pick(self.n, t):
            self.kept += 1
            image = self.convert(frame) if self.n > self.skip_through else None
            (self.window if image is not None else self.skipped).add(image, self.n, t, t + _duration(frame, self.rate))
        self.n, self.t_last = self.n + 1, t
        return self.limit is None or self.kept < self.limit

    def info(self, n_frames: int) -> VideoInfo:
        return VideoInfo(_measured_fps(self.n, self.t_first, self.t_last, self.rate), n_frames,
                         self.source_size[0], self.source_size[1], self.rotation)


def _measured_fps(n: int, t_first: float, t_last: float, rate: float) -> float:
    span = t_last - t_first
    return (n - 1) / span if n > 1 and span > 0 else rate


def _duration(frame: av.VideoFrame, rate: float) -> float:
    """How long a frame is shown, seconds: its own duration where the container has one, else 1 / nominal rate."""
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    return 1.0 / rate if rate else 0.0


def _frame_time(frame: av.VideoFrame, n: int, rate: float) -> float:
    if frame.time is not None:
        return frame.time
    return n / rate if rate else math.nan  # no pts (some raw streams): the nominal rate is the best guess left
