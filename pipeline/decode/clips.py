"""Clips: the clips of one video (`ClipSampling`), cut from the stream of decoded frames while they come, so at most
one clip's frames are held."""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.decode.container import (_AV_ERRORS, DecodeError, _check_file, _count_packets, _FrameReader, _no_frames,
                                       _nominal_rate, _opened)
from pipeline.decode.conversion import Geometry, _Converter, _scale, quarter_turns
from pipeline.decode.frames import VideoInfo, _duration, _frame_time, _measured_fps
from pipeline.decode.sampling import ClipSampling, _FpsPicker
from pipeline.decode.seek import _NotExact
from pipeline.decode.torchcodec_frames import TorchcodecVideo, indexed_video


@dataclass
class Clip:
    """One clip: `clip_len` frames at model size, and the span of decoded frames it covers."""

    frames: np.ndarray  # (L, size, size, 3) uint8 RGB; a short video's last frame is repeated up to L
    frame_index: int    # first decoded frame of the span
    frame_end: int      # one past its last real frame (frame_end - frame_index < L: padded)
    time_s: float       # time of the first frame, seconds
    time_end_s: float   # end of the last real frame: its time + its duration


@dataclass
class _Kept:
    """A frame that passed the --fps resampling; `image` is None when no clip needs its pixels."""
    image: np.ndarray | None
    index: int
    time_s: float
    time_end_s: float


class _ClipCutter:
    """Cuts clips out of the stream of kept frames, holding the last `length` of them and nothing more.

    `starts` lists where clips begin (K uniform clips); None means every `stride` frames for as long as frames come."""

    def __init__(self, length: int, stride: int, starts: list[int] | None):
        self.length, self.stride, self.starts = length, stride, starts
        self.window: deque[_Kept] = deque(maxlen=length)
        self.cut = 0  # clips emitted so far

    def _start(self, k: int) -> int | None:
        if self.starts is None:
            return k * self.stride
        return self.starts[k] if k < len(self.starts) else None

    def wants(self, j: int) -> bool:
        """Whether kept frame j lies in a clip still to come (only those are converted)."""
        k = self.cut
        while (start := self._start(k)) is not None and start <= j:
            if j < start + self.length:
                return True
            k += 1
        return False

    def push(self, j: int, kept: _Kept) -> Clip | None:
        self.window.append(kept)
        start = self._start(self.cut)
        if start is None or j != start + self.length - 1:
            return None
        self.cut += 1
        return self._clip(list(self.window))

    def finish(self) -> Clip | None:
        """A video shorter than one clip gives one clip, padded by repeating its last frame."""
        if self.cut or not self.window or any(f.image is None for f in self.window):
            return None  # (frames no clip wanted: a K-clip pass from a wrong count, which is cut again)
        self.cut = 1
        real = list(self.window)
        return self._clip(real + [real[-1]] * (self.length - len(real)), real)

    @staticmethod
    def _clip(frames: list[_Kept], real: list[_Kept] | None = None) -> Clip:
        real = real or frames
        return Clip(np.stack([f.image for f in frames]), real[0].index, real[-1].index + 1, real[0].time_s,
                    real[-1].time_end_s)


def uniform_starts(n_kept: int, sampling: ClipSampling) -> list[int]:
    """Starts of K clips spread evenly over n kept frames (rounded, duplicates dropped); [0] when n < L."""
    if n_kept < sampling.clip_len:
        return [0]
    return sorted({int(x) for x in np.linspace(0, n_kept - sampling.clip_len, sampling.clips).round()})


def clip_count(n_kept: int, sampling: ClipSampling) -> int:
    """Clips that `n_kept` frames give: floor((n - L) / S) + 1, K uniform ones, or one padded clip."""
    if sampling.clips is not None:
        return len(uniform_starts(n_kept, sampling))
    return (n_kept - sampling.clip_len) // sampling.stride + 1 if n_kept >= sampling.clip_len else int(n_kept > 0)


class ClipStream:
    """The clips of one video, decoded while they are iterated; `info` is set once iteration has ended.

    With a stride, clips come out as soon as their last frame is decoded and at most one clip's frames are held,
    so a 10-minute video costs the memory of a 10-second one. K uniform clips need the frame count first: it is
    taken from the packets (demuxed, not decoded) and the K clips (at most K x L frames) are held until decoding
    confirms it; if the decoded count differs, they are cut again from the true count. Raises DecodeError."""

    def __init__(self, path: str | os.PathLike, sampling: ClipSampling, geometry: Geometry):
        self.path, self.sampling, self.geometry = os.fspath(path), sampling, geometry
        self.info: VideoInfo | None = None
        self._kept = 0

    def __iter__(self) -> Iterator[Clip]:
        _check_file(self.path)
        if self.geometry.decoder != "pyav":
            video, rate = indexed_video(self.path, self.geometry.decoder)
            if video is not None:
                yield from self._torchcodec(video, rate)
                return
        yield from self._pyav()

    def _pyav(self) -> Iterator[Clip]:
        if self.sampling.clips is None:
            yield from self._pass(None)
            return
        counted = _count_kept(self.path, self.sampling.fps)
        clips = list(self._pass(uniform_starts(counted, self.sampling)))
        if self._kept != counted:
            clips = list(self._pass(uniform_starts(self._kept, self.sampling)))
        yield from clips

    def _pass(self, starts: list[int] | None) -> Iterator[Clip]:
        s = self.sampling
        with _opened(self.path) as (container, stream):
            reader, rate = _FrameReader(container, stream), _nominal_rate(stream)
            pick = _FpsPicker(s.fps) if s.fps is not None else None
            convert, cutter = _Converter(self.geometry), _ClipCutter(s.clip_len, s.stride, starts)
            n, kept, t_first, t_last, size = 0, 0, math.nan, math.nan, (0, 0)
            for frame in reader:
                t = _frame_time(frame, n, rate)
                if n == 0:
                    turns = quarter_turns(frame)
                    t_first, size = t, (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
                if pick is None or pick(n, t):
                    image = convert(frame) if cutter.wants(kept) else None
                    clip = cutter.push(kept, _Kept(image, n, t, t + _duration(frame, rate)))
                    kept += 1
                    if clip is not None:
                        yield clip
                n, t_last = n + 1, t
        if n == 0:
            raise _no_frames(self.path, reader.error)
        if kept == 0:
            raise DecodeError(f"failed to sample {self.path}: its frames have no timestamps, which --fps needs")
        tail = cutter.finish()
        if tail is not None:
            yield tail
        self._kept = kept
        self.info = VideoInfo(_measured_fps(n, t_first, t_last, rate), n, size[0], size[1], 90 * turns)


    def _torchcodec(self, video: TorchcodecVideo, rate: float) -> Iterator[Clip]:
        """The clips of an indexed video, their frames decoded by torchcodec (only those some clip holds). Where
        torchcodec disagrees with the index before the first clip, the PyAV pass takes over; after it, the video
        fails naming --decoder pyav (a clip stream cannot take back what it gave)."""
        s, index = self.sampling, video.index
        pick = _FpsPicker(s.fps) if s.fps is not None else None
        kept = [i for i, t in enumerate(index.times) if pick is None or pick(i, t)]
        starts = uniform_starts(len(kept), s) if s.clips is not None else None
        wanted = _in_clips(len(kept), s, starts)
        images = video.frames(np.asarray(kept, dtype=np.int64)[wanted])
        cutter, given = _ClipCutter(s.clip_len, s.stride, starts), 0
        try:
            for j, i in enumerate(kept):
                image = _scale(next(images)[1], self.geometry) if wanted[j] else None
                clip = cutter.push(j, _Kept(image, i, index.times[i], index.times[i] + index.duration_s(i, rate)))
                if clip is not None:
                    given += 1
                    yield clip
        except _NotExact:
            if given:
                raise DecodeError(f"failed to decode {self.path}: torchcodec and the packets number its frames "
                                  "differently; use --decoder pyav") from None
            yield from self._pyav()
            return
        tail = cutter.finish()
        if tail is not None:
            yield tail
        self._kept = len(kept)
        self.info = VideoInfo(_measured_fps(len(index), index.times[0], index.times[-1], rate), len(index),
                              video.width, video.height, video.rotation)


def _in_clips(n_kept: int, sampling: ClipSampling, starts: list[int] | None) -> np.ndarray:
    """(n_kept,) bool: which kept frames some clip to be cut holds (a short video: all, in its padded clip)."""
    if starts is None:
        starts = range(0, n_kept - sampling.clip_len + 1, sampling.stride) if n_kept >= sampling.clip_len else [0]
    wanted = np.zeros(n_kept, dtype=bool)
    for start in starts:
        wanted[start:start + sampling.clip_len] = True
    return wanted


def _count_kept(path: str, fps: float | None) -> int:
    """Frames a pass will keep, from the packets alone: all of them, or those --fps picks by packet time."""
    if fps is None:
        return _count_packets(path)
    with _opened(path) as (container, stream):
        times = []
        try:
            for packet in container.demux(stream):
                if packet.size > 0 and packet.pts is not None:
                    times.append(float(packet.pts * packet.time_base))
        except _AV_ERRORS:
            pass  # a truncated file: decoding has the last word
    pick = _FpsPicker(fps)
    return sum(pick(i, t) for i, t in enumerate(sorted(times)))
