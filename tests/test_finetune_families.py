"""finetune of a timm image model: its own preprocessing, a backbone.pt that is timm's plain state_dict, and the
file back through `extract --backbone timm:NAME --weights backbone.pt` (and refused for another backbone)."""
import json

import pytest
import torch
from helpers import assert_backbone_pt_extracts_its_own_store

from data.synth import make_temporal_dataset
from finetune import FinetuneConfig, finetune
from finetune.run import setup
from pipeline.backbones import BackboneError, load_backbone, preprocess_for
from pipeline.sources import load_source

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "timm:test_convnext"  # 0.2 M parameters; any input side (ViTs take their one size only)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_timm")
    clips = make_temporal_dataset(root / "clips", n_per_class=4, frames=4, size=32, seed=2)
    cfg = FinetuneConfig(backbone=NAME, weights="none", size=32, crop="none", segments=2, precision="fp32",
                         workers=0, batch_size=4, epochs=1, refit=False)
    with torch.random.fork_rng(devices=[]):
        finetune(load_source(clips), cfg, root / "run")
    return root / "run", clips


def test_finetune_of_a_timm_model_uses_timms_own_recipe():
    got = setup(FinetuneConfig(backbone=NAME, weights="none", size=32, crop="none", device="cpu"))
    pre = preprocess_for(NAME)
    cfg = timm.data.resolve_model_data_config(timm.create_model("test_convnext", num_classes=0))
    assert pre.mean == tuple(cfg["mean"]) and got.geometry.resample == pre.resample == "pil-bicubic"
    assert got.geometry.size == 32 and got.geometry.resize == int(32 / cfg["crop_pct"])  # timm's crop_pct rule


def test_timm_backbone_pt_is_timms_state_dict_and_round_trips_through_extract(tuned, tmp_path):
    run, clips = tuned
    saved = torch.load(run / "backbone.pt", weights_only=True)
    timm.create_model("test_convnext", num_classes=0).load_state_dict(saved)  # strict: timm's own keys, no head
    assert json.loads((run / "backbone.json").read_text())["backbone"] == NAME
    loaded = load_backbone(NAME, str(run / "backbone.pt")).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert_backbone_pt_extracts_its_own_store(run, clips, NAME, tmp_path)
    for other in ("timm:test_convnext2", "resnet18"):  # another timm model, a torchvision one
        with pytest.raises(BackboneError, match=f"holds {NAME} weights.*--backbone {NAME}"):
            load_backbone(other, str(run / "backbone.pt"))
