"""Shared fixtures: tiny real videos written with PyAV, whose frames say which frame they are; a tiny extracted
store and a head run on it (tiny_store, tiny_run); one torch thread for a module (one_thread).

Frame i of an index clip has channel 0 equal to i * STEP everywhere (a flat plane stays flat through any resize,
so the index survives every geometry), and gradients in channels 1 and 2 so that geometry mistakes show.
Session fixtures are made once; tests only read them. Plain helpers (the CLI, extract flags, manifests, store
comparison) are in helpers.py.
"""
import fcntl
import os
import shutil
import signal
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data.synth import codec_available, make_images, make_temporal_dataset, write_vfr_video, write_video

STEP = 8  # channel-0 level per frame index: 30 frames fit in 0..232, and +-3 levels of codec error still read back
N_FRAMES = 30
FPS = 25
VFR_TIMES = [0.0, 0.1, 0.15, 0.5, 0.52, 1.3, 1.31, 2.0]
# (file name, encoder, exact?) for the container/codec matrix; exact ones return the input bit for bit.
CONTAINERS = [("h264.mp4", "libx264rgb", True), ("ffv1.mkv", "ffv1", True), ("h264_yuv.mkv", "libx264", False),
              ("mpeg4.avi", "mpeg4", False), ("vp9.webm", "libvpx-vp9", True)]


def index_frames(n: int, height: int, width: int) -> np.ndarray:  # (n, height, width, 3) uint8
    yy, xx = np.mgrid[:height, :width]
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(n) * STEP)[:, None, None]
    frames[..., 1] = xx * 255 // max(width - 1, 1)
    frames[..., 2] = yy * 255 // max(height - 1, 1)
    return frames


def read_indices(frames: np.ndarray) -> np.ndarray:
    """Frame indices encoded in channel 0 of decoded frames (T, H, W, 3), read at the centre pixel."""
    h, w = frames.shape[1] // 2, frames.shape[2] // 2
    return np.round(frames[:, h, w, 0] / STEP).astype(np.int64)


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for start in range(0, int(seconds * rate), 1024):
            samples = np.sin(np.arange(start, start + 1024) / 10.0).astype(np.float32)[None]  # (1, 1024)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def truncate(src: Path, dst: Path, fraction: float = 0.4) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def index_clip(media) -> Path:
    """30 frames, 64x48, 25 fps, lossless H.264 (libx264rgb) in MP4."""
    return write_video(media / "index.mp4", index_frames(N_FRAMES, 48, 64), fps=FPS)


@pytest.fixture(scope="session")
def square_clip(media) -> tuple[Path, np.ndarray]:
    """A lossless 40x40 clip and the exact frames it holds."""
    frames = index_frames(12, 40, 40)
    return write_video(media / "square.mp4", frames, fps=FPS), frames


@pytest.fixture(scope="session")
def odd_clip(media) -> Path:
    """63x47: odd sizes, which 4:2:0 encoders refuse, so RGB H.264."""
    return write_video(media / "odd.mp4", index_frames(10, 47, 63), fps=FPS)


@pytest.fixture(scope="session")
def portrait_clip(media) -> Path:
    """47x63, taller than wide."""
    return write_video(media / "portrait.mp4", index_frames(10, 63, 47), fps=FPS)


@pytest.fixture(scope="session")
def offset_clip(media) -> Path:
    """12 frames every 40 ms whose first timestamp is 0.22 s, not 0 (as after a cut)."""
    return write_vfr_video(media / "offset.mkv", index_frames(12, 32, 32), [0.22 + 0.04 * i for i in range(12)])


@pytest.fixture(scope="session")
def short_clip(media) -> Path:
    return write_video(media / "short.mp4", index_frames(3, 32, 32), fps=FPS)


@pytest.fixture(scope="session")
def vfr_clip(media) -> Path:
    """8 frames at the irregular times VFR_TIMES (Matroska, lossless)."""
    return write_vfr_video(media / "vfr.mkv", index_frames(len(VFR_TIMES), 32, 32), VFR_TIMES)


@pytest.fixture(scope="session", params=CONTAINERS, ids=[c[0] for c in CONTAINERS])
def container_clip(request, media) -> tuple[Path, bool]:
    name, codec, exact = request.param
    if not codec_available(codec):
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    return write_video(media / name, index_frames(N_FRAMES, 48, 64), fps=FPS, codec=codec), exact


@pytest.fixture(scope="session")
def extra_packet_clip(media, index_clip) -> Path:
    """The index clip remuxed into Matroska with one garbage packet inserted after the 5th: the demuxer counts
    31 packets, the decoder gives 30 frames."""
    out = media / "extra_packet.mkv"
    with av.open(str(index_clip)) as src, av.open(str(out), "w") as dst:
        src_stream = src.streams.video[0]
        dst_stream = dst.add_stream_from_template(src_stream)
        packets = [p for p in src.demux(src_stream) if p.size > 0]
        for i, packet in enumerate(packets):
            if i == 5:
                garbage = av.Packet(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
                garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                garbage.stream = dst_stream
                dst.mux(garbage)
            packet.stream = dst_stream
            dst.mux(packet)
    return out


@pytest.fixture(scope="session")
def truncated_indexed_mp4(media) -> Path:
    """First 40% of an MP4 whose index (moov) is written first: the frames before the cut are decodable."""
    full = write_video(media / "faststart.mp4", index_frames(N_FRAMES, 48, 64), fps=FPS,
                       container_options={"movflags": "faststart"})
    return truncate(full, media / "truncated_faststart.mp4")


@pytest.fixture(scope="session")
def bad_inputs(media, index_clip) -> dict[str, Path]:
    """Inputs that must fail with DecodeError, by name."""
    rng = np.random.default_rng(0)
    (media / "empty.mp4").write_bytes(b"")
    (media / "random.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (media / "text.mp4").write_text("this is a text file with a video extension\n" * 20)
    (media / "a_folder.mp4").mkdir(exist_ok=True)
    return {
        "missing": media / "does_not_exist.mp4",
        "zero_bytes": media / "empty.mp4",
        "random_bytes": media / "random.mp4",
        "text_renamed": media / "text.mp4",
        # The MP4 muxer writes its index (moov) last, so the first 40% holds frames but no way to find them.
        "truncated_mp4": truncate(index_clip, media / "truncated.mp4"),
        "audio_only": write_audio_only(media / "audio_only.m4a"),
        "directory": media / "a_folder.mp4",
    }


@pytest.fixture(scope="session")
def images(media) -> Path:
    """Folder-per-class still images (disc/, square/), jpg and png."""
    return make_images(media / "images")


@pytest.fixture
def place(index_clip):
    """Copy the tiny index clip to the given paths (creating folders): real video files for layout tests."""
    def copy_to(*paths: Path) -> None:
        for path in paths:
            os.makedirs(path.parent, exist_ok=True)
            shutil.copyfile(index_clip, path)
    return copy_to


@pytest.fixture(scope="session")
def temporal_dataset(media) -> Path:
    """The synthetic grow/shrink/brighten/darken dataset, small: returns its manifest."""
    return make_temporal_dataset(media / "temporal", n_per_class=6, frames=6, size=32)


class HeldFile:
    """A regular file whose opening blocks, as on a network mount that stopped answering: a write lease makes every
    other process's open() wait until `release` (or the kernel's lease-break-time, 45 s by default)."""

    def __init__(self, path: Path):
        self.opened = threading.Event()  # set once another process tries to open it
        self._fd = os.open(path, os.O_RDONLY)
        fcntl.fcntl(self._fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lease: the blocked open goes on
            self._fd = None


@pytest.fixture
def hold():
    """hold(path) -> HeldFile; released at teardown. Skips where this filesystem or user cannot take leases."""
    held: list[HeldFile] = []
    previous = signal.signal(signal.SIGIO, lambda *_: [h.opened.set() for h in held])

    def take(path: Path) -> HeldFile:
        try:
            held.append(HeldFile(path))
        except OSError as e:
            pytest.skip(f"cannot take a file lease here ({e.strerror})")
        return held[-1]

    yield take
    for h in held:
        h.release()
    signal.signal(signal.SIGIO, previous)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (pytestmark = pytest.mark.usefixtures("one_thread")): tiny heads and tiny
    backbones gain nothing from a second thread, and on a busy CI machine its spin-waits cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """8 labelled clips c0..c7 (helpers.write_split_clips) extracted with helpers.tiny_config(dtype="float16");
    its manifest is tiny_store.parent / "m.csv". Tests read it and write elsewhere."""
    from helpers import tiny_config, write_split_clips
    from pipeline.extract import extract
    from pipeline.sources import load_source

    root = tmp_path_factory.mktemp("tiny")
    extract(load_source(write_split_clips(root, [f"c{i}.mkv" for i in range(8)])), root / "store",
            tiny_config(dtype="float16"))
    return root / "store"


@pytest.fixture(scope="session")
def tiny_run(tiny_store) -> Path:
    """`cli.py fit-head` of tiny_store: a linear head, 2 epochs. Tests read it and write elsewhere."""
    from helpers import invoke

    out = tiny_store.parent / "runs" / "lin"
    res = invoke("fit-head", tiny_store, "--epochs", "2", "--out", out)
    assert res.exit_code == 0, res.output
    return out
