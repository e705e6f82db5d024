"""Faster forward passes on CPUs, opt-in: `torch.compile` (inductor) and int8 (PT2E quantization with torchao's
X86InductorQuantizer), plus the batch size that suits the device.

Both variants run one fixed batch shape: a shorter batch is padded (costs less than one batch) rather than compiled
again (costs seconds). Which variant and batch `auto` picks comes from bench/backbone.py's measurements, kept in
`CPU_SPEED` (docs/extract.md, "Backbone speed on CPU").
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featstore.errors import FramecacheError

COMPILE_MODES = ("auto", "on", "off")  # --compile
CALIBRATION_UNITS = 256                # frames of the run's own source the int8 observers see
QUANTIZATION = f"int8:pt2e-x86inductor:calib{CALIBRATION_UNITS}"  # what the store config records (fingerprinted)
FRAME_BATCH, CLIP_BATCH = 64, 8        # default units per forward pass on GPUs (and for unmeasured CPU cases)
CPU_FRAME_BATCH = 16                   # CPU default for image backbones bench/backbone.py did not measure
# CPU cosine to fp32 a variant must keep for `auto` to choose it (issue 13).
AUTO_MIN_COSINE = 0.999


class AccelError(FramecacheError, ValueError):
    """A --precision int8 / --compile request this machine or backbone cannot honour; the message says what to do."""


def _cpuinfo(key: str) -> str | None:
    """The value of /proc/cpuinfo's first `key` line (None where it cannot be read or has none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def cpu_flags() -> set[str]:
    """This CPU's flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """This CPU's model name as /proc/cpuinfo gives it ("unknown" where it cannot be read)."""
    return _cpuinfo("model name") or "unknown"


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # the instructions oneDNN's int8 convolutions are fast with
CPU_KINDS = ("amx", "avx512_bf16", "plain")  # matrix unit (AMX tiles), bf16 dot products in AVX-512, or neither


def cpu_kind(flags: set[str] | None = None) -> str:
    """Which of CPU_KINDS this CPU is (`flags`: its /proc/cpuinfo flags, read when None): what the measured tables
    (CPU_SPEED, pipeline.decoder_choice.DECODE_SPEED) are kept per, since oneDNN picks other kernels on each."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags and "amx_tile" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "plain"


@dataclass(frozen=True)
class Measured:
    """bench/backbone.py on one kind of CPU (2 cores, torch 2.14, 224 px): the best batch and its images/s for each
    variant, the one-time cost of compiling, and the cosine to fp32 on real frames."""
    batch: int            # best eager bf16 batch
    eager: float          # images/s, eager bf16 channels_last at `batch`
    compiled: float       # images/s, torch.compile bf16 at `compiled_batch`
    compiled_batch: int
    compile_s: float      # first call of the compiled model (cold inductor cache)
    compile_cosine: float  # min cosine to fp32 over real frames
    int8: float           # images/s, int8 (compiled) at `int8_batch`
    int8_batch: int
    int8_s: float         # export + calibration + convert + compile
    int8_cosine: float
    trusted: bool         # cosines measured with real (ImageNet) weights; the random-init ones say less
    lane_batch: int | None = None  # eager batch per lane (pipeline.lanes); None: `batch` split between the lanes


# Per CPU kind (cpu_kind: oneDNN runs other kernels with AMX tiles than with AVX512-BF16), each from its own
# bench/results/backbone*.json (`python bench/backbone.py --out FILE --table` prints the lines). Costs are the
# coldest seen (an empty inductor cache); later runs on the same machine reuse the cache and pay less.
CPU_TABLES: dict[str, dict[str, Measured]] = {
    # bench/results/backbone.json: 2 Zen4 cores (AVX512-BF16/VNNI, no AMX)
    "avx512_bf16": {
        "mobilenet_v2": Measured(batch=8, eager=170.8, compiled=278.3, compiled_batch=8, compile_s=26.38,
                                 compile_cosine=0.99912, int8=393.9, int8_batch=16, int8_s=38.18, int8_cosine=0.99339,
                                 trusted=True),
        "resnet18": Measured(batch=16, eager=81.7, compiled=100.4, compiled_batch=32, compile_s=21.55,
                             compile_cosine=0.99999, int8=179.6, int8_batch=8, int8_s=33.01, int8_cosine=0.99986,
                             trusted=False),
        "resnet50": Measured(batch=8, eager=33.9, compiled=43.2, compiled_batch=16, compile_s=23.8,
                             compile_cosine=0.99999, int8=75.9, int8_batch=8, int8_s=75.06, int8_cosine=0.99979,
                             trusted=False),
    },
    "amx": {
        # bench/results/backbone_amx.json: 2 cores of an Intel Xeon with AMX-BF16/INT8 (+ AVX512-BF16/VNNI), idle.
        # eager is pipeline.fold's folded bf16 weights (1.30-1.35x autocast's rate there, same run); compile_s is a
        # fresh process's first compile (resnet18's and resnet50's own rows), the cost a run pays.
        "mobilenet_v2": Measured(batch=8, eager=261.2, compiled=557.7, compiled_batch=8, compile_s=16.47,
                                 compile_cosine=0.99913, int8=571.5, int8_batch=8, int8_s=17.85, int8_cosine=0.99312,
                                 trusted=True),
        "resnet18": Measured(batch=8, eager=286.5, compiled=477.7, compiled_batch=16, compile_s=13.57,
                             compile_cosine=1.0, int8=765.6, int8_batch=8, int8_s=11.95, int8_cosine=0.99985,
                             trusted=False),
        # lane_batch 2: in the loop beside the decoder (80 clips, 2 lanes, alternating, twice) batch 2 ran at 0.98 of
        # batch 4's frames/s and peaked 45 MB lower (901 vs 949 MB): what keeps resnet50 within the peer's RSS + 15 %
        "resnet50": Measured(batch=8, eager=104.1, compiled=193.6, compiled_batch=8, compile_s=17.43,
                             compile_cosine=0.99999, int8=281.6, int8_batch=16, int8_s=35.76, int8_cosine=0.99979,
                             trusted=False, lane_batch=2),
    },
}
# The table `auto` reads on this machine: its kind's, else the AVX512-BF16 one (its eager figures are autocast's,
# measured before pipeline.fold: compiling looks a little better there than it is) for a kind not measured.
CPU_SPEED: dict[str, Measured] = CPU_TABLES.get(cpu_kind(), CPU_TABLES["avx512_bf16"])

# Family backbones, measured eager bf16 only, beside resnet50 in the same run (bench/results/
# backbone_families.json). That run's machine was shared (load 17-25 on 2 cores): every model, resnet50 included,
# peaked at batch 32 there, against resnet50's 8 on the quiet machine, so the load chose the peak. What carries over
# is the ratio: at each batch these ran at 0.6-1.5x resnet50's rate (the same cost class, 4.1-4.6 GFLOPs), so they
# take resnet50's quiet-machine batch. `auto` neither compiles nor quantizes them (neither was measured).
CPU_BATCH: dict[str, int] = {
    "timm:convnext_tiny": 8,
    "timm:vit_small_patch16_224": 8,
}
# A family's unmeasured names: its measured ones' batch (the curated others are as costly or costlier: vit_base,
# DINOv2; small batches keep a costly model's activations in cache, as resnet50's 8 against resnet18's 16)
FAMILY_CPU_BATCH: dict[str, int] = {"timm": 8}


def lane_batch(backbone: str, video: bool, device: torch.device, lanes: int) -> int:
    """Eager units per forward pass in each of `lanes` (> 1) lanes (pipeline.lanes): measured where bench measured it in
    the loop (Measured.lane_batch), else the one-lane batch split between the lanes: as many units in flight, and
    one thread's best batch is smaller (bench/results/backbone_amx_lane.json: batch 4 within 4 % of the best)."""
    m = CPU_SPEED.get(backbone)
    if m is not None and m.lane_batch:
        return m.lane_batch
    return max(1, default_batch(backbone, video, device, "eager") // lanes)


def default_batch(backbone: str, video: bool, device: torch.device, variant: str = "eager") -> int:
    """Units per forward pass when --batch-size is not given: large on GPUs; on CPUs the batch that ran fastest
    in bench/backbone.py for this backbone and variant (eager | compiled | int8), else its eager-only measurement
    (CPU_BATCH), else its family's (FAMILY_CPU_BATCH), else CPU_FRAME_BATCH."""
    if video:
        return CLIP_BATCH
    if device.type != "cpu":
        return FRAME_BATCH
    m = CPU_SPEED.get(backbone)
    if m is None:
        family, sep, _ = backbone.partition(":")
        return CPU_BATCH.get(backbone) or (FAMILY_CPU_BATCH.get(family) if sep else None) or CPU_FRAME_BATCH
    return {"compiled": m.compiled_batch, "int8": m.int8_batch}.get(variant, m.batch)


def compile_pays_back(backbone: str, units: int) -> bool:
    """auto: compile only where it keeps cosine >= AUTO_MIN_COSINE and the time it saves on `units` frames exceeds
    what compiling costs (both measured; an unmeasured backbone is not compiled). Compiling does not quantize: its
    cosine equals eager bf16's on random and real weights alike, so random-init measurements count here."""
    m = CPU_SPEED.get(backbone)
    if m is None or m.compile_cosine < AUTO_MIN_COSINE or m.compiled <= m.eager:
        return False
    return units * (1 / m.eager - 1 / m.compiled) > m.compile_s


def int8_is_auto(backbone: str) -> bool:
    """auto picks int8 only where its cosine to fp32, measured with real weights, meets AUTO_MIN_COSINE and it is
    the fastest variant. (Random-init cosines do not count: trained weights and activations have wider ranges.)"""
    m = CPU_SPEED.get(backbone)
    return (m is not None and m.trusted and m.int8_cosine >= AUTO_MIN_COSINE
            and m.int8 > max(m.eager, m.compiled))


def int8_pays_back(backbone: str, units: int) -> bool:
    """int8's time saved on `units` frames, against the best float variant, exceeds its one-time cost."""
    m = CPU_SPEED[backbone]
    return units * (1 / max(m.eager, m.compiled) - 1 / m.int8) > m.int8_s


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def has_compiler() -> bool:
    """Inductor writes C++ for CPU kernels, compiled with $CXX (g++ when unset)."""
    return shutil.which(_compiler()) is not None


def check_compiler() -> None:
    """Without a compiler `torch.compile` fails deep inside the first batch: say so first."""
    cxx = _compiler()
    if not has_compiler():
        raise AccelError(f"--compile on CPU needs a C++ compiler ({cxx} not found): install g++ (apt-get install "
                         "g++) or set CXX, or use --compile off")


def check_int8(device: torch.device, name: str, quantized: bool, video: bool, flags: set[str] | None = None) -> None:
    """Raise AccelError unless int8 PT2E can run here: a CPU with VNNI/AMX int8 (`flags`: its /proc/cpuinfo
    flags, read when None), an image backbone, torchao."""
    if device.type != "cpu":
        raise AccelError(f"--precision int8 runs on CPUs only (x86 oneDNN kernels), not on {device}: use "
                         "--precision auto (bf16/fp16 on GPUs) or --device cpu")
    if quantized:
        raise AccelError(f"{name} is already an int8 model: drop --precision int8")
    if video:
        raise AccelError(f"--precision int8 is measured for image backbones only, not {name}: use --precision auto")
    flags = cpu_flags() if flags is None else flags
    if flags and not flags & set(INT8_FLAGS):
        raise AccelError(f"this CPU has no int8 dot-product instructions ({', '.join(INT8_FLAGS)}), so int8 would be "
                         "slower than bf16/fp32: use --precision auto")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise AccelError('--precision int8 needs torchao: pip install -e ".[int8]"') from None
    check_compiler()


def compile_model(model: nn.Module, example: torch.Tensor, amp: torch.dtype | None) -> tuple[nn.Module, float]:
    """(inductor-compiled model, seconds its first call took). Freezing folds the weights into the graph (and lets
    int8 weights be prepacked once); it is read when the first call compiles, so that call runs inside the patch."""
    import torch._inductor.config as inductor_config

    start = time.perf_counter()
    compiled = torch.compile(model, dynamic=False)
    with inductor_config.patch(freezing=True), torch.no_grad(), _autocast(amp):
        compiled(example)
    return compiled, time.perf_counter() - start


def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch: int) -> nn.Module:
    """The model with int8 weights and activations (PT2E, X86InductorQuantizer's default static per-tensor
    activations, per-channel weights), observed on `calibration` (N, 3, H, W normalized frames) in batches of
    `batch`. Not compiled yet: on its own it runs reference quantize/dequantize ops (slow)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    example = pad_to(calibration[:batch], batch)
    # strict=True: the non-strict tracer names a module called twice (ResNet blocks reuse one ReLU) as one
    # partition with two outputs, which the quantizer's conv+add+relu annotation refuses.
    with torch.no_grad():
        graph = torch.export.export(model, (example,), strict=True).module()
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
        observed = prepare_pt2e(graph, quantizer)
        for chunk in calibration.split(batch):
            observed(pad_to(chunk, batch))
        return convert_pt2e(observed)


def pad_to(x: torch.Tensor, batch: int) -> torch.Tensor:
    """`x` with zero rows appended up to `batch` (a compiled model has one batch shape)."""
    if len(x) >= batch:
        return x
    pad = x.new_zeros((batch - len(x), *x.shape[1:]))
    return torch.cat([x, pad]).contiguous(memory_format=torch.channels_last) if x.ndim == 4 else torch.cat([x, pad])


def batches_of(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [x[i:i + batch] for i in range(0, len(x), batch)] if len(x) > batch else [x]


def _autocast(amp: torch.dtype | None):
    return torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)
