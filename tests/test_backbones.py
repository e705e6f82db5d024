"""The backbone registry: every entry builds, weights load from enum/none/file, errors say what to do."""
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.backbones import REGISTRY, BackboneError, available_backbones, load_backbone

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
QNN = SHARED_WEIGHTS / "mobilenet_v2_qnnpack_state_dict.pth"


@pytest.mark.parametrize("name", [n for n in available_backbones() if not REGISTRY[n].cpu_only])
def test_every_registered_backbone_embeds_to_its_dim(name):
    b = load_backbone(name, "none")
    with torch.inference_mode():
        y = b.model(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, b.dim) == (2, REGISTRY[name].dim)
    assert not any(p.requires_grad for p in b.model.parameters()) and not b.model.training
    # Preprocessing comes from the weights enum, not from constants typed here.
    assert b.preprocess.mean == tuple(REGISTRY[name].weights.DEFAULT.transforms().mean)


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
