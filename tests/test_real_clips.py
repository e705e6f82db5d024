"""End-to-end checks on real UCF101 clips and real ImageNet weights from ../shared (skipped where absent)."""
import csv
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from featstore import open_store
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract
from pipeline.sources import load_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "ucf101_subset20"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_qnnpack_state_dict.pth"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA.exists() and WEIGHTS.exists()), reason="../shared not present")]


def reference_embeddings(path: str, every: int) -> np.ndarray:
    """Independent path: PyAV to PIL images, the weights' own transforms, the documented model recipe."""
    m = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=True).eval()
    m.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    tf = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    with av.open(path) as c:
        images = [f.to_image() for i, f in enumerate(c.decode(video=0)) if i % every == 0]
    x = torch.stack([tf(im) for im in images])
    with torch.inference_mode():
        return torch.nn.functional.adaptive_avg_pool2d(m.features(m.quant(x)), 1).flatten(1).dequantize().numpy()


def test_real_clips_match_an_independent_computation_and_decoded_lengths(tmp_path):
    items = load_source(DATA / "manifest.csv")
    chosen = [items[0], items[len(items) // 2], items[-1]]
    cfg = ExtractConfig(backbone="quantized_mobilenet_v2", weights=str(WEIGHTS), sampling=Sampling(every=10),
                        workers=1)
    r = extract(chosen, tmp_path / "s", cfg)
    assert r.done == 3 and not r.failed
    decoded = {row["path"].rsplit(".", 1)[0]: int(row["frames_decoded_pyav"])
               for row in csv.DictReader(open(DATA / "clips_info.csv"))}
    s = open_store(tmp_path / "s")
    for it in chosen:
        assert s.meta(it.id).length == math.ceil(decoded[it.id] / 10)
        assert s.meta(it.id).n_frames == decoded[it.id]
        ours, ref = s.features(it.id), reference_embeddings(it.path, 10)
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.99, cos.min()
