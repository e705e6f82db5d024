"""Family backbones' speed settings: the CPU batch bench/backbone.py measured (by name, else by family), GPUs' own
batch, bf16 autocast on a transformer keeping its rows, and no compile or int8 that was never measured."""
import numpy as np
import pytest
import torch

from pipeline.accel import CPU_BATCH, CPU_FRAME_BATCH, FAMILY_CPU_BATCH, FRAME_BATCH, default_batch
from pipeline.backbones import load_backbone
from pipeline.decode import Sampling
from pipeline.embed import Embedder
from pipeline.speed import speed_for

timm = pytest.importorskip("timm")
CPU = torch.device("cpu")


def test_a_family_backbone_takes_its_measured_batch_else_its_familys_on_cpus_and_the_gpu_batch_on_gpus():
    for name, batch in CPU_BATCH.items():
        assert default_batch(name, False, CPU) == batch
    assert default_batch("timm:efficientnet_b3", False, CPU) == FAMILY_CPU_BATCH["timm"]
    assert default_batch("nofamily:x", False, CPU) == CPU_FRAME_BATCH
    assert default_batch("timm:convnext_tiny", False, torch.device("cuda")) == FRAME_BATCH


def test_a_timm_vit_runs_bf16_autocast_close_to_fp32_and_is_not_compiled_unmeasured():
    vit = load_backbone("timm:test_vit", "none")
    speed = speed_for("auto", "auto", None, vit, CPU, [], Sampling(every=2))
    assert not speed.compiled and speed.batch_size == FAMILY_CPU_BATCH["timm"]
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 160, 160, 3), dtype=np.uint8))
    fp32, bf16 = (Embedder(vit, CPU, p)(frames) for p in ("fp32", "bf16"))
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(fp32, bf16)  # autocast did run, in bf16
