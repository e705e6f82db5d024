"""Decoding: one video in, only its sampled frames (or clips) out, already at the model's input size, with their
timestamps.

This is the hot path. Each video is decoded once with PyAV (FFmpeg) using the decoder's own threads; every frame is
decoded (the codec needs them) but only the sampled ones are converted (RGB in swscale, then the resize the weights'
own transforms do: PIL bilinear for image models, torch bilinear for video models), so memory holds the sampled
frames and nothing else. Clips stream: `ClipStream` holds at most one clip's frames of a video at a time.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image, ImageOps

from featstore.errors import FramecacheError
from pipeline.seek import SEEK_MODES, SEEK_WORTH, StreamIndex, read_index
from pipeline.sources import special_file

# What FFmpeg and the OS raise for unreadable input; anything else is a bug and should surface as one.
_AV_ERRORS = (av.error.FFmpegError, OSError)
# Slack when comparing a frame's time with the next --fps tick: pts * time_base is not exact in floating point.
_TICK_EPS = 1e-6
CROPS = ("center", "square", "none")  # the --crop choices (cli.py reads them here)
_RESAMPLES = ("pil", "tensor")
# The --resize-engine choices (cli.py reads them here). 'exact' is the weights' own recipe; the others resize in the
# decode worker, trading exactness for speed (numbers and the default in docs/extract.md, "Decoding cost").
RESIZE_ENGINES = ("exact", "swscale", "torch", "swscale-yuv")


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
class Geometry:
    """How a frame becomes a size x size RGB image (torchvision's resize-then-center-crop recipe by default)."""

    size: int = 224        # output is size x size RGB
    resize: int | tuple[int, int] = 256  # crop='center': the shorter side is resized to this (or the frame to this
    #                                       exact (height, width)), then the center size x size is cut
    crop: str = "center"   # 'center' | 'square' (shorter side -> size, center square) | 'none' (squash to size x size)
    resample: str = "pil"  # 'pil': PIL bilinear (image presets) | 'tensor': torch bilinear, no antialias (video preset)
    engine: str = "exact"  # who resizes: 'exact' (the `resample` recipe above) or one of RESIZE_ENGINES' others

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise SamplingError(f"--crop must be one of {', '.join(CROPS)}; got {self.crop!r}")
        if self.engine not in RESIZE_ENGINES:
            raise SamplingError(f"--resize-engine must be one of {', '.join(RESIZE_ENGINES)}; got {self.engine!r}")
        if self.resample not in _RESAMPLES:
            raise SamplingError(f"resample must be one of {', '.join(_RESAMPLES)}; got {self.resample!r}")
        _check_positive_int("--size", self.size)
        sides = self.resize if isinstance(self.resize, (tuple, list)) else (self.resize,)
        for side in sides:
            _check_positive_int("resize", side)
        _normalize(self, int, "size")
        object.__setattr__(self, "resize", tuple(int(x) for x in sides) if len(sides) == 2 else int(sides[0]))
        if self.crop == "center" and min(sides) < self.size:
            raise SamplingError(f"with --crop center the resize ({self.resize}) must be at least --size ({self.size}); "
                             "lower --size or use --crop square")


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


class DecodeError(FramecacheError, RuntimeError):
    """A video or image that cannot be read; the one-line message names the file and says why."""


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


_decoder_threads = 0  # 0: FFmpeg decides; see set_decoder_threads


def set_decoder_threads(count: int) -> None:
    """Threads per decoder in this process (0 = FFmpeg's choice). DataLoader workers set 1: several processes
    decoding side by side already fill the cores, and one thread each decoded 11 % faster on 2 cores."""
    global _decoder_threads
    _decoder_threads = count


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


WINDOW = 64  # sampled frames per window: what decoding holds of one video at most (beside the DataLoader prefetch)


class _NotExact(Exception):
    """Seeking met something that sequential decoding might number or decode differently."""


class FrameStream:
    """The sampled frames of one video, decoded while they are iterated, in windows of at most `window` frames;
    `info` is set once iteration has ended, `decoded` counts the frames decoded, `seeks` the seeks made.

    every/fps stream: a 10-minute video holds no more than a 10-second one. frames=K picks from the packet count
    and holds its K frames until decoding confirms the count (then windows). `seek`: 'never' decodes every frame;
    'always' seeks to the keyframe before each sampled frame wherever that skips packets; 'auto' does so when the
    plan decodes at most SEEK_WORTH of the frames. Seeking numbers frames from the packets (pipeline.seek), checks
    every decoded frame against them, and falls back to sequential decoding where they could differ, so the same
    frames (indices, times, pixels) come out either way. Raises DecodeError."""

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
        s = self.sampling
        if s.fps is not None:
            pick = _FpsPicker(s.fps)
            targets = np.asarray([i for i, t in enumerate(index.times) if pick(i, t)], dtype=np.int64)
        elif s.every is not None:
            targets = np.arange(0, len(index), s.every, dtype=np.int64)
        else:
            targets = sample_indices(len(index), s)
        targets = targets[:s.max_frames]
        if self.seek == "auto" and index.planned_decodes(targets) > SEEK_WORTH * len(index):
            return None
        return index, targets

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


class _Seeker:
    """Decodes given frames of a stream, in order, seeking to a keyframe wherever that skips packets; raises
    _NotExact where the decoder disagrees with the index: a frame it does not list, a listed frame that does not come
    out (every frame decoded since a jump must be the next one the index lists), a seek that lands elsewhere than
    on a listed keyframe at or before the one asked for."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 index: StreamIndex, counts: FrameStream):
        self.container, self.stream, self.index, self.counts = container, stream, index, counts
        self.packets: Iterator[av.Packet] | None = None
        self.ready: deque[av.VideoFrame] = deque()  # decoded, not yet looked at, in presentation order
        self.pos = -1  # decode position of the last packet fed
        self.last: int | None = None  # index of the last frame that came out since the last jump

    def frames(self, targets: np.ndarray) -> Iterator[tuple[int, av.VideoFrame]]:
        for i in targets.tolist():
            key = self.index.start_for(i)
            start = int(self.index.key_pos[key])
            if self.packets is None or start > self.pos + 1:
                self._jump(start, int(self.index.key_pts[key]))
            yield i, self._find(i)

    def _jump(self, start: int, pts: int) -> None:
        if start > 0:
            self.container.seek(pts, stream=self.stream, backward=True)  # PyAV flushes the decoder too
            self.counts.seeks += 1
        self.packets, self.ready, self.pos = iter(self.container.demux(self.stream)), deque(), None
        self._feed()
        if self.pos is None or self.pos > start:
            raise _NotExact
        self.last = int(np.flatnonzero(self.index.decode_pos == self.pos)[0]) - 1  # the keyframe comes out first

    def _feed(self) -> bool:
        """Decode the next packet; False at the end of the stream (the decoder then flushed)."""
        packet = next(self.packets, None)
        try:
            if packet is None or packet.size == 0:  # the demuxer's empty last packet flushes the decoder
                frames = self.stream.decode(packet)  # (that packet, not None: its frames keep their time base)
            else:
                frame = self.index.frame_of(packet.pts)
                if frame is None or (self.pos is None and not packet.is_keyframe):
                    raise _NotExact
                self.pos = int(self.index.decode_pos[frame])
                frames = self.stream.decode(packet)
        except _AV_ERRORS as e:
            raise _NotExact from e
        self.counts.decoded += len(frames)
        self.ready.extend(frames)
        return packet is not None and packet.size > 0

    def _find(self, i: int) -> av.VideoFrame:
        want = int(self.index.pts[i])
        while True:
            while self.ready:
                frame = self.ready.popleft()
                if self.index.frame_of(frame.pts) != self.last + 1:
                    raise _NotExact
                self.last += 1
                if frame.pts == want:
                    return frame
            if not self._feed() and not self.ready:
                raise _NotExact


def decode_image(path: str | os.PathLike, geometry: Geometry) -> DecodedVideo:
    """One image as a one-frame video (frame_index [0], time_s [0.0], fps 0.0), EXIF rotation applied."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    # PIL reports some corrupt PNG chunks as SyntaxError.
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise DecodeError(f"failed to open {path}: {_reason(e)}") from e
    frame = _scale(np.asarray(rgb), geometry)
    return DecodedVideo(frames=np.array(frame[None]), frame_index=np.zeros(1, dtype=np.int64),  # own, writable
                        time_s=np.zeros(1, dtype=np.float64), fps=0.0, n_frames=1, width=rgb.width, height=rgb.height,
                        time_end_s=np.zeros(1, dtype=np.float64))


# --- geometry ---------------------------------------------------------------------------------------------------


def _resized_size(width: int, height: int, geometry: Geometry) -> tuple[int, int]:
    """(width, height) to scale to before the center crop; int() truncation matches torchvision's Resize."""
    if geometry.crop == "none":
        return geometry.size, geometry.size
    if geometry.crop == "center" and isinstance(geometry.resize, tuple):  # an exact (height, width), as (128, 171)
        return geometry.resize[1], geometry.resize[0]
    short = geometry.resize if geometry.crop == "center" else geometry.size
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _center_crop(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:  # (H, W, 3) -> (size, size, 3), a view
    if geometry.crop == "none":
        return rgb
    height, width, size = rgb.shape[0], rgb.shape[1], geometry.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return rgb[top:top + size, left:left + size]


class _Converter:
    """Sampled frame -> (size, size, 3) uint8, upright, resized by the geometry's engine, cropped by slicing.

    All engines first convert to RGB at source size in swscale except 'swscale-yuv', which converts and resizes in
    one swscale call (the cheapest, but its chroma is interpolated differently: cosine 0.996 to exact). Then
    'exact' does the weights' own resize (PIL bilinear for image presets, so our pixels equal torchvision's recipe
    bit for bit; torch bilinear for video presets), 'swscale' swscale's bilinear on the RGB frame and 'torch'
    torch's antialiased bilinear (the image presets' recipe on tensors), both within one level of PIL's. One
    reformatter per step and video keeps swscale's contexts between frames; threads=1 because the decoder's
    threads already use the cores."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        self.to_rgb, self.resizer = VideoReformatter(), VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        turns = quarter_turns(frame)  # upright first: the crop must see the frame as it is shown
        engine = self.geometry.engine
        if engine in ("exact", "torch"):
            rgb = self.to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
            return _scale(np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb, self.geometry)
        shown = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        width, height = _resized_size(*shown, self.geometry)
        if turns % 2:
            width, height = height, width  # swscale scales the frame as stored; it is turned afterwards
        if engine == "swscale":
            frame = self.to_rgb.reformat(frame, format="rgb24", threads=1)
        rgb = self.resizer.reformat(frame, width=width, height=height, format="rgb24", threads=1,
                                    interpolation=Interpolation.BILINEAR).to_ndarray()
        return np.ascontiguousarray(_center_crop(np.rot90(rgb, turns) if turns else rgb, self.geometry))


def _scale(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(H, W, 3) uint8 at source size -> (size, size, 3) uint8, resized the way the weights' preset does."""
    width, height = _resized_size(rgb.shape[1], rgb.shape[0], geometry)
    if geometry.resample == "pil" and geometry.engine != "torch":
        scaled = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        return np.ascontiguousarray(_center_crop(scaled, geometry))
    # The VideoClassification preset resizes uint8 frame tensors with torch's bilinear and antialias=False (kept by
    # torchvision to preserve the released accuracies); the same call on the same pixels gives the same pixels.
    # The 'torch' engine is the image presets' recipe on tensors: antialiased.
    import torch
    from torchvision.transforms import functional as tvf

    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    scaled = tvf.resize(chw, [height, width], interpolation=tvf.InterpolationMode.BILINEAR,
                        antialias=geometry.engine == "torch")
    return np.ascontiguousarray(_center_crop(scaled.permute(1, 2, 0).numpy(), geometry))


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show `frame` upright, from its display matrix (PyAV's `rotation` is
    counter-clockwise degrees, as FFmpeg's av_display_rotation_get). Angles between quarter turns are rounded to the
    nearest; a mirroring display matrix is not undone (phones record rotation only)."""
    return round((frame.rotation or 0) / 90) % 4


# --- opening and reading -------------------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())  # one line, whatever FFmpeg or PIL put in it


def _check_file(path: str) -> None:
    try:
        info = os.stat(path)
    except OSError as e:
        raise DecodeError(f"failed to open {path}: {_reason(e)}") from e
    if why := special_file(path):
        raise DecodeError(f"failed to open {path}: {why}")
    if info.st_size == 0 and stat.S_ISREG(info.st_mode):
        raise DecodeError(f"failed to open {path}: the file is empty (0 bytes)")


@contextmanager
def _opened(path: str) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    try:
        container = av.open(path, metadata_errors="ignore")
    except _AV_ERRORS as e:
        hint = " (corrupt, truncated, or not a video this FFmpeg can read)"
        raise DecodeError(f"failed to open {path}: {_reason(e)}"
                          f"{hint if isinstance(e, av.error.InvalidDataError) else ''}") from e
    try:
        if not container.streams.video:
            found = ", ".join(s.type for s in container.streams) or "none"
            raise DecodeError(f"failed to open {path}: no video stream (streams found: {found})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg, the GIL released
        if _decoder_threads:
            stream.codec_context.thread_count = _decoder_threads
        yield container, stream
    finally:
        container.close()


def _demux_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    count = 0
    try:
        for packet in container.demux(stream):
            count += packet.size > 0  # the last, empty packet only flushes the decoder
    except _AV_ERRORS:
        pass  # a truncated file: count what is there; decoding has the last word
    return count


def _count_packets(path: str) -> int:
    with _opened(path) as (container, stream):
        return _demux_count(container, stream)


class _FrameReader:
    """Every decodable frame of a stream, in presentation order. A corrupt packet (or the cut-off last packet of a
    truncated file) is skipped; a read error in the container ends the stream after flushing what the decoder
    holds. The last error is kept so that a file without a single decodable frame can say why."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 demuxed: list[av.Packet] = ()):
        self.container, self.stream, self.demuxed = container, stream, demuxed  # demuxed: read already, in order
        self.packets, self.error = 0, None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        try:
            for packet in itertools.chain(self.demuxed, self.container.demux(self.stream)):
                self.packets += packet.size > 0
                yield from self._decode(packet)
        except _AV_ERRORS as e:
            self.error = e
            yield from self._decode(None)

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self.stream.decode(packet)
        except _AV_ERRORS as e:
            self.error = e
            return []


# --- sampling ---------------------------------------------------------------------------------------------------


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


def _picker(sampling: Sampling, picks: np.ndarray | None) -> Callable[[int, float], bool]:
    if picks is not None:
        wanted = set(picks.tolist())
        return lambda index, time_s: index in wanted
    if sampling.fps is not None:
        return _FpsPicker(sampling.fps)
    return lambda index, time_s: index % sampling.every == 0


def _nominal_rate(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


@dataclass
class FrameWindow:
    """Consecutive sampled frames of one video (see DecodedVideo for the fields)."""

    frames: np.ndarray
    frame_index: np.ndarray
    time_s: np.ndarray
    time_end_s: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


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


def _no_frames(path: str, error: BaseException | None) -> DecodeError:
    why = _reason(error) if error is not None else "the video stream holds no decodable frame"
    return DecodeError(f"failed to decode {path}: {why}")


def _no_timestamps(path: str) -> DecodeError:
    return DecodeError(f"failed to sample {path}: its frames have no timestamps, which --fps needs; "
                       "use --every or --frames")


# --- clips --------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One clip: `clip_len` frames at model size, and the span of decoded frames it covers."""

    frames: np.ndarray  # (L, size, size, 3) uint8 RGB; a short video's last frame is repeated up to L
    frame_index: int    # first decoded frame of the span
    frame_end: int      # one past its last real frame (frame_end - frame_index < L: padded)
    time_s: float       # time of the first frame, seconds
    time_end_s: float   # end of the last real frame: its time + its duration


@dataclass
class VideoInfo:
    """What decoding measured about a video (see DecodedVideo)."""

    fps: float
    n_frames: int
    width: int
    height: int
    rotation: int = 0  # see DecodedVideo


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
            why = _reason(reader.error) if reader.error is not None else "the video stream holds no decodable frame"
            raise DecodeError(f"failed to decode {self.path}: {why}")
        if kept == 0:
            raise DecodeError(f"failed to sample {self.path}: its frames have no timestamps, which --fps needs")
        tail = cutter.finish()
        if tail is not None:
            yield tail
        self._kept = kept
        self.info = VideoInfo(_measured_fps(n, t_first, t_last, rate), n, size[0], size[1], 90 * turns)


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
