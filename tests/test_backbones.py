"""The backbone registry: every entry builds, weights load from enum/none/file, errors say what to do."""
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.backbones import REGISTRY, BackboneError, available_backbones, load_backbone

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
QNN = SHARED_WEIGHTS / "mobilenet_v2_qnnpack_state_dict.pth"


# 16 x 224 x 224 clips (MViT's only input, S3D's smallest) and building Swin3D-S/B at random cost seconds each.
HEAVY = {"mvit_v1_b", "mvit_v2_s", "s3d", "swin3d_s", "swin3d_b"}


def smallest_input(spec) -> torch.Tensor:
    """The smallest input the registry says the backbone takes: (2, 3, H, W) or (2, 3, T, H, W)."""
    if spec.clip is None:
        return torch.rand(2, 3, 64, 64)
    side = max(spec.clip.min_size, 32)
    return torch.rand(1, 3, max(spec.clip.min_len, 2), side, side)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in available_backbones() if not REGISTRY[n].cpu_only])
def test_every_registered_backbone_embeds_to_its_dim(name):
    spec = REGISTRY[name]
    b = load_backbone(name, "none")
    x = smallest_input(spec)
    with torch.inference_mode():
        y = b.model(x)
    assert y.shape == (len(x), b.dim) == (len(x), spec.dim)
    assert not any(p.requires_grad for p in b.model.parameters()) and not b.model.training
    # Preprocessing comes from the weights enum, not from constants typed here.
    assert b.preprocess.mean == tuple(spec.weights.DEFAULT.transforms().mean)
    assert b.cam_layer and b.cam_layer in dict(b.model.named_modules()), f"no cam_layer {b.cam_layer!r} in {name}"
    assert b.is_video == (x.ndim == 5)


def test_clip_constraints_come_from_the_weights_and_refuse_with_the_allowed_values():
    mvit, s3d, r3d = REGISTRY["mvit_v1_b"].clip, REGISTRY["s3d"].clip, REGISTRY["r3d_18"].clip
    assert (mvit.min_len, mvit.min_size, mvit.fixed) == (16, 224, True)
    assert (s3d.min_len, s3d.min_size, s3d.fixed) == (14, 224, False)
    assert REGISTRY["resnet18"].clip is None and r3d.default_len == 16
    with pytest.raises(BackboneError, match="--clip-len 8 does not fit mvit_v1_b: it takes exactly --clip-len 16"):
        mvit.check("mvit_v1_b", 8, 224)
    with pytest.raises(BackboneError, match="--size 112 is too small for s3d: use --size 224 or more"):
        s3d.check("s3d", 16, 112)
    r3d.check("r3d_18", 4, 32)
    pre = load_backbone("r2plus1d_18", "none").preprocess
    assert (pre.crop, pre.resize, pre.resample) == (112, (128, 171), "tensor")
    assert pre.scaled(56).resize == (64, 86)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "mobilenet_v2_float_dequantized.pth").exists(),
                    reason="../shared/weights not present")
def test_float_mobilenet_loads_the_dequantized_imagenet_weights():
    path = SHARED_WEIGHTS / "mobilenet_v2_float_dequantized.pth"
    b = load_backbone("mobilenet_v2", str(path))
    ref = torchvision.models.mobilenet_v2(weights=None).eval()
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.classifier = torch.nn.Identity()
    x = torch.rand(2, 3, 96, 96)
    assert b.dim == 1280 and not b.cpu_only and torch.allclose(b.model(x), ref(x), atol=1e-5)


def test_random_init_is_seeded_so_one_fingerprint_means_one_model():
    a, b = load_backbone("resnet18", "none"), load_backbone("resnet18", "none")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(a.model(x), b.model(x)) and a.weights_id == "none(seed=0)"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(BackboneError, match="resnet18.*resnet50"):
        load_backbone("vgg99", "none")


def test_unknown_weights_name_lists_enum_members():
    with pytest.raises(BackboneError, match="IMAGENET1K_V2"):
        load_backbone("resnet50", "IMAGENET_V9")


def test_offline_download_failure_is_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))           # nothing cached
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")          # a closed port: offline, wherever this runs
    with pytest.raises(BackboneError) as e:
        load_backbone("resnet18", "DEFAULT")
    msg = str(e.value)
    assert "\n" not in msg and "--weights" in msg and "resnet18-" in msg


def test_local_state_dict_file_and_checkpoint_wrappers_load(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "plain.pth")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    ref.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    expected = ref.eval()(x)
    for f in ("plain.pth", "wrapped.pt"):
        b = load_backbone("resnet18", str(tmp_path / f))
        assert torch.allclose(b.model(x), expected, atol=1e-6)
        assert b.weights_id.startswith("file:sha256:")


def test_weights_for_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BackboneError, match="does not fit resnet50"):
        load_backbone("resnet50", str(tmp_path / "r18.pth"))
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("resnet50", str(tmp_path / "missing.pth"))


@pytest.mark.skipif(not QNN.exists(), reason="../shared/weights not present")
def test_quantized_mobilenet_matches_the_documented_embedding_recipe():
    b = load_backbone("quantized_mobilenet_v2", str(QNN))
    m = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=True).eval()
    m.load_state_dict(torch.load(QNN, weights_only=True))
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    ref = torch.nn.functional.adaptive_avg_pool2d(m.features(m.quant(x)), 1).flatten(1).dequantize()
    assert b.dim == 1280 and b.cpu_only
    assert torch.equal(b.model(x), ref)
