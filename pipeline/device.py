"""Where and in which precision a run computes: `--device` and `--precision`, resolved the same way for extract,
finetune, explain and fit-head.

Light on purpose (no torchvision): heads/ resolves its device here too.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import torch

from featstore.errors import FramecacheError
from pipeline.accel import check_int8

if TYPE_CHECKING:  # annotations only: loading the registry pulls in torchvision
    from pipeline.backbones import Backbone

DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")  # what --device accepts
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast dtypes: --precision of finetune (and extract)
EXTRACT_PRECISIONS = PRECISIONS + ("int8",)    # extract also runs PT2E int8 on CPUs (pipeline/accel.py)


class DeviceError(FramecacheError, ValueError):
    """A --device this tool or this machine cannot run on; the message says which to use."""


def resolve_device(device: str, backbone: str = "", cpu_only: bool = False) -> torch.device:
    """The torch device `--device` names: auto is CUDA when torch sees one, else the CPU.

    `cpu_only`: the run's `backbone` runs on CPU kernels only (int8 quantized), so every device but CUDA means the
    CPU, and CUDA is refused naming the backbone. fit-head, with no backbone, leaves both out."""
    if cpu_only:
        if device.startswith("cuda"):
            raise DeviceError(f"{backbone} is an int8 CPU-only model; use --device cpu or another backbone")
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_RE.fullmatch(device):
        raise DeviceError(f"--device {device!r} is not a device this tool runs on; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, backbone: Backbone) -> str:
    """auto: bf16 on GPUs that have it (else fp16); bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    if precision == "int8":
        check_int8(device, backbone.name, backbone.cpu_only, backbone.is_video)
        return precision
    if backbone.cpu_only:
        return "fp32"  # int8 kernels: autocast does not apply
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def process_cores(cores: int | None = None) -> int:
    """CPU cores this process may use: `cores` where a launcher split the node, else its affinity."""
    return cores or len(os.sched_getaffinity(0))


def auto_decode_workers(device: torch.device, cores: int | None = None) -> int:
    """Decode processes when --workers is not given (extract and finetune alike): on a GPU up to 8, one core left
    for the main process; on a CPU one, since decoding and the model share the same cores there."""
    return min(8, max(1, process_cores(cores) - 1)) if device.type == "cuda" else 1
