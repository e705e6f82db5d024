"""Clip stores end to end: rows equal torchvision's own model on weights.transforms() of the same decoded frames;
row counts and spans; bad flag combinations; `cli.py extract` starts without stage-two imports."""
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import ROOT, child_env, extract_flags, invoke, write_clips
from torchvision.models import video as vmodels

from featstore import open_store
from pipeline import ClipSampling, ExtractConfig, load_source
from pipeline import run_extraction as extract


@pytest.fixture()
def clip_dataset(tmp_path):
    """Lossless 64x48 clips of 20, 40 and 5 frames (the last shorter than a clip), two classes."""
    return write_clips(tmp_path, ["c0.mkv", "c1.mkv", "c2.mkv"], frames=[20, 40, 5], height=48, width=64,
                       split=lambda i: "train" if i < 2 else "test")


def reference_rows(path: Path, name: str, weights, starts: list[int], length: int) -> np.ndarray:
    """torchvision alone: PyAV frames as (T, C, H, W) uint8, the weights' transforms(), the seeded random model."""
    with av.open(str(path)) as c:
        frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # what --weights none builds (pipeline.backbones.SEED_FOR_RANDOM_INIT)
        model = getattr(vmodels, name)(weights=None).eval()
    setattr(model, {"s3d": "classifier", "r3d_18": "fc"}.get(name, "head"), torch.nn.Identity())
    clips = [frames[s:s + length].permute(0, 3, 1, 2) for s in starts]
    x = torch.stack([weights.transforms()(c) for c in clips])  # (N, C, T, H, W)
    with torch.inference_mode():
        return model(x).numpy()


# 20 frames: clips at 0 and 4 with stride 4; one clip for the 224-px models, whose passes cost seconds each.
@pytest.mark.parametrize("name, weights, stride", [
    ("r3d_18", vmodels.R3D_18_Weights.DEFAULT, 4),
    pytest.param("s3d", vmodels.S3D_Weights.DEFAULT, 16, marks=pytest.mark.slow),
    pytest.param("mvit_v1_b", vmodels.MViT_V1_B_Weights.DEFAULT, 16, marks=pytest.mark.slow),
])
def test_each_clip_row_equals_torchvision_on_the_same_16_decoded_frames(clip_dataset, tmp_path, name, weights,
                                                                        stride):
    item = load_source(clip_dataset)[0]
    cfg = ExtractConfig(backbone=name, weights="none", sampling=ClipSampling(clip_len=16, clip_stride=stride),
                        batch_size=1, workers=0, precision="fp32", dtype="float32")
    extract([item], tmp_path / "s", cfg)
    s = open_store(tmp_path / "s")
    starts = list(range(0, 20 - 16 + 1, stride))
    np.testing.assert_array_equal(s.frame_index(item.id), starts)
    np.testing.assert_array_equal(s.frame_end(item.id), [x + 16 for x in starts])
    expected = reference_rows(Path(item.path), name, weights, starts, 16)
    np.testing.assert_allclose(s.features(item.id), expected, rtol=1e-4, atol=1e-4)


def test_clip_store_rows_follow_the_formula_and_pad_short_videos(clip_dataset, tmp_path):
    cfg = ExtractConfig(backbone="r3d_18", weights="none", sampling=ClipSampling(clip_len=8, clip_stride=8),
                        size=32, batch_size=3, workers=1, precision="fp32")
    r = extract(load_source(clip_dataset), tmp_path / "s", cfg)
    assert (r.done, r.unit, r.failed) == (3, "clips", [])
    s = open_store(tmp_path / "s")
    assert [s.meta(v).length for v in ("c0", "c1", "c2")] == [(20 - 8) // 8 + 1, (40 - 8) // 8 + 1, 1]
    np.testing.assert_array_equal(s.frame_end("c1") - s.frame_index("c1"), [8] * 5)
    assert (s.frame_index("c2")[0], s.frame_end("c2")[0]) == (0, 5)  # padded: 5 real frames in a clip of 8
    np.testing.assert_allclose(s.time_end_s("c1"), s.frame_end("c1") / 25, atol=1e-6)
    assert s.config.clip_len == 8 and s.config.every is None and s.features("c0").shape == (2, 512)
    again = extract(load_source(clip_dataset), tmp_path / "s", cfg)
    assert (again.skipped, again.done) == (3, 0)


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnet18", "--clip-len", "16"], "--clip-len 16 does not apply to resnet18, an image backbone"),
    (["--backbone", "r2plus1d_18", "--every", "10"], "--every 10 does not apply to r2plus1d_18, a video backbone"),
    (["--backbone", "mvit_v1_b", "--clip-len", "8"], "--clip-len 8 does not fit mvit_v1_b: it takes exactly "
                                                     "--clip-len 16"),
    (["--backbone", "s3d", "--size", "112"], "--size 112 is too small for s3d: use --size 224 or more"),
])
def test_flags_of_the_wrong_kind_are_one_line_errors(clip_dataset, tmp_path, args, message):
    res = invoke("extract", clip_dataset, "--weights", "none", "--store", tmp_path / "s", *args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


# The CLI builds every command's choices from the registries (heads.config, heads.budget and heads.kinds: no torch),
# so those load; nothing that trains, scores or plots may: no other heads module, no scikit-learn, no matplotlib.
STARTUP_PROBE = """
import atexit, sys
LIGHT = {"heads", "heads.budget", "heads.config", "heads.kinds"}
atexit.register(lambda: print("STAGE2", sorted(m for m in sys.modules if m.split(".")[0] in {"heads", "sklearn",
                                                                                             "matplotlib"}
                                               and m not in LIGHT)))
sys.argv = ["cli.py", *sys.argv[1:]]
import cli
cli.main()
"""


def test_cli_extract_imports_nothing_of_stage_two(clip_dataset, tmp_path):
    args = ["extract", str(clip_dataset), *extract_flags(), "--limit", "1", "--store", str(tmp_path / "s")]
    p = subprocess.run([sys.executable, "-c", STARTUP_PROBE, *args], capture_output=True, text=True, env=child_env(),
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "STAGE2 []" in p.stdout, p.stdout
