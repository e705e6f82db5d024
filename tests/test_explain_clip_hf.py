"""explain on OpenCLIP and Hugging Face vision transformers: their tokens go onto the patch grid (the class and
register tokens dropped), the default layer is one whose gradient reaches the patches, and the maps equal a Grad-CAM
written out by hand. Tiny random-init models (helpers.py) on 32 px frames."""
import json

import numpy as np
import pytest
import torch
from helpers import HF_TINY, TINY_CLIP, extract_flags, hand_gradcam, invoke, register_tiny_clip, save_tiny_hf

from data.synth import make_temporal_dataset
from pipeline.families import TokenGrid

pytest.importorskip("pytorch_grad_cam")

from explain.cam import compute_maps, token_grid  # noqa: E402  (after the skip: needs grad-cam)
from explain.core import ExplainConfig, Explainer  # noqa: E402
from explain.model import decode_for, load_run_model, to_pixels  # noqa: E402


def tiny_backbones(root) -> dict[str, tuple[str, str, TokenGrid]]:
    """name -> (--backbone, its default Grad-CAM layer, where its tokens lie at 32 px), for the libraries here."""
    made = {}
    try:
        register_tiny_clip(root)
        made["open_clip"] = (f"open_clip:{TINY_CLIP}", "transformer.resblocks.1.ln_1", TokenGrid(1, 4, 4))
    except pytest.skip.Exception:
        pass
    try:
        import transformers
    except ImportError:
        return made
    vit = save_tiny_hf(root / "vit", transformers.ViTConfig(**HF_TINY, image_size=32, patch_size=8),
                       transformers.ViTImageProcessor(size={"height": 32, "width": 32}))
    made["hf_vit"] = (f"hf:{vit}", "net.layers.1.layernorm_before", TokenGrid(1, 4, 4))
    registers = save_tiny_hf(root / "dinov2reg", transformers.Dinov2WithRegistersConfig(
        **HF_TINY, image_size=32, patch_size=8, num_register_tokens=2),
        transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    made["hf_registers"] = (f"hf:{registers}", "net.encoder.layer.1.norm1", TokenGrid(3, 4, 4))  # CLS + 2 registers
    return made


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A linear head on each tiny backbone's rows (random init, 32 px), and the clips."""
    root = tmp_path_factory.mktemp("explain_tokens")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=3, size=32, seed=2)
    made = tiny_backbones(root)
    for name, (backbone, _, _) in made.items():
        res = invoke("extract", manifest, *extract_flags(size=32, precision="fp32", backbone=backbone),
                     "--store", root / f"{name}-store")
        assert res.exit_code == 0, res.output
        res = invoke("fit-head", root / f"{name}-store", "--epochs", "2", "--out", root / name)
        assert res.exit_code == 0, res.output
    return root, made, [str(manifest.parent / r.split(",")[0]) for r in manifest.read_text().splitlines()[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["open_clip", "hf_vit", "hf_registers"])
def test_token_maps_of_clip_and_hf_vits_equal_a_hand_written_gradcam_at_their_default_layer(runs, name):
    root, made, paths = runs
    if name not in made:
        pytest.skip(f"{name}'s library is not installed")
    backbone, layer, grid = made[name]
    assert Explainer(root / name, ExplainConfig(device="cpu")).layer == layer
    run = load_run_model(root / name, "cpu")
    tokens = torch.zeros(1, grid.prefix + grid.rows * grid.cols, 2)
    assert token_grid(run.model.backbone, backbone).to_map(tokens).shape == (1, 2, grid.rows, grid.cols)
    pixels = to_pixels(decode_for(run, paths[0]).frames, run.device)
    with_evidence = 0
    _, all_maps = compute_maps(run.model, pixels, layer, backbone, "gradcam", list(range(len(run.labels))))
    for target, maps in enumerate(all_maps):
        expected = hand_gradcam(run.model, pixels, run.model.backbone.get_submodule(layer), grid, target)
        assert maps.cams.shape == pixels.shape[:1] + pixels.shape[-2:] and np.isfinite(maps.cams).all()
        np.testing.assert_allclose(maps.cams, expected, atol=1e-5)
        with_evidence += bool(expected.max() > 0)
    assert with_evidence >= 1  # the gradient reached the patch tokens


@pytest.mark.slow
def test_explain_cli_of_an_open_clip_and_an_hf_run_writes_a_map(runs, tmp_path):
    root, made, paths = runs
    for name in made:
        res = invoke("explain", root / name, paths[0], "--frames", "2", "--out", tmp_path / name, "--json")
        assert res.exit_code == 0, res.output
        (row,) = json.loads(res.stdout)
        assert row["png"].endswith(".gradcam.png") and 0 < row["prob"] <= 1


def test_a_square_token_grid_is_read_off_the_token_count_after_the_prefix():
    tokens = torch.arange(2 * 11 * 3, dtype=torch.float32).view(2, 11, 3)  # (B, 2 prefix + 3x3 patches, D)
    maps = TokenGrid(prefix=2).to_map(tokens)
    assert maps.shape == (2, 3, 3, 3) and torch.equal(maps[0, :, 1, 0], tokens[0, 2 + 3])
    assert torch.equal(TokenGrid(2).to_map(tokens[:, 2:]), maps)  # a patch embedding's output: no prefix
    with pytest.raises(ValueError, match="square grid"):
        TokenGrid(2).to_map(tokens[:, :7])


@pytest.mark.slow  # imports transformers, builds two tiny models
def test_hf_image_transformers_name_a_cam_layer_with_a_spatial_map_after_the_reshape(tmp_path):
    transformers = pytest.importorskip("transformers")
    from pipeline.backbones import get_spec, load_backbone

    squash = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    made = {"siglip": (transformers.SiglipConfig(vision_config=dict(**HF_TINY, image_size=32, patch_size=8),
                                                 text_config=dict(**HF_TINY, vocab_size=99)), squash, 0),
            "clip": (transformers.CLIPVisionConfig(**HF_TINY, image_size=32, patch_size=8),
                     transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), 1)}
    for name, (config, processor, prefix) in made.items():
        backbone = f"hf:{save_tiny_hf(tmp_path / name, config, processor)}"
        net, layer = load_backbone(backbone, "none").model, get_spec(backbone).cam_layer
        seen = []
        hook = net.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            net(torch.rand(1, 3, 32, 32))
        hook.remove()
        assert token_grid(net, backbone) == TokenGrid(prefix) and layer.endswith("layer_norm1"), (name, layer)
        assert token_grid(net, backbone).to_map(seen[0]).shape == (1, 32, 4, 4), (name, seen[0].shape)
