"""The CUDA path (autocast, channels_last, pinned memory, decode workers): skipped where there is no GPU."""
import numpy as np
import pytest
import torch

from data.synth import write_video
from featstore import open_store
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract
from pipeline.sources import load_source

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_cuda_autocast_matches_cpu_fp32(tmp_path, precision):
    rng = np.random.default_rng(0)
    for i in range(4):
        write_video(tmp_path / f"v{i}.mkv", rng.integers(0, 256, (9, 48, 48, 3), dtype=np.uint8))
    items = load_source(tmp_path)
    base = dict(backbone="resnet18", weights="none", sampling=Sampling(every=2), size=64, batch_size=8,
                workers=2, dtype="float32")
    gpu = extract(items, tmp_path / "gpu", ExtractConfig(**base, device="cuda", precision=precision))
    extract(items, tmp_path / "cpu", ExtractConfig(**base, device="cpu", precision="fp32"))
    assert gpu.device.startswith("cuda") and gpu.precision in ("fp16", "bf16")
    a, b = open_store(tmp_path / "gpu").load_all().features, open_store(tmp_path / "cpu").load_all().features
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999


def test_cuda_clips_match_cpu_fp32(tmp_path):
    """Clips: pinned Rows, channels_last_3d and autocast on the GPU agree with the CPU in fp32."""
    from pipeline.decode import ClipSampling

    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(tmp_path / f"v{i}.mkv", rng.integers(0, 256, (12, 48, 48, 3), dtype=np.uint8))
    items = load_source(tmp_path)
    base = dict(backbone="r3d_18", weights="none", sampling=ClipSampling(clip_len=8, clip_stride=4), size=32,
                batch_size=2, workers=2, dtype="float32")
    gpu = extract(items, tmp_path / "gpu", ExtractConfig(**base, device="cuda", precision="auto"))
    extract(items, tmp_path / "cpu", ExtractConfig(**base, device="cpu", precision="fp32"))
    assert gpu.unit == "clips" and gpu.frames == 3 * 2
    a, b = open_store(tmp_path / "gpu").load_all().features, open_store(tmp_path / "cpu").load_all().features
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
