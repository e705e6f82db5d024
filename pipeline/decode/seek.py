"""Seeking: a stream's frames numbered from its packets alone, the decoding a seek plan saves, and the seeker that
decodes the sampled frames from the keyframes before them, checking each against the packets.

Sequential decoding numbers frames by their position in presentation order. The packets give the same numbering
without decoding (frame i is the packet with the i-th smallest pts) when every packet is one frame: each has a
pts, no two share one, none is flagged discard or corrupt, and the stream starts on a keyframe. `read_index`
returns None for any other stream, and such a stream is decoded sequentially. What the packets claim is still
checked against every frame decoded while seeking (`_Seeker`), and `FrameStream` falls back to sequential decoding
on any surprise.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

from pipeline.decode.container import _AV_ERRORS

SEEK_MODES = ("auto", "always", "never")  # the --seek choices (cli.py reads them here)
# `auto` seeks when the plan decodes at most this share of the frames. Measured (bench/seek.py): a seek costs
# ~11 ms, about six decoded 720p frames, so any real saving pays; the margin covers the index pass. Before that,
# `auto` reads two sampling intervals of packets: a single keyframe among them and it decodes on from them.
SEEK_WORTH = 0.75


@dataclass(frozen=True)
class StreamIndex:
    """A stream's frames in presentation order, from a demux pass (no decoding)."""

    pts: np.ndarray         # (n,) int64, ascending: frame i has pts[i]
    times: list[float]      # (n,) seconds, pts * time_base as PyAV's frame.time computes it
    decode_pos: np.ndarray  # (n,) int64: frame i's packet position in decode order
    key_pos: np.ndarray     # decode positions of the keyframes, ascending
    key_pts: np.ndarray     # their pts
    durations: np.ndarray   # (n,) int64: frame i's packet duration in time_base units (0: the packet has none)
    time_base: Fraction

    def duration_s(self, frame: int, rate: float) -> float:
        """How long frame `frame` is shown, seconds, as decoding says it (frames.py _duration): its packet's
        duration, else 1 / nominal rate."""
        if self.durations[frame] > 0:
            return float(int(self.durations[frame]) * self.time_base)
        return 1.0 / rate if rate else 0.0

    def __len__(self) -> int:
        return len(self.pts)

    def frame_of(self, pts: int | None) -> int | None:
        """The index of the frame with this pts, None if no packet has it."""
        if pts is None:
            return None
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def start_for(self, frame: int) -> int:
        """Position in `key_pos` of the keyframe to decode from for `frame`: the last one before it in decode order
        that is not shown after it (an open GOP's leading frames need the keyframe before)."""
        k = int(np.searchsorted(self.key_pos, self.decode_pos[frame], side="right")) - 1
        while k > 0 and self.key_pts[k] > self.pts[frame]:
            k -= 1
        return k

    def planned_decodes(self, targets: np.ndarray) -> int:
        """Frames decoding `targets` (ascending) takes when it seeks wherever that skips packets (reorder delay
        aside): the number `auto` weighs against decoding all of them."""
        pos, decoded = -1, 0  # pos: decode position of the last packet fed
        for frame in targets:
            need, start = int(self.decode_pos[frame]), int(self.key_pos[self.start_for(frame)])
            if start > pos + 1:
                decoded, pos = decoded + need - start + 1, need
            elif need > pos:
                decoded, pos = decoded + need - pos, need
        return decoded


def read_index(stream: av.video.stream.VideoStream, packets: Iterable[av.Packet]) -> StreamIndex | None:
    """The index of `stream` from its `packets` (a demux of it, from the start), or None where packets may not
    number frames as decoding does (see the module doc)."""
    pts, keys, durations = [], [], []
    try:
        for packet in packets:
            if packet.size == 0:
                continue  # the flush packet
            if packet.pts is None or packet.is_discard or packet.is_corrupt:
                return None
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
            durations.append(packet.duration or 0)
    except (av.error.FFmpegError, OSError):
        return None  # a truncated or damaged file: sequential decoding has the last word
    if not pts or not keys[0] or len(set(pts)) != len(pts) or stream.time_base is None:
        return None
    by_decode = np.asarray(pts, dtype=np.int64)
    order = np.argsort(by_decode, kind="stable")
    key_pos = np.flatnonzero(keys).astype(np.int64)
    base = Fraction(stream.time_base)
    return StreamIndex(pts=by_decode[order], times=[float(int(p) * base) for p in by_decode[order]],
                       decode_pos=order.astype(np.int64), key_pos=key_pos, key_pts=by_decode[key_pos],
                       durations=np.asarray(durations, dtype=np.int64)[order], time_base=base)


class _NotExact(Exception):
    """Seeking met something that sequential decoding might number or decode differently."""


class _Counts(Protocol):
    """Where the seeker counts its work (a FrameStream)."""

    decoded: int  # frames decoded
    seeks: int    # seeks made


class _Seeker:
    """Decodes given frames of a stream, in order, seeking to a keyframe wherever that skips packets; raises
    _NotExact where the decoder disagrees with the index: a frame it does not list, a listed frame that does not come
    out (every frame decoded since a jump must be the next one the index lists), a seek that lands elsewhere than
    on a listed keyframe at or before the one asked for."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 index: StreamIndex, counts: _Counts):
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
