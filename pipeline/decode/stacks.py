"""Frames for flow stacks: each frame the sampling keeps (`StackSampling.sampling`, the RGB path's own rule) with the
`length` frames decoded after it, cut from the stream of decoded frames while they come, so at most length + 1 frames
of a video are held (and converted only where a stack needs them).

A position within `length` frames of the video's end takes the video's last length + 1 frames (a video shorter than
that repeats its last one, which is zero flow); its row keeps the position's own index and time, so a flow store's
rows carry the same frame_index and time_s as an RGB store's of the same sampling. Decoding is sequential (--seek does
not apply: every frame after a position is needed).
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from pipeline.decode.clips import Clip
from pipeline.decode.container import (DecodeError, _check_file, _count_packets, _demux_count, _FrameReader,
                                       _no_frames, _no_timestamps, _nominal_rate, _opened)
from pipeline.decode.conversion import Geometry, _Converter, quarter_turns
from pipeline.decode.frames import VideoInfo, _duration, _frame_time, _measured_fps, _picker
from pipeline.decode.sampling import Sampling, SamplingError, _check_positive_int, sample_indices


def no_motion(path, wanted_by: str) -> DecodeError:
    """The one line for a still image where flow is wanted (`wanted_by`: "--modality flow embeds", ...)."""
    return DecodeError(f"failed to sample {path}: a still image has no motion, which {wanted_by}; give it videos")


@dataclass(frozen=True)
class StackSampling:
    """Where flow stacks start (the frames `sampling` keeps) and how many flows each holds (`length`: it needs
    length + 1 consecutive decoded frames)."""
    sampling: Sampling
    length: int

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, Sampling):
            raise SamplingError("flow stacks start at sampled frames (--every, --frames, --fps), not at clips")
        _check_positive_int("--flow-stack", self.length)


class _Held:
    """A decoded frame kept while a stack may still need it; converted once, the first time one does."""

    def __init__(self, frame: av.VideoFrame, index: int, time_s: float, time_end_s: float):
        self.frame, self.index, self.time_s, self.time_end_s = frame, index, time_s, time_end_s
        self.image: np.ndarray | None = None

    def rgb(self, convert: _Converter) -> np.ndarray:
        if self.image is None:
            self.image, self.frame = convert(self.frame), None
        return self.image


class StackStream:
    """The frame stacks of one video as Clips of length + 1 frames, decoded while they are iterated; `info` is set
    once iteration has ended. every/fps stream; frames=K picks from the packet count and holds its K stacks until
    decoding confirms the count (as FrameStream does). Raises DecodeError."""

    def __init__(self, path: str | os.PathLike, stacks: StackSampling, geometry: Geometry):
        self.path, self.stacks, self.geometry = os.fspath(path), stacks, geometry
        self.info: VideoInfo | None = None

    def __iter__(self) -> Iterator[Clip]:
        _check_file(self.path)
        s = self.stacks.sampling
        if s.frames is None:
            yield from self._pass(None)
            return
        counted = _count_packets(self.path)
        held = list(self._pass(sample_indices(counted, s)))
        if self.info.n_frames != counted:
            held = list(self._pass(sample_indices(self.info.n_frames, s)))
        yield from held

    def _pass(self, picks: np.ndarray | None) -> Iterator[Clip]:
        s, length = self.stacks.sampling, self.stacks.length
        limit = s.max_frames if picks is None else None  # frames=K already capped its picks
        with _opened(self.path) as (container, stream):
            reader, rate, pick = _FrameReader(container, stream), _nominal_rate(stream), _picker(s, picks)
            convert, window = _Converter(self.geometry), deque(maxlen=length + 1)
            pending: deque[_Held] = deque()  # sampled positions still waiting for their following frames
            n, kept, t_first, t_last, turns, size, stopped = 0, 0, math.nan, math.nan, 0, (0, 0), False
            for frame in reader:
                t = _frame_time(frame, n, rate)
                if n == 0:
                    turns, t_first = quarter_turns(frame), t
                    size = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
                held = _Held(frame, n, t, t + _duration(frame, rate))
                window.append(held)
                if (limit is None or kept < limit) and pick(n, t):
                    pending.append(held)
                    kept += 1
                if pending and pending[0].index + length == n:  # the window is that position and its followers
                    yield self._stack(pending.popleft(), list(window), convert)
                n, t_last = n + 1, t
                if limit is not None and kept >= limit and not pending:
                    stopped = True
                    break
            n_frames = reader.packets + _demux_count(container, stream) if stopped else n
        if n == 0:
            raise _no_frames(self.path, reader.error)
        if kept == 0:
            raise _no_timestamps(self.path)
        for position in pending:  # near the end: the video's last frames, padded if it is shorter than a stack
            tail = list(window)
            yield self._stack(position, tail + [tail[-1]] * (length + 1 - len(tail)), convert)
        self.info = VideoInfo(_measured_fps(n, t_first, t_last, rate), n_frames, size[0], size[1], 90 * turns)

    @staticmethod
    def _stack(position: _Held, frames: list[_Held], convert: _Converter) -> Clip:
        images = np.stack([f.rgb(convert) for f in frames])  # (L + 1, size, size, 3) uint8
        return Clip(images, position.index, frames[-1].index + 1, position.time_s, frames[-1].time_end_s)
