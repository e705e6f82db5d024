"""torchcodec as the second decoder (`--decoder torchcodec`, and `torchcodec-cuda` for NVDEC): the frames a
`StreamIndex` names, decoded by torchcodec and converted to upright RGB by it (its own swscale setup, or NVDEC's
colour conversion), so the streams in frames.py and clips.py give the same frame numbers, timestamps and, within
the conversion differences of two colour converters, the same pixels as with PyAV (docs/decoders.md).

The frame numbering is ours: the index read from the packets with PyAV (pipeline.decode.seek.read_index) is handed
to torchcodec as its frame mapping, so torchcodec does not scan the file again and frame i is the i-th pts in
presentation order, as sequential PyAV decoding numbers it. Every frame torchcodec returns is checked against that
index; a disagreement raises _NotExact and the stream falls back to PyAV for the rest of the video.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache

import numpy as np

from pipeline.decode import container
from pipeline.decode.container import DecodeError, _nominal_rate, _opened, _reason
from pipeline.decode.seek import StreamIndex, _NotExact, read_index

DECODERS = ("pyav", "torchcodec", "torchcodec-cuda")  # the --decoder choices besides auto (cli.py reads them here)
CHUNK = 16  # frames asked of torchcodec at once: one call amortizes its overhead, and holds 16 full-size frames
_TIME_SLACK = 1e-6  # seconds: torchcodec and PyAV both compute pts * time_base in doubles, by different routes


@cache
def decoder_unavailable(decoder: str) -> str | None:
    """Why `decoder` cannot run here (one line, with what to do), or None where it can."""
    if decoder == "pyav":
        return None
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads FFmpeg's shared libraries)
    except ImportError:
        return f'--decoder {decoder} needs torchcodec: pip install "framecache[torchcodec]"'
    except (RuntimeError, OSError) as e:  # installed, but FFmpeg's libraries are missing or of another version
        why = _reason(e).split(". ")[0][:160]
        return (f"--decoder {decoder}: torchcodec cannot load FFmpeg's libraries ({why}); install them (make "
                "install as root, or apt-get install ffmpeg) or use --decoder pyav")
    if decoder == "torchcodec-cuda":
        import torch

        if not torch.cuda.is_available():
            return f"--decoder {decoder} decodes on a CUDA GPU (NVDEC) and torch sees none: use --decoder torchcodec"
    return None


def _mapping(index: StreamIndex) -> str:
    """The index as torchcodec's custom frame mapping (ffprobe's -show_frames JSON): pts, duration, key_frame."""
    keys = set(index.key_pts.tolist())
    return json.dumps({"frames": [{"pts": int(p), "duration": int(d), "key_frame": int(p in keys)}
                                  for p, d in zip(index.pts.tolist(), index.durations.tolist())]})


def indexed_video(path: str, decoder: str) -> tuple[TorchcodecVideo | None, float]:
    """(the video opened by `decoder` with the index of its packets, or None where the packets cannot number its
    frames as decoding does; the stream's nominal rate)."""
    with _opened(path) as (opened, stream):
        index, rate = read_index(stream, opened.demux(stream)), _nominal_rate(stream)
    return (None if index is None else TorchcodecVideo(path, index, decoder)), rate


class TorchcodecVideo:
    """One video opened by torchcodec with our index; `width`, `height` as shown, `rotation` its applied degrees
    (counter-clockwise, 0/90/180/270)."""

    def __init__(self, path: str, index: StreamIndex, decoder: str):
        from torchcodec.decoders import VideoDecoder

        self.path, self.index = path, index
        device = "cuda" if decoder == "torchcodec-cuda" else "cpu"
        try:
            # threads as set_decoder_threads says (0: FFmpeg decides, in both libraries)
            self.decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=container._decoder_threads,
                                        device=device, custom_frame_mappings=_mapping(index))
        except (RuntimeError, ValueError) as e:
            raise DecodeError(f"failed to open {path} with torchcodec: {_reason(e)}; use --decoder pyav") from e
        meta = self.decoder.metadata
        self.width, self.height = int(meta.width), int(meta.height)
        self.rotation = int(round((meta.rotation or 0) / 90)) % 4 * 90

    def frames(self, targets: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(i, (H, W, 3) uint8 upright RGB) for each frame index in `targets` (ascending), decoded CHUNK at a time."""
        for start in range(0, len(targets), CHUNK):
            chunk = targets[start:start + CHUNK].tolist()
            try:
                batch = self.decoder.get_frames_at(chunk)
            except (RuntimeError, IndexError) as e:
                raise _NotExact from e
            shown = batch.pts_seconds.tolist()
            if any(abs(t - self.index.times[i]) > _TIME_SLACK for i, t in zip(chunk, shown)):
                raise _NotExact
            data = batch.data.cpu().numpy()  # (n, H, W, 3)
            yield from zip(chunk, data)
