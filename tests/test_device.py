"""One --device rule for every stage (pipeline/device.py): fit-head's heads have no backbone, extract's int8
backbones run on the CPU only; a device this tool does not run on is one line naming --device."""
import pytest
import torch

from finetune.config import FinetuneConfig, FinetuneError
from pipeline.device import EXTRACT_PRECISIONS, PRECISIONS, DeviceError, resolve_device
from pipeline.extract import ExtractConfig, ExtractError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def test_auto_and_cpu_name_the_cpu_without_cuda_for_heads_and_backbones():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device("auto", "resnet18", cpu_only=False) == auto
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_a_device_this_tool_does_not_run_on_is_refused_naming_the_flag_and_the_choices(device):
    with pytest.raises(DeviceError, match=rf"--device '{device}'.*auto, cpu, cuda or cuda:N"):
        resolve_device(device)


@no_cuda
def test_cuda_without_a_cuda_device_is_refused_with_the_way_out():
    with pytest.raises(DeviceError, match="--device cuda:7 asked for, but torch sees no CUDA device; use --device cpu"):
        resolve_device("cuda:7")


def test_an_int8_backbone_runs_on_the_cpu_whatever_auto_finds_and_refuses_cuda():
    assert resolve_device("auto", "quantized_mobilenet_v2", cpu_only=True) == torch.device("cpu")
    with pytest.raises(DeviceError, match="quantized_mobilenet_v2 is an int8 CPU-only model; use --device cpu"):
        resolve_device("cuda", "quantized_mobilenet_v2", cpu_only=True)


def test_extract_and_finetune_take_one_precision_table_extract_adds_int8():
    assert EXTRACT_PRECISIONS == PRECISIONS + ("int8",)
    for precision in PRECISIONS:
        ExtractConfig(precision=precision), FinetuneConfig(precision=precision)
    ExtractConfig(precision="int8")
    with pytest.raises(FinetuneError, match="--precision 'int8'"):
        FinetuneConfig(precision="int8")
    with pytest.raises(ExtractError, match="--precision 'fp8' is not valid; choose one of: auto, fp32, bf16, fp16, int8"):
        ExtractConfig(precision="fp8")
