"""How a run's backbone runs: precision, compiled or not, units per forward pass. `auto` decides from what
bench/backbone.py measured (pipeline/accel.py CPU_SPEED) and from the run's size, estimated from a few headers."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import torch

from pipeline import accel
from pipeline.accel import AccelError
from pipeline.backbones import Backbone, BackboneWeights
from pipeline.decode import ClipSampling, Sampling
from pipeline.device import resolve_precision
from pipeline.sources import Item, special_file

# Lanes were measured on 2 cores (bench/results/split_amx.json). A bigger CPU keeps one lane on every core until
# measured: one lane per core there would mean batches of 1 and as many in flight as cores, beside one decode worker.
MAX_LANES = 4
PROBED_ITEMS = 4  # headers read to estimate a run's size (a few ms each), only when auto must weigh a one-time cost
PROBE_S = 2.0     # a header not read by then counts 0 (a file that does not answer: a stalled network mount)


@dataclass(frozen=True)
class Speed:
    precision: str    # fp32 | bf16 | fp16 | int8
    compiled: bool    # torch.compile (inductor); int8 always is
    batch_size: int   # units per forward pass
    lanes: int = 1    # batches embedding at once, each in a thread with one intra-op thread (pipeline.lanes)


def speed_for(precision: str, compile: str, batch_size: int | None, backbone: Backbone | BackboneWeights,
              device: torch.device, todo: list[Item], sampling: Sampling | ClipSampling, cores: int = 1) -> Speed:
    """The Speed for the --precision / --compile / --batch-size asked for; `auto` picks int8 or compiling only
    where bench/backbone.py measured cosine >= 0.999 to fp32 and the time saved on this run exceeds the one-time
    cost. Eager models on a CPU of up to MAX_LANES `cores` run one lane per core (pipeline.lanes). --batch-size
    is honoured as given (per lane); otherwise accel.default_batch for the device and variant, split between the
    lanes."""
    size = RunSize(todo, sampling)
    chosen = resolve_precision(precision, device, backbone)
    if precision == "auto" and _auto_int8(backbone, device, size):
        chosen = "int8"
    compiled = _compiled(compile, chosen, backbone, device, size)
    variant = "int8" if chosen == "int8" else "compiled" if compiled else "eager"
    lanes = cores if device.type == "cpu" and variant == "eager" and not backbone.cpu_only and cores <= MAX_LANES \
        else 1
    batch = batch_size or (accel.lane_batch(backbone.name, backbone.is_video, device, lanes) if lanes > 1 else
                           accel.default_batch(backbone.name, backbone.is_video, device, variant))
    return Speed(chosen, compiled, batch, lanes)


def _compiled(compile: str, precision: str, backbone: Backbone, device: torch.device, size: RunSize) -> bool:
    if precision == "int8":
        if compile == "off":
            raise AccelError("--precision int8 always runs compiled (uncompiled it is reference code, slower than "
                             "bf16): drop --compile off")
        return True
    if compile == "on":
        if backbone.cpu_only:
            raise AccelError(f"--compile does not apply to {backbone.name} (torchvision's own int8 modules): "
                             "use --compile off")
        if device.type == "cpu":
            accel.check_compiler()
        return True
    if compile == "off" or device.type != "cpu" or backbone.cpu_only or backbone.is_video:
        return False
    if backbone.name not in accel.CPU_SPEED or not accel.has_compiler():
        return False
    return accel.compile_pays_back(backbone.name, size.units)


def _auto_int8(backbone: Backbone, device: torch.device, size: RunSize) -> bool:
    if not accel.int8_is_auto(backbone.name):
        return False
    try:  # what --precision int8 itself needs (a CPU with int8 instructions, an image backbone, torchao, g++)
        accel.check_int8(device, backbone.name, backbone.cpu_only, backbone.is_video)
    except AccelError:
        return False
    return accel.int8_pays_back(backbone.name, size.units)


@dataclass
class RunSize:
    """The run's size, estimated once and only if a decision needs it."""
    todo: list[Item]
    sampling: Sampling | ClipSampling

    @cached_property
    def units(self) -> int:
        return estimate_units(self.todo, self.sampling)


def estimate_units(todo: list[Item], sampling: Sampling | ClipSampling) -> int:
    """Frames (or clips) the run will embed: the mean over up to PROBED_ITEMS items spread over `todo`, read from
    container headers (no decoding), times the number of items. An unreadable header counts 0 (it fails later)."""
    if not todo:
        return 0
    probed = todo[::max(1, len(todo) // PROBED_ITEMS)][:PROBED_ITEMS]
    per_item = [_units_of(item, sampling) for item in probed]
    return int(sum(per_item) / len(per_item) * len(todo))


def _units_of(item: Item, sampling: Sampling | ClipSampling) -> float:
    if item.kind == "image":
        return 1.0
    if isinstance(sampling, Sampling) and sampling.frames:
        return float(sampling.frames)
    frames, seconds = _header(item.path)
    if isinstance(sampling, ClipSampling):
        return frames / sampling.stride if sampling.clips is None else float(sampling.clips)
    n = seconds * sampling.fps if sampling.fps else frames / (sampling.every or 1)
    return min(n, sampling.max_frames) if sampling.max_frames else n


def _header(path: str) -> tuple[float, float]:
    """(frames, seconds) a container's header claims; (0, 0) where it cannot be read within PROBE_S seconds.

    Read in a thread of its own: a file that never answers costs PROBE_S, and SIGTERM / Ctrl-C reach the main
    thread, which only waits here (PyAV, reading in it, would swallow them). A pipe, device or socket is not opened."""
    if special_file(path):
        return 0.0, 0.0
    found: list[tuple[float, float]] = []
    probe = threading.Thread(target=lambda: found.append(_read_header(path)), daemon=True, name="header probe")
    probe.start()
    probe.join(PROBE_S)
    return found[0] if found else (0.0, 0.0)


def _read_header(path: str) -> tuple[float, float]:
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (container.duration or 0) / 1e6)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            return float(stream.frames or seconds * rate), seconds
    except (av.error.FFmpegError, IndexError, OSError):
        return 0.0, 0.0
