"""Decoding: one video in, only its sampled frames out, already at the model's input size, with their timestamps.

This is the hot path. Each video is decoded once with PyAV (FFmpeg) using the decoder's own threads; every frame is
decoded (the codec needs them) but only the sampled ones are converted (RGB in swscale, then PIL's bilinear resize,
exactly as the weights' own transforms do), so memory holds the sampled frames and nothing else.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps

from featstore.errors import FramecacheError

# What FFmpeg and the OS raise for unreadable input; anything else is a bug and should surface as one.
_AV_ERRORS = (av.error.FFmpegError, OSError)
# Slack when comparing a frame's time with the next --fps tick: pts * time_base is not exact in floating point.
_TICK_EPS = 1e-6
_CROPS = ("center", "square", "none")


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
            raise ValueError("choose one sampling rule out of --every, --frames and --fps; got "
                             + " and ".join(f"{flag} {value}" for flag, value in given.items()))
        if not given:
            object.__setattr__(self, "every", 1)  # no rule means every frame
        for flag, value in {"--every": self.every, "--frames": self.frames, "--max-frames": self.max_frames}.items():
            if value is not None:
                _check_positive_int(flag, value)
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real)
                                     or not math.isfinite(self.fps) or self.fps <= 0):
            raise ValueError(f"--fps must be a positive number of frames per second, got {self.fps!r}")
        _normalize(self, int, "every", "frames", "max_frames")  # plain Python numbers: the config goes to JSON
        _normalize(self, float, "fps")


@dataclass(frozen=True)
class Geometry:
    """How a frame becomes a size x size RGB image (torchvision's resize-then-center-crop recipe by default)."""

    size: int = 224        # output is size x size RGB
    resize: int = 256      # crop='center': the shorter side is resized to this, then the center size x size is cut
    crop: str = "center"   # 'center' | 'square' (shorter side -> size, center square) | 'none' (squash to size x size)

    def __post_init__(self) -> None:
        if self.crop not in _CROPS:
            raise ValueError(f"--crop must be one of {', '.join(_CROPS)}; got {self.crop!r}")
        _check_positive_int("--size", self.size)
        _check_positive_int("resize", self.resize)
        _normalize(self, int, "size", "resize")
        if self.crop == "center" and self.resize < self.size:
            raise ValueError(f"with --crop center the resize ({self.resize}) must be at least --size ({self.size}); "
                             "lower --size or use --crop square")


def _check_positive_int(flag: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


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
    width: int               # source frame size
    height: int


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


def decode_video(path: str | os.PathLike, sampling: Sampling, geometry: Geometry) -> DecodedVideo:
    """Decode the first video stream of `path` once and return only the sampled frames, resized and cropped.

    A truncated or partly corrupt file gives the frames that could be decoded. `frames=K` picks from the packet
    count (demuxed, not decoded); if decoding finds a different count, the pick is redone against the true count.
    With `max_frames` under every/fps, decoding stops at the M-th kept frame and the rest of the stream is only
    demuxed, so `n_frames` then counts packets for that remainder. Raises DecodeError for unreadable input."""
    path = os.fspath(path)
    _check_file(path)
    if sampling.frames is None:
        return _decode_pass(path, sampling, geometry, picks=None)
    counted = _count_packets(path)
    video = _decode_pass(path, sampling, geometry, picks=sample_indices(counted, sampling))
    if video.n_frames != counted:  # the packet count was wrong (rare): pick again from the decoded count
        video = _decode_pass(path, sampling, geometry, picks=sample_indices(video.n_frames, sampling))
    return video


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
    picks = np.unique(np.clip(np.asarray(choose(counted, rate), dtype=np.int64), 0, max(counted - 1, 0)))
    video = _decode_pass(path, Sampling(), geometry, picks=picks)
    if video.n_frames != counted:
        picks = np.unique(np.clip(np.asarray(choose(video.n_frames, rate), dtype=np.int64), 0, video.n_frames - 1))
        video = _decode_pass(path, Sampling(), geometry, picks=picks)
    return video


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
    width, height = _resized_size(rgb.width, rgb.height, geometry)
    frame = _center_crop(np.asarray(rgb.resize((width, height), Image.BILINEAR)), geometry)
    return DecodedVideo(frames=np.array(frame[None]), frame_index=np.zeros(1, dtype=np.int64),  # own, writable
                        time_s=np.zeros(1, dtype=np.float64), fps=0.0, n_frames=1, width=rgb.width, height=rgb.height)


# --- geometry ---------------------------------------------------------------------------------------------------


def _resized_size(width: int, height: int, geometry: Geometry) -> tuple[int, int]:
    """(width, height) to scale to before the center crop; int() truncation matches torchvision's Resize."""
    if geometry.crop == "none":
        return geometry.size, geometry.size
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
    """Sampled frame -> (size, size, 3) uint8: RGB at source size in swscale, resized by PIL, cropped by slicing.

    The resize is PIL's bilinear, which is exactly what the weights' own `transforms()` do to a PIL image, so our
    pixels equal torchvision's recipe bit for bit. swscale's bilinear scaler lands within ~0.13 levels of it, yet
    the int8 MobileNetV2 turns that into embeddings at cosine 0.986 only; PIL costs ~0.5 ms more per SAMPLED frame
    (beside ~12 ms of backbone), which is cheap for exactness. One reformatter per video keeps swscale's context
    between frames; threads=1 because the decoder's threads already use the cores."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = _resized_size(frame.width, frame.height, self.geometry)
        rgb = self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        scaled = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        return np.ascontiguousarray(_center_crop(scaled, self.geometry))


# --- opening and reading -------------------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())  # one line, whatever FFmpeg or PIL put in it


def _check_file(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DecodeError(f"failed to open {path}: {_reason(e)}") from e
    if size == 0:
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

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream):
        self.container, self.stream = container, stream
        self.packets, self.error = 0, None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        try:
            for packet in self.container.demux(self.stream):
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


class _Pass:
    """One pass over the frames: each goes through the sampling rule and only kept frames are converted."""

    def __init__(self, pick: Callable[[int, float], bool], convert: _Converter, rate: float, limit: int | None):
        self.pick, self.convert, self.rate, self.limit = pick, convert, rate, limit
        self.frames: list[np.ndarray] = []
        self.index: list[int] = []
        self.times: list[float] = []
        self.n, self.t_first, self.t_last, self.source_size = 0, math.nan, math.nan, (0, 0)

    def add(self, frame: av.VideoFrame) -> bool:
        """Take one decoded frame; False once the cap on kept frames is reached."""
        t = frame.time
        if t is None:  # no pts (some raw streams): the nominal rate is the best guess left
            t = self.n / self.rate if self.rate else math.nan
        if self.n == 0:
            self.t_first, self.source_size = t, (frame.width, frame.height)
        if self.pick(self.n, t):
            self.frames.append(self.convert(frame))
            self.index.append(self.n)
            self.times.append(t)
        self.n, self.t_last = self.n + 1, t
        return self.limit is None or len(self.frames) < self.limit

    def measured_fps(self) -> float:
        span = self.t_last - self.t_first
        return (self.n - 1) / span if self.n > 1 and span > 0 else self.rate


def _decode_pass(path: str, sampling: Sampling, geometry: Geometry, picks: np.ndarray | None) -> DecodedVideo:
    with _opened(path) as (container, stream):
        reader = _FrameReader(container, stream)
        limit = sampling.max_frames if picks is None else None  # frames=K already capped its picks
        taken = _Pass(_picker(sampling, picks), _Converter(geometry), _nominal_rate(stream), limit)
        stopped_early = False
        for frame in reader:
            if not taken.add(frame):
                stopped_early = True
                break
        n_frames = reader.packets + _demux_count(container, stream) if stopped_early else taken.n
    return _result(path, taken, n_frames, reader.error)


def _result(path: str, taken: _Pass, n_frames: int, error: BaseException | None) -> DecodedVideo:
    if taken.n == 0:
        why = _reason(error) if error is not None else "the video stream holds no decodable frame"
        raise DecodeError(f"failed to decode {path}: {why}")
    if not taken.frames:
        raise DecodeError(f"failed to sample {path}: its frames have no timestamps, which --fps needs; "
                          "use --every or --frames")
    return DecodedVideo(frames=np.stack(taken.frames), frame_index=np.asarray(taken.index, dtype=np.int64),
                        time_s=np.asarray(taken.times, dtype=np.float64), fps=taken.measured_fps(),
                        n_frames=n_frames, width=taken.source_size[0], height=taken.source_size[1])
