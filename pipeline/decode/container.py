"""Opening a video and reading its frames: the file checks, the container and its first video stream, the packet
count, every decodable frame, and the one-line `DecodeError`s that name the file and say why."""
from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import av

from featstore.errors import FramecacheError
from pipeline.sources import special_file

# What FFmpeg and the OS raise for unreadable input; anything else is a bug and should surface as one.
_AV_ERRORS = (av.error.FFmpegError, OSError)


class DecodeError(FramecacheError, RuntimeError):
    """A video or image that cannot be read; the one-line message names the file and says why."""


_decoder_threads = 0  # 0: FFmpeg decides; see set_decoder_threads


def set_decoder_threads(count: int) -> None:
    """Threads per decoder in this process (0 = FFmpeg's choice). DataLoader workers set 1: several processes
    decoding side by side already fill the cores, and one thread each decoded 11 % faster on 2 cores."""
    global _decoder_threads
    _decoder_threads = count


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


def _nominal_rate(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _no_frames(path: str, error: BaseException | None) -> DecodeError:
    why = _reason(error) if error is not None else "the video stream holds no decodable frame"
    return DecodeError(f"failed to decode {path}: {why}")


def _no_timestamps(path: str) -> DecodeError:
    return DecodeError(f"failed to sample {path}: its frames have no timestamps, which --fps needs; "
                       "use --every or --frames")
