"""Sampling rules: which frames (`Sampling`) or clips (`ClipSampling`) of a video to keep, checked once, with messages
that name the flag."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from featstore.errors import FramecacheError

# Slack when comparing a frame's time with the next --fps tick: pts * time_base is not exact in floating point.
_TICK_EPS = 1e-6


class SamplingError(FramecacheError, ValueError):
    """A sampling or geometry setting that cannot be honoured; the message names the flag."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video to keep. Exactly one rule; with none given, every frame (every=1) is kept."""

    every: int | None = None       # frames 0, N, 2N, ...
    frames: int | None = None      # K frames spread uniformly over the decoded frames
    fps: float | None = None       # the first frame at or after each tick t0 + k/F (t0: first frame's time); VFR-safe
    max_frames: int | None = None  # keep at most M: the first M for every/fps, K = min(K, M) for frames

    def __post_init__(self) -> None:
        rules = {"--every": self.every, "--frames": self.frames, "--fps": self.fps}
        given = {flag: value for flag, value in rules.items() if value is not None}
        if len(given) > 1:
            raise SamplingError("choose one sampling rule out of --every, --frames and --fps; got "
                             + " and ".join(f"{flag} {value}" for flag, value in given.items()))
        if not given:
            object.__setattr__(self, "every", 1)  # no rule means every frame
        for flag, value in {"--every": self.every, "--frames": self.frames, "--max-frames": self.max_frames}.items():
            if value is not None:
                _check_positive_int(flag, value)
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real)
                                     or not math.isfinite(self.fps) or self.fps <= 0):
            raise SamplingError(f"--fps must be a positive number of frames per second, got {self.fps!r}")
        _normalize(self, int, "every", "frames", "max_frames")  # plain Python numbers: the config goes to JSON
        _normalize(self, float, "fps")


@dataclass(frozen=True)
class ClipSampling:
    """Which clips of a video to embed: clips of `clip_len` consecutive (decoded, or --fps resampled) frames, starting
    every `clip_stride` frames, or `clips` K of them placed uniformly. n >= L frames give floor((n - L) / S) + 1 clips;
    a shorter video gives one clip, its last frame repeated up to L (the row's span says how many frames are real)."""

    clip_len: int = 16
    clip_stride: int | None = None  # frames between clip starts; None = clip_len (no overlap)
    clips: int | None = None        # K uniformly placed clips instead of a stride
    fps: float | None = None        # resample to F frames per second first (first frame at or after each tick)

    def __post_init__(self) -> None:
        for flag, value in {"--clip-len": self.clip_len, "--clip-stride": self.clip_stride,
                            "--clips": self.clips}.items():
            if value is not None:
                _check_positive_int(flag, value)
        if self.clip_stride is not None and self.clips is not None:
            raise SamplingError(f"choose --clip-stride or --clips, not both (got --clip-stride {self.clip_stride} "
                             f"and --clips {self.clips})")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real)
                                     or not math.isfinite(self.fps) or self.fps <= 0):
            raise SamplingError(f"--fps must be a positive number of frames per second, got {self.fps!r}")
        _normalize(self, int, "clip_len", "clip_stride", "clips")
        _normalize(self, float, "fps")

    @property
    def stride(self) -> int:
        return self.clip_stride or self.clip_len


def _check_positive_int(flag: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SamplingError(f"{flag} must be a positive integer, got {value!r}")


def _normalize(config: object, kind: type, *fields: str) -> None:
    for name in fields:
        if getattr(config, name) is not None:
            object.__setattr__(config, name, kind(getattr(config, name)))


def sample_indices(n_frames: int, sampling: Sampling) -> np.ndarray:
    """Indices (int64, ascending) that the every/frames rule keeps out of `n_frames` frames.

    Frame 0 is always kept when there is one. The fps rule depends on timestamps, not on the count, so it is
    applied by `decode_video` and raises ValueError here."""
    if sampling.fps is not None:
        raise ValueError("--fps sampling depends on frame timestamps, so only decode_video can apply it")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if sampling.every is not None:
        return np.arange(0, n_frames, sampling.every, dtype=np.int64)[:sampling.max_frames]
    k = min(sampling.frames, sampling.max_frames or sampling.frames)
    return np.unique(np.linspace(0, n_frames - 1, k).round().astype(np.int64))


class _FpsPicker:
    """Keeps the first frame at or after each tick k / fps, ticks counted from the first frame's time, so it
    follows timestamps (variable frame rate) and skips the ticks that fall in a gap."""

    def __init__(self, fps: float):
        self.fps, self.t0, self.next_tick = fps, None, 0

    def __call__(self, index: int, time_s: float) -> bool:
        if math.isnan(time_s):
            return False
        self.t0 = time_s if self.t0 is None else self.t0
        ticks = (time_s - self.t0) * self.fps
        if ticks < self.next_tick - _TICK_EPS:
            return False
        self.next_tick = math.floor(ticks + _TICK_EPS) + 1
        return True
