"""Faster CPU backbones (issue 13): int8 (PT2E) and torch.compile give the right embeddings, int8 is fingerprinted,
bad combinations are one-line errors, and the batch size is the device's unless --batch-size says otherwise."""
import importlib.util
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import invoke, tiny_config, write_clips, write_manifest
from torch import nn

from data.synth import write_video
from featstore import ConfigMismatch, StoreConfig, open_store
from pipeline.accel import (CPU_SPEED, FRAME_BATCH, QUANTIZATION, AccelError, Measured, check_int8,
                            compile_pays_back, cpu_kind, default_batch, int8_is_auto)
from pipeline.backbones import Backbone, Preprocess, load_backbone
from pipeline.decode import Sampling
from pipeline.embed import Embedder
from pipeline.extract import extract
from pipeline.sources import load_source
from pipeline.speed import estimate_units, speed_for

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs g++")
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason='int8 needs torchao: pip install -e ".[int8]"')
CPU = torch.device("cpu")


class Tiny(nn.Module):
    """conv-bn-relu, then a residual conv+add+relu reusing one ReLU module, as torchvision's ResNet blocks do (the
    pattern the quantizer refused under non-strict export)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(self.bn2(self.conv2(y)) + y), 1), 1)


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    model = Tiny().eval().requires_grad_(False)
    return Backbone("tiny", model, Preprocess(32, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 16, "none")


def frames(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (upsampled noise): what a real frame's statistics look like more than white noise."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand((n, 3, 8, 8), generator=g) * 255
    big = nn.functional.interpolate(small, size=32, mode="bilinear")
    return big.permute(0, 2, 3, 1).round().to(torch.uint8).contiguous()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
@needs_compiler
def test_compiled_embeddings_match_eager_and_a_short_batch_is_padded_not_recompiled():
    backbone = tiny_backbone()
    x = frames(11)
    eager = Embedder(backbone, CPU, "fp32")(x)
    fast = Embedder(backbone, CPU, "fp32", compile=True, batch=4)
    out = np.concatenate([fast(x[:4]), fast(x[4:8]), fast(x[8:])])  # the last batch is 3 units
    assert out.shape == (11, 16) and fast.setup_s > 0
    assert cosines(out, eager).min() > 0.9999
    assert len(fast(x)) == 11  # more than one batch in a call: split into batches


@pytest.mark.slow
@needs_compiler
@needs_torchao
def test_int8_embeddings_are_close_to_fp32_after_calibrating_on_the_frames():
    backbone = tiny_backbone()
    x = frames(24)
    reference = Embedder(backbone, CPU, "fp32")(x)
    int8 = Embedder(backbone, CPU, "int8", batch=8)
    with pytest.raises(ValueError, match="calibrate"):
        int8(x[:8])
    int8.calibrate(frames(32, seed=1))  # other frames than the ones compared
    out = int8(x)
    assert out.shape == (24, 16) and not int8.needs_calibration
    assert cosines(out, reference).min() > 0.99


def test_int8_refusals_say_what_to_do_in_one_line():
    cases = [((torch.device("cuda"), "resnet18", False, False), "CPUs only"),
             ((CPU, "quantized_mobilenet_v2", True, False), "already an int8 model"),
             ((CPU, "r3d_18", False, True), "image backbones only")]
    for args, message in cases:
        with pytest.raises(AccelError, match=message) as e:
            check_int8(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(AccelError, match="no int8 dot-product instructions"):
        check_int8(CPU, "resnet18", False, False, flags={"avx2", "fma"})


def test_a_store_made_in_int8_records_it_in_its_fingerprint_and_older_configs_keep_theirs():
    old = StoreConfig.from_attrs({"backbone": "resnet18", "clip_len": None, "quantization": None})
    assert "quantization" not in old.fingerprint_keys()  # a store made before int8 existed: same keys as before
    assert old.with_extra(quantization=QUANTIZATION).fingerprint_keys()[-1] == "quantization"


def test_batch_size_is_the_devices_unless_given():
    resnet = load_backbone("resnet18", "none")
    assert speed_for("fp32", "off", 5, resnet, CPU, [], Sampling(every=2)).batch_size == 5
    assert default_batch("resnet18", False, torch.device("cuda"), "eager") == FRAME_BATCH
    assert default_batch("r3d_18", True, CPU, "eager") == 8
    if "resnet50" in CPU_SPEED:
        assert default_batch("resnet50", False, CPU, "eager") == CPU_SPEED["resnet50"].batch
    assert speed_for("fp32", "off", None, resnet, CPU, [], Sampling(every=2)).batch_size == \
        default_batch("resnet18", False, CPU, "eager")


def test_auto_weighs_the_measured_cost_against_the_run_size_and_wants_int8_cosine_from_real_weights():
    probe = Measured(batch=8, eager=100.0, compiled=125.0, compiled_batch=8, compile_s=20.0, compile_cosine=0.99999,
                     int8=250.0, int8_batch=8, int8_s=30.0, int8_cosine=0.9995, trusted=False)
    CPU_SPEED["_probe"], CPU_SPEED["_real"] = probe, replace(probe, trusted=True)
    try:  # saving 1/100 - 1/125 = 2 ms a frame: 20 s back after 10,000 frames
        assert not compile_pays_back("_probe", 9_000) and compile_pays_back("_probe", 11_000)
        assert not compile_pays_back("not-measured", 10 ** 9)
        assert not int8_is_auto("_probe") and int8_is_auto("_real")  # random-init cosines do not count
        assert not int8_is_auto("mobilenet_v2")  # its real-weights int8 cosine is below 0.999
    finally:
        del CPU_SPEED["_probe"], CPU_SPEED["_real"]


def test_the_run_size_is_estimated_from_headers(tmp_path):
    items = load_source(write_clips(tmp_path, ["v0.mkv", "v1.mkv", "v2.mkv"], frames=[10, 20, 30]))
    assert abs(estimate_units(items, Sampling(every=2)) - 30) <= 3  # 5 + 10 + 15
    assert estimate_units(items, Sampling(frames=4)) == 12


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8", "--compile", "off"], "always runs compiled"),
    (["--backbone", "quantized_mobilenet_v2", "--compile", "on"], "does not apply to quantized_mobilenet_v2"),
    (["--precision", "int8", "--backbone", "quantized_mobilenet_v2"], "already an int8 model"),
])
def test_cli_bad_combinations_are_one_line_errors(tmp_path, args, message):
    if "int8" in args and importlib.util.find_spec("torchao") is None and "already" not in message:
        pytest.skip("torchao not installed")
    manifest = write_clips(tmp_path, ["v.mkv"], frames=3)
    res = invoke("extract", manifest, "--weights", "none", "--store", tmp_path / "s", "--device", "cpu", *args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.slow
@needs_compiler
@needs_torchao
def test_extract_int8_is_close_to_fp32_resumes_with_the_same_calibration_and_is_fingerprinted(tmp_path):
    for i in range(3):  # smooth frames (see frames()), which int8 is calibrated on
        write_video(tmp_path / f"v{i}.mkv", frames(6, seed=i).numpy())
    items = load_source(write_manifest(tmp_path, [(f"v{i}.mkv", "a") for i in range(3)]))
    base = dict(batch_size=8, device="cpu")
    fp32 = extract(items, tmp_path / "fp32", tiny_config(**base, precision="fp32"))
    int8 = extract(items, tmp_path / "int8", tiny_config(**base, precision="int8"))
    assert int8.precision == "int8" and int8.compiled and int8.frames == fp32.frames == 18
    a, b = open_store(tmp_path / "fp32"), open_store(tmp_path / "int8")
    assert b.config.quantization == QUANTIZATION and a.fingerprint != b.fingerprint
    assert cosines(a.load_all().features, b.load_all().features).min() > 0.98
    # interrupted after one video, then resumed: calibrated on the source's first frames both times
    extract(items, tmp_path / "resumed", tiny_config(**base, precision="int8", limit=1))
    extract(items, tmp_path / "resumed", tiny_config(**base, precision="int8"))
    c = open_store(tmp_path / "resumed")
    assert c.ids() == b.ids() and c.fingerprint == b.fingerprint
    np.testing.assert_allclose(c.load_all().features, b.load_all().features, atol=1e-4)
    with pytest.raises(ConfigMismatch, match="quantization"):  # a float run into an int8 store
        extract(items, tmp_path / "int8", tiny_config(**base, precision="fp32", retry_failed=True))


@pytest.mark.parametrize("flags, kind", [({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, "amx"),
                                         ({"avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16"),
                                         ({"avx2", "fma"}, "plain"), (set(), "plain")])
def test_cpu_kind_tells_the_matrix_unit_from_avx512_bf16_and_neither(flags, kind):
    assert cpu_kind(flags) == kind
