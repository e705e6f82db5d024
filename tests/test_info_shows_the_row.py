"""`cli.py info` says what a store's rows are where they are not the backbone's own row: its `layer` (--layer) and
its `token_pool` (--pool), each shown only where set."""
import pytest
from helpers import HF_TINY, extract_flags, invoke, save_tiny_hf, write_clips


def info_rows(store) -> dict[str, str]:
    res = invoke("info", store)
    assert res.exit_code == 0, res.output
    return {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.output.splitlines()
            if line.count("│") >= 3}


def test_info_shows_a_stores_layer_and_token_pool_where_set(tiny_store, tmp_path):
    manifest = write_clips(tmp_path, ["c0.mkv", "c1.mkv"], frames=2)
    res = invoke("extract", manifest, *extract_flags(), "--layer", "layer3", "--store", tmp_path / "layer")
    assert res.exit_code == 0, res.output
    plain, layer = info_rows(tiny_store), info_rows(tmp_path / "layer")
    assert layer["layer"] == "layer3" and "token_pool" not in layer
    assert "layer" not in plain and "token_pool" not in plain and plain["backbone"] == "resnet18"


@pytest.mark.slow  # imports transformers (~5 s on a busy 2-core machine)
def test_info_shows_the_token_pool_of_a_pool_cls_store(tmp_path):
    transformers = pytest.importorskip("transformers")
    vit = save_tiny_hf(tmp_path / "vit", transformers.ViTConfig(**HF_TINY, image_size=32, patch_size=8),
                       transformers.ViTImageProcessor(size={"height": 32, "width": 32}))
    manifest = write_clips(tmp_path, ["c0.mkv", "c1.mkv"], frames=2)
    res = invoke("extract", manifest, *extract_flags(backbone=f"hf:{vit}", weights="DEFAULT"), "--pool", "cls",
                 "--store", tmp_path / "cls")
    assert res.exit_code == 0, res.output
    rows = info_rows(tmp_path / "cls")
    assert rows["token_pool"] == "cls" and "layer" not in rows
