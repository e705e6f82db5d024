"""The Hugging Face family (pipeline/families/hf.py) and --pool: tiny configs saved with save_pretrained to temporary
directories (the offline path); stored rows equal transformers' own forward on its own processor's output of the same
decoded frames; the weights and the processor config are fingerprinted; --pool cls|mean rows are the CLS token and
the patch tokens' mean; a hub name without network fails in one line."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from featstore import open_store
from helpers import write_smooth_clips
from pipeline.backbones import BackboneError, build_backbone, weights_for
from pipeline.decode import ClipSampling, Sampling
from pipeline.extract import ExtractConfig, embed_files, extract, resolve
from pipeline.sources import load_source

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def save_tiny(path: Path, config, processor, seed: int = 0) -> Path:
    """A randomly initialised model of `config` and its processor, saved as save_pretrained writes them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.AutoModel.from_config(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models: a ViT (its processor squashes to 32x32, bilinear), a two-tower SigLIP (its vision tower is the
    backbone; squash, bicubic), a DINOv2 (shortest edge 40 then a 30x30 center
    crop, bicubic: on a 96x128 frame the crop's horizontal offset is 11.5, floored by transformers) and a VideoMAE of
    4-frame clips (shortest edge 40, crop 30)."""
    root = tmp_path_factory.mktemp("hf")
    crop = dict(size={"shortest_edge": 40}, crop_size={"height": 30, "width": 30})
    return {
        "vit": save_tiny(root / "vit", transformers.ViTConfig(**TINY, image_size=32, patch_size=8),
                         transformers.ViTImageProcessor(size={"height": 32, "width": 32})),
        "siglip": save_tiny(root / "siglip", transformers.SiglipConfig(
            vision_config=dict(**TINY, image_size=32, patch_size=8), text_config=dict(**TINY, vocab_size=99)),
            transformers.SiglipImageProcessor(size={"height": 32, "width": 32})),
        "dinov2": save_tiny(root / "dinov2", transformers.Dinov2Config(**TINY, image_size=30, patch_size=6),
                            transformers.BitImageProcessor(**crop)),
        "videomae": save_tiny(root / "videomae", transformers.VideoMAEConfig(
            **TINY, image_size=30, patch_size=6, num_frames=4, tubelet_size=2),
            transformers.VideoMAEImageProcessor(**crop)),
        "vjepa2": save_tiny(root / "vjepa2", transformers.VJEPA2Config(
            **TINY, crop_size=30, patch_size=6, frames_per_clip=4, tubelet_size=2, pred_hidden_size=32,
            pred_num_attention_heads=2, pred_num_hidden_layers=1, num_pooler_layers=1),
            transformers.VJEPA2VideoProcessor(crop_size=30)),
    }


@pytest.fixture()
def videos(tmp_path):
    """Two lossless 96x128 clips of 4 smooth frames (a resize or crop that differs would show)."""
    return write_smooth_clips(tmp_path)


def config(directory: Path, weights: str = "DEFAULT", **settings) -> ExtractConfig:
    name = f"hf:{directory}"
    video = directory.name in ("videomae", "vjepa2")
    sampling = ClipSampling(clip_len=4) if video else Sampling(every=1)
    return ExtractConfig(backbone=name, weights=weights, sampling=sampling, batch_size=4, workers=0,
                         precision="fp32", dtype="float32", **settings)


def library_outputs(directory: Path, frames: np.ndarray, video: bool = False):
    """transformers alone: the directory's model (a two-tower model's vision tower) and its processor (PIL backend)
    on the frames."""
    processor = transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    model = transformers.AutoModel.from_pretrained(directory).eval()
    model = getattr(model, "vision_model", model)
    pixels = processor([list(frames)] if video else list(frames), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return model(pixels)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("model", ["vit", "siglip", "dinov2"])
def test_hf_image_rows_equal_the_models_pooled_output_on_its_processors_pixels(tiny, videos, tmp_path, model):
    manifest, written = videos
    result = extract(load_source(manifest), tmp_path / "s", config(tiny[model]))
    assert result.done == 2 and not result.failed
    store = open_store(tmp_path / "s")
    for vid, frames in written.items():
        want = library_outputs(tiny[model], frames).pooler_output.numpy()
        got = store.features(vid)
        assert got.shape == want.shape == (4, 32)
        assert cosines(got, want).min() >= 0.9999, (model, cosines(got, want))
    recipe = store.config.recipe
    assert recipe["library"] == "transformers" and recipe["version"] == transformers.__version__
    assert recipe["config"]["model_type"].startswith(model) and "recipe" in store.config.fingerprint_keys()
    [again] = embed_files([str(tmp_path / "v1.mkv")], store.config, device="cpu")  # re-embedded as the store was
    np.testing.assert_allclose(again.features, store.features("v1"), rtol=1e-4, atol=1e-5)


def library_clip_rows(directory: Path, frames: np.ndarray) -> np.ndarray:
    """transformers alone: a video model's processor on one clip, the model's tokens averaged (V-JEPA 2: its
    encoder's, the predictor skipped)."""
    model = transformers.AutoModel.from_pretrained(directory).eval()
    if directory.name == "vjepa2":  # a video processor (torchvision backend: the only one video processors have)
        pixels = transformers.AutoVideoProcessor.from_pretrained(directory)([frames], return_tensors="pt")
        with torch.inference_mode():
            return model(pixels["pixel_values_videos"], skip_predictor=True).last_hidden_state.mean(1).numpy()
    return library_outputs(directory, frames, video=True).last_hidden_state.mean(1).numpy()


@pytest.mark.parametrize("model", ["videomae", "vjepa2"])
def test_hf_video_rows_are_clips_equal_to_the_model_on_its_processors_clip(tiny, videos, tmp_path, model):
    manifest, written = videos
    result = extract(load_source(manifest), tmp_path / "s", config(tiny[model]))
    assert result.done == 2 and result.unit == "clips"
    store = open_store(tmp_path / "s")
    for vid, frames in written.items():
        want = library_clip_rows(tiny[model], frames)
        got = store.features(vid)
        assert got.shape == want.shape == (1, 32)
        assert cosines(got, want).min() >= 0.9999, cosines(got, want)
    assert store.config.clip_len == 4


def test_a_videomae_clip_of_another_length_or_size_is_refused_naming_the_one_it_takes(tiny):
    with pytest.raises(BackboneError, match="--clip-len 8 does not fit .*it takes exactly --clip-len 4"):
        replace(config(tiny["videomae"]), sampling=ClipSampling(clip_len=8))
    with pytest.raises(BackboneError, match="--size 60 does not fit .*it takes exactly --size 30"):
        config(tiny["videomae"], size=60)


def test_other_weights_or_another_processor_config_change_the_fingerprint(tiny, tmp_path):
    first = resolve(config(tiny["vit"]), None, []).store
    keys = first.fingerprint_keys()
    reseeded = save_tiny(tmp_path / "vit2", transformers.ViTConfig(**TINY, image_size=32, patch_size=8),
                         transformers.ViTImageProcessor(size={"height": 32, "width": 32}), seed=1)
    other = resolve(config(tiny["vit"], weights=str(reseeded)), None, []).store
    assert other.weights.startswith("dir:sha256:") and other.weights != first.weights
    assert other.fingerprint(keys) != first.fingerprint(keys)
    remeaned = save_tiny(tmp_path / "vit3", transformers.ViTConfig(**TINY, image_size=32, patch_size=8),
                         transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4] * 3))
    moved = resolve(config(remeaned), None, []).store
    assert moved.weights == first.weights  # the same weights...
    assert moved.recipe["processor"]["image_mean"] == [0.4] * 3
    assert moved.fingerprint(keys) != first.fingerprint(keys)  # ...another recipe


def test_weights_none_is_the_configs_model_initialised_under_seed_0(tiny):
    chosen = weights_for(f"hf:{tiny['vit']}", "none")
    x = torch.rand(2, 3, 32, 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(tiny["vit"])).eval()
    with torch.inference_mode():
        got = build_backbone(chosen).model(x)
        want = transformers.AutoModel.from_pretrained(tiny["vit"]).eval()(x).pooler_output  # saved: seed 0's init
    assert chosen.id == "none(seed=0)"
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, other(x).pooler_output, atol=1e-3)


def test_pool_cls_and_mean_rows_are_the_cls_token_and_the_patch_tokens_mean(tiny, videos, tmp_path):
    manifest, written = videos
    outputs = library_outputs(tiny["vit"], written["v0"]).last_hidden_state  # (4, 1 + 16, 32)
    for pool, want in (("cls", outputs[:, 0]), ("mean", outputs[:, 1:].mean(1))):
        extract(load_source(manifest), tmp_path / pool, config(tiny["vit"], token_pool=pool))
        store = open_store(tmp_path / pool)
        assert cosines(store.features("v0"), want.numpy()).min() >= 0.9999, pool
        assert store.config.token_pool == pool and "token_pool" in store.config.fingerprint_keys()
    assert open_store(tmp_path / "cls").config.fingerprint(["token_pool"]) != \
        open_store(tmp_path / "mean").config.fingerprint(["token_pool"])


def test_pool_picks_timms_own_token_pooling_for_a_timm_vit():
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        tokens = net.forward_features(x)  # (1, 1 + 100, 64), normed
        for pool, want in (("cls", tokens[:, 0]), ("mean", tokens[:, net.num_prefix_tokens:].mean(1))):
            got = build_backbone(weights_for("timm:test_vit", "none", token_pool=pool)).model(x)
            assert torch.allclose(got, want, atol=1e-5), pool


def test_pool_on_a_model_without_tokens_or_without_a_cls_token_fails_in_one_line(tiny):
    with pytest.raises(BackboneError, match="--pool cls does not apply to resnet18: its output has no tokens"):
        resolve(ExtractConfig(backbone="resnet18", weights="none", token_pool="cls"), None, [])
    with pytest.raises(BackboneError, match="--pool cls does not apply to .*videomae: it has no CLS token; use "
                                            "--pool mean"):
        resolve(config(tiny["videomae"], token_pool="cls"), None, [])


def test_a_directory_lacking_the_pooler_is_refused_unless_pool_says_the_row_needs_none(tiny, tmp_path):
    vit = transformers.ViTModel(transformers.ViTConfig(**TINY, image_size=32, patch_size=8), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "bare")  # as a ViTForImageClassification checkpoint: no pooler weights
    with pytest.raises(BackboneError, match="does not fit .*lacks .* weights \\(pooler.dense.*--pool cls\\|mean"):
        build_backbone(weights_for(f"hf:{tiny['vit']}", str(tmp_path / "bare")))
    assert build_backbone(weights_for(f"hf:{tiny['vit']}", str(tmp_path / "bare"), token_pool="cls")).dim == 32


@pytest.mark.slow
def test_a_hub_name_offline_exits_1_in_one_line_naming_what_to_fetch(videos, tmp_path):
    manifest, _ = videos
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    p = subprocess.run([sys.executable, "cli.py", "extract", str(manifest), "--backbone", "hf:MCG-NJU/videomae-base",
                        "--workers", "0", "--store", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error")]  # (import warnings aside)
    assert len(lines) == 1 and "`hf download MCG-NJU/videomae-base`" in lines[0], p.stderr
    assert "models--MCG-NJU--videomae-base into " + str(tmp_path / "hf-home" / "hub") in lines[0]
    assert "--backbone hf:/path/to/dir" in lines[0] and not (tmp_path / "s").exists()


def test_a_hub_name_is_read_from_the_hugging_face_cache_without_network(tiny, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny-vit" / "snapshots" / "abc123"
    shutil.copytree(tiny["vit"], snapshot)  # as `hf download org/tiny-vit` leaves it
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    chosen = weights_for("hf:org/tiny-vit", "DEFAULT")
    assert chosen.id.startswith("hub:org/tiny-vit:sha256:") and chosen.file == str(snapshot)
    assert chosen.sha256 == weights_for(f"hf:{tiny['vit']}", "DEFAULT").sha256
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        want = transformers.AutoModel.from_pretrained(tiny["vit"]).eval()(x).pooler_output
        assert torch.allclose(build_backbone(chosen).model(x), want, atol=1e-6)
