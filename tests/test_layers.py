"""`--layer NAME` (pipeline/layers.py): rows are the named block's output, globally average-pooled, for torchvision
and timm backbones alike; the layer is fingerprinted; an unknown name is refused with similar ones."""
import numpy as np
import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from data.synth import write_video
from featstore import open_store
from pipeline.backbones import BackboneError, build_backbone, weights_for
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract, resolve
from pipeline.sources import load_source


@pytest.fixture()
def frames_on_disk(tmp_path):
    """One lossless 32x32 clip of 5 frames: at --size 32 --crop none the model sees the frames as written."""
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mkv", frames)
    (tmp_path / "m.csv").write_text("path,label\nv.mkv,a\n")
    return tmp_path / "m.csv", frames


def block_rows(model: torch.nn.Module, layer: str, frames: np.ndarray, mean, std) -> np.ndarray:
    """The block's output computed directly (torchvision's FX feature extractor, no hooks), averaged over space."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return create_feature_extractor(model.eval(), {layer: "out"})(x)["out"].mean((2, 3)).numpy()


def extract_layer(manifest, store, backbone: str, layer: str):
    cfg = ExtractConfig(backbone=backbone, weights="none", sampling=Sampling(every=1), size=32, crop="none",
                        batch_size=4, workers=0, precision="fp32", dtype="float32", layer=layer)
    assert extract(load_source(manifest), store, cfg).done == 1
    return open_store(store)


def assert_close_rows(got: np.ndarray, want: np.ndarray) -> None:
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == want.shape and cos.min() >= 0.9999, cos


def test_torchvision_layer_rows_equal_the_blocks_pooled_output(frames_on_disk, tmp_path):
    manifest, frames = frames_on_disk
    store = extract_layer(manifest, tmp_path / "s", "resnet18", "layer3")
    built = build_backbone(weights_for("resnet18", "none"))
    pre = built.preprocess
    assert_close_rows(store.features("v"), block_rows(built.model, "layer3", frames, pre.mean, pre.std))
    assert store.features("v").shape[1] == 256 and store.config.layer == "layer3"
    assert "layer" in store.config.fingerprint_keys()


def test_timm_layer_rows_equal_the_blocks_pooled_output(frames_on_disk, tmp_path):
    pytest.importorskip("timm")
    manifest, frames = frames_on_disk
    store = extract_layer(manifest, tmp_path / "s", "timm:resnet10t", "layer2")
    built = build_backbone(weights_for("timm:resnet10t", "none"))
    pre = built.preprocess
    assert_close_rows(store.features("v"), block_rows(built.model, "layer2", frames, pre.mean, pre.std))


def test_the_layer_changes_the_fingerprint_and_an_unknown_one_names_similar_blocks():
    keys_of = lambda run: run.store.fingerprint(run.store.fingerprint_keys())  # noqa: E731
    plain = resolve(ExtractConfig(backbone="resnet18", weights="none", size=32), None, [])
    layered = resolve(ExtractConfig(backbone="resnet18", weights="none", size=32, layer="layer2"), None, [])
    assert keys_of(plain) != keys_of(layered) and layered.backbone.dim == 128 and plain.store.layer is None
    assert "layer" not in plain.store.to_attrs()  # a store without --layer records no key (its fingerprint as before)
    with pytest.raises(BackboneError, match="--layer 'layer5' is not a block of resnet18; similar: layer"):
        weights_for("resnet18", "none", "layer5")


def test_channels_last_blocks_are_pooled_over_their_sides_not_their_channels():
    from pipeline.layers import Layer, pool

    assert weights_for("swin3d_t", "none", "features.6").layer == Layer("features.6", 768, True)  # (B, T, H, W, C)
    assert weights_for("resnet18", "none", "layer3").layer == Layer("layer3", 256, False)       # (B, C, H, W)
    maps = torch.rand(2, 3, 4, 4, 5)
    assert torch.allclose(pool(maps, channels_last=True), maps.mean((1, 2, 3)))
    assert torch.allclose(pool(maps, channels_last=False), maps.mean((2, 3, 4)))


def test_cli_extract_layer_records_it_and_an_unknown_block_exits_1_naming_similar_ones(frames_on_disk, tmp_path):
    from helpers import invoke

    manifest, _ = frames_on_disk
    args = ["extract", manifest, "--backbone", "resnet18", "--weights", "none", "--size", "32", "--workers", "0"]
    ok = invoke(*args, "--layer", "layer2", "--store", tmp_path / "s")
    assert ok.exit_code == 0, ok.output
    assert open_store(tmp_path / "s").config.layer == "layer2"
    bad = invoke(*args, "--layer", "layer9", "--store", tmp_path / "t")
    assert bad.exit_code == 1 and "--layer 'layer9' is not a block of resnet18; similar: layer4" in bad.output


def test_a_family_skeleton_first_built_under_inference_mode_still_traces_a_layer():
    """The skeleton is cached: one first built inside a caller's inference_mode (predict, embed_files) must not hold
    inference tensors that a later --layer trace, outside it, would refuse to save for backward."""
    timm_family = pytest.importorskip("pipeline.families.timm", exc_type=ImportError)
    timm_family.skeleton.cache_clear()
    with torch.inference_mode():
        timm_family.skeleton("vit_tiny_patch16_224")
    chosen = weights_for("timm:vit_tiny_patch16_224", "none", "blocks.2", None)
    assert chosen.layer.dim == 192
