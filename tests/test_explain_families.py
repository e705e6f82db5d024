"""explain beyond torchvision's CNNs: a timm vision transformer's tokens go onto its patch grid (prefix tokens
dropped), its default layer is one whose gradient reaches the patches, and a `--layer` store explains that layer."""
import json

import numpy as np
import pytest
import torch
from helpers import extract_flags, invoke

from data.synth import make_temporal_dataset
from pipeline.backbones import get_spec, load_backbone
from pipeline.families import TokenGrid

pytest.importorskip("pytorch_grad_cam")
timm = pytest.importorskip("timm")

from explain.cam import compute_maps, token_grid  # noqa: E402  (after the skips: needs grad-cam)
from explain.core import ExplainConfig, Explainer  # noqa: E402
from explain.model import decode_for, load_run_model, to_pixels  # noqa: E402

VIT = "timm:test_vit"  # 0.3 M parameters, a fixed 160 px input: 10x10 patches after one class token


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory):
    """A linear head on random-init test_vit rows, and one on the rows of its block 2 (`--layer`)."""
    root = tmp_path_factory.mktemp("explain_vit")
    manifest = make_temporal_dataset(root / "clips", n_per_class=4, frames=4, size=32, seed=2)
    for name, extra in (("vit", []), ("layer", ["--layer", "blocks.2"])):
        flags = extract_flags(size=160, precision="fp32", backbone=VIT)
        res = invoke("extract", manifest, *flags, *extra, "--store", root / f"{name}-store")
        assert res.exit_code == 0, res.output
        res = invoke("fit-head", root / f"{name}-store", "--epochs", "2", "--out", root / name)
        assert res.exit_code == 0, res.output
    return root, [str(manifest.parent / r.split(",")[0]) for r in manifest.read_text().splitlines()[1:]]


def test_token_grid_drops_the_prefix_tokens_and_lays_the_patches_row_by_row():
    tokens = torch.arange(2 * 8 * 3, dtype=torch.float32).view(2, 8, 3)  # (B, 2 prefix + 2x3 patches, D)
    maps = TokenGrid(prefix=2, rows=2, cols=3).to_map(tokens)
    assert maps.shape == (2, 3, 2, 3)
    assert torch.equal(maps[1, :, 1, 0], tokens[1, 2 + 3])  # row 1, column 0 is the 4th patch
    assert torch.equal(TokenGrid(2, 2, 3).to_map(tokens[:, 2:]), maps)  # no prefix (a patch embedding's output)
    with pytest.raises(ValueError, match="2x3 grid"):
        TokenGrid(1, 2, 3).to_map(tokens)


def test_timm_families_name_a_cam_layer_with_a_spatial_map_after_the_reshape():
    for name in (VIT, "timm:test_convnext", "timm:deit_tiny_distilled_patch16_224"):
        net = load_backbone(name, "none").model
        seen = []
        layer = net.get_submodule(get_spec(name).cam_layer)
        hook = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        side = get_spec(name).input_size
        with torch.no_grad():
            net(torch.rand(1, 3, side, side))
        hook.remove()
        grid = token_grid(net, name)
        out = grid.to_map(seen[0]) if grid is not None else seen[0]
        assert out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1, (name, seen[0].shape)
    assert token_grid(net, "timm:deit_tiny_distilled_patch16_224") == TokenGrid(2, 14, 14)  # class + distillation


def hand_gradcam(run, pixels: torch.Tensor, layer: torch.nn.Module, grid: TokenGrid, target: int) -> np.ndarray:
    """Grad-CAM written out: the layer's tokens without the class token, on the 10x10 grid, one scale per video."""
    seen = {}

    def keep(module, inputs, output):
        seen["a"] = output.detach().requires_grad_(True)
        return seen["a"]

    hook = layer.register_forward_hook(keep, prepend=True)
    try:
        (grad,) = torch.autograd.grad(run.model(pixels)[0, target], seen["a"])
    finally:
        hook.remove()
    acts, grads = (t[:, grid.prefix:].reshape(len(t), grid.rows, grid.cols, -1) for t in (seen["a"].detach(), grad))
    cam = torch.relu((grads.mean((1, 2), keepdim=True) * acts).sum(-1))[:, None]  # (T, 1, 10, 10)
    up = torch.nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (up / up.max()).numpy() if up.max() > 0 else up.numpy()


@pytest.mark.parametrize("run_name,layer", [("vit", "blocks.5.norm1"), ("layer", "blocks.2")])
def test_vit_maps_equal_a_hand_written_gradcam_on_the_patch_grid(vit_runs, run_name, layer):
    root, paths = vit_runs
    run = load_run_model(root / run_name, "cpu")
    pixels = to_pixels(decode_for(run, paths[0]).frames, run.device)
    net = run.model.backbone.model if run_name == "layer" else run.model.backbone  # inside the --layer LayerPool
    grid = token_grid(run.model.backbone, VIT)
    with_evidence = 0
    _, all_maps = compute_maps(run.model, pixels, layer, VIT, "gradcam", list(range(len(run.labels))))
    for target, maps in enumerate(all_maps):
        expected = hand_gradcam(run, pixels, net.get_submodule(layer), grid, target)
        np.testing.assert_allclose(maps.cams, expected, atol=1e-5)
        with_evidence += bool(expected.max() > 0)
    assert with_evidence >= 1  # the gradient reached the patch tokens


@pytest.mark.parametrize("run_name,layer", [("vit", "blocks.5.norm1"), ("layer", "blocks.2")])
def test_explain_of_a_vit_run_defaults_to_its_cam_layer_or_the_stores_layer(vit_runs, tmp_path, run_name, layer):
    root, paths = vit_runs
    res = invoke("explain", root / run_name, paths[0], "--frames", "2", "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["png"].endswith(".gradcam.png") and 0 < row["prob"] <= 1
    res = invoke("explain", root / run_name, paths[0], "--layer", "blocks.9", "--out", tmp_path, "--force")
    assert res.exit_code == 1 and "blocks.5" in res.output and "model.blocks" not in res.output, res.output
    assert Explainer(root / run_name, ExplainConfig(device="cpu")).layer == layer
