"""Backbone families (pipeline/families): prefixed names select a library's model and its own preprocessing; stored
rows equal the library's forward on the library's transform of the same decoded frames; torchvision runs import none
of the libraries; weights come from a file, seeded random init, or fail in one line offline."""
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featstore import open_store
from helpers import write_smooth_clips
from pipeline.backbones import BackboneError, get_spec, weights_for
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract, resolve
from pipeline.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
FAMILY_LIBRARIES = {"timm", "open_clip", "transformers", "huggingface_hub"}


@pytest.fixture()
def videos(tmp_path):
    """Two lossless 96x128 clips of 4 smooth frames (a resize that differs between filters would show)."""
    return write_smooth_clips(tmp_path)


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def seeded_timm(timm, model: str, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(model, pretrained=False, num_classes=0).eval()


def timm_rows(timm, net: torch.nn.Module, frames: np.ndarray, size: int | None) -> np.ndarray:
    """timm alone: its resolved data config (at `size`), its eval transform on PIL frames, its model."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(net)
    if size is not None:
        cfg["input_size"] = (3, size, size)
    transform = create_transform(**cfg, is_training=False)
    x = torch.stack([transform(Image.fromarray(f)) for f in frames])
    with torch.inference_mode():
        return net(x).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def extract_timm(manifest: Path, store: Path, name: str, weights: str = "none", size: int | None = None):
    cfg = ExtractConfig(backbone=name, weights=weights, sampling=Sampling(every=1), size=size, batch_size=4,
                        workers=0, precision="fp32", dtype="float32")
    result = extract(load_source(manifest), store, cfg)
    assert result.done == 2 and not result.failed
    return open_store(store)


@pytest.mark.parametrize("model,size", [("resnet10t", None), ("resnet10t", 64), ("convnext_atto", 96),
                                        ("vit_tiny_patch16_224", None)])
def test_timm_rows_equal_timm_forward_on_its_own_eval_transform_of_the_same_frames(timm, videos, tmp_path, model,
                                                                                    size):
    manifest, written = videos
    store = extract_timm(manifest, tmp_path / "s", f"timm:{model}", size=size)
    net = seeded_timm(timm, model)
    for vid, frames in written.items():
        got, want = store.features(vid), timm_rows(timm, net, frames, size)
        assert got.shape == want.shape == (4, get_spec(f"timm:{model}").dim)
        assert cosines(got, want).min() >= 0.9999, (model, cosines(got, want))
    recipe = store.config.recipe
    assert recipe["library"] == "timm" and recipe["version"] == timm.__version__
    assert recipe["data_config"]["interpolation"] == "bicubic" and "recipe" in store.config.fingerprint_keys()


def test_a_vit_built_for_one_input_refuses_another_size_naming_the_one_it_takes(timm, videos, tmp_path):
    cfg = ExtractConfig(backbone="timm:vit_tiny_patch16_224", weights="none", size=112, workers=0)
    with pytest.raises(BackboneError, match="--size 112 does not fit these weights: they take exactly --size 224"):
        resolve(cfg, None, [])


def test_timm_checkpoint_file_loads_strictly_and_its_hash_is_the_fingerprint(timm, videos, tmp_path):
    manifest, written = videos
    full = timm.create_model("resnet10t", pretrained=False, num_classes=7)  # a fine-tuned checkpoint, head included
    torch.save({"state_dict": full.state_dict()}, tmp_path / "ft.pth")
    store = extract_timm(manifest, tmp_path / "s", "timm:resnet10t", str(tmp_path / "ft.pth"), size=64)
    full.reset_classifier(0)
    rows = timm_rows(timm, full.eval(), written["v0"], 64)
    assert cosines(store.features("v0"), rows).min() >= 0.9999
    assert store.config.weights.startswith("file:sha256:") and store.config.weights_sha256
    backbone_only = seeded_timm(timm, "resnet10t", seed=3)  # what finetune saves: no classifier
    torch.save(backbone_only.state_dict(), tmp_path / "b.pt")
    other = resolve(ExtractConfig(backbone="timm:resnet10t", weights=str(tmp_path / "b.pt"), size=64), None, [])
    first = resolve(ExtractConfig(backbone="timm:resnet10t", weights=str(tmp_path / "ft.pth"), size=64), None, [])
    keys = first.store.fingerprint_keys()
    assert first.store.fingerprint(keys) != other.store.fingerprint(keys)
    newer = replace(first.store, recipe={**first.store.recipe, "version": "99.0"})
    assert newer.fingerprint(keys) != first.store.fingerprint(keys)
    from pipeline.backbones import build_backbone
    assert build_backbone(other.backbone).dim == 512


def test_a_checkpoint_of_another_architecture_is_refused_not_loaded_partly(timm, tmp_path):
    torch.save(seeded_timm(timm, "convnext_atto").state_dict(), tmp_path / "c.pth")
    from pipeline.backbones import load_backbone
    with pytest.raises(BackboneError, match="c.pth does not fit timm:resnet10t"):
        load_backbone("timm:resnet10t", str(tmp_path / "c.pth"))


def test_unknown_family_model_and_weights_fail_in_one_line_naming_what_to_use(timm):
    with pytest.raises(BackboneError, match="unknown backbone family 'tim:'.*timm:NAME.*resnet18"):
        get_spec("tim:resnet10t")
    with pytest.raises(BackboneError, match="Unknown model.*timm.list_models"):
        get_spec("timm:resnet10x")
    with pytest.raises(BackboneError, match="--weights IMAGENET1K_V1 does not apply to timm:resnet10t: use DEFAULT"):
        weights_for("timm:resnet10t", "IMAGENET1K_V1")


def test_a_missing_family_library_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    monkeypatch.delitem(sys.modules, "pipeline.families.timm", raising=False)
    with pytest.raises(BackboneError, match=r'timm:resnet10t needs timm, which is not installed: '
                                            r'pip install -e "\.\[timm\]"'):
        get_spec("timm:resnet10t")


def test_a_hub_name_offline_exits_1_in_one_line_naming_the_file_and_where_to_put_it(timm, videos, tmp_path):
    manifest, _ = videos
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "cli.py", "extract", str(manifest), "--backbone", "timm:resnet10t",
                        "--workers", "0", "--store", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 1, p.stderr
    lines = [line for line in p.stderr.splitlines() if "error" in line]  # (the progress bar aside)
    assert len(lines) == 1 and "resnet10t.c3_in1k/resolve/main/model.safetensors" in lines[0], p.stderr
    assert "--weights /path/to/model.safetensors" in lines[0] and not (tmp_path / "s").exists()


STARTUP_PROBE = """
import atexit, sys
atexit.register(lambda: print("FAMILIES", sorted(m for m in sys.modules if m.split(".")[0] in {libs!r})))
sys.argv = ["cli.py", *sys.argv[1:]]
import cli
cli.main()
"""


def test_extract_with_a_torchvision_backbone_imports_no_family_library(videos, tmp_path):
    manifest, _ = videos
    args = ["extract", str(manifest), "--backbone", "resnet18", "--weights", "none", "--size", "32", "--workers", "0",
            "--limit", "1", "--store", str(tmp_path / "s")]
    probe = STARTUP_PROBE.format(libs=FAMILY_LIBRARIES)
    p = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "FAMILIES []" in p.stdout, p.stdout


def test_a_timm_store_resumes_and_re_embeds_files_exactly_as_it_was_made(timm, videos, tmp_path):
    from pipeline.extract import embed_files

    manifest, _ = videos
    store = extract_timm(manifest, tmp_path / "s", "timm:resnet10t", size=64)
    again = extract(load_source(manifest), tmp_path / "s", ExtractConfig(
        backbone="timm:resnet10t", weights="none", sampling=Sampling(every=1), size=64, workers=0, dtype="float32"))
    assert again.skipped == 2 and again.done == 0  # same recipe read back from the store: same fingerprint
    [record] = embed_files([str(tmp_path / "v1.mkv")], store.config, device="cpu")
    np.testing.assert_allclose(record.features, store.features("v1"), rtol=1e-4, atol=1e-5)


def test_default_weights_come_from_the_hugging_face_cache_without_network(timm, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from pipeline.backbones import build_backbone

    snapshot = tmp_path / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    hub = timm.create_model("resnet10t", pretrained=False).eval()  # as on the hub: the 1000-class head included
    save_file(hub.state_dict(), snapshot / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen = weights_for("timm:resnet10t", "DEFAULT")
    assert chosen.id.startswith("hub:timm/resnet10t.c3_in1k:sha256:") and chosen.file.endswith("model.safetensors")
    hub.reset_classifier(0)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(build_backbone(chosen).model(x), hub(x), atol=1e-5)
