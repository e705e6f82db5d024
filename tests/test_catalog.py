"""`cli.py backbones` lists every family: torchvision's registry, a curated few of each family's names or the ones
matching --filter, each with dim, rows and whether its weights are on this machine; a missing library is one line."""
import json

import pytest
from helpers import invoke

import pipeline.catalog
from pipeline.backbones import FAMILIES, get_spec
from pipeline.catalog import CatalogQuery, catalog

timm = pytest.importorskip("timm")


def listed(*flags) -> list[dict]:
    res = invoke("backbones", *flags, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow  # describes 8 real timm models (on the meta device: ~1 s each on a busy 2-core machine)
def test_backbones_lists_torchvision_and_timms_curated_names_with_dim_and_rows():
    rows = listed()
    families = [r["family"] for r in rows]
    assert families.index("timm") > max(i for i, f in enumerate(families) if f == "torchvision")  # torchvision first
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["dim"] == 2048 and by_name["timm:convnext_tiny"]["dim"] == 768
    assert by_name["timm:vit_small_patch14_dinov2"]["rows"] == "image"
    assert isinstance(by_name["timm:convnext_tiny"]["local"], bool)
    timm_note = [r for r in rows if r["family"] == "timm"][-1]
    assert "--filter" in timm_note["note"] and timm_note["dim"] is None  # the curated few say how to search
    for family in FAMILIES:  # every family has its rows, or one line saying why it has none
        mine = [r for r in rows if r["family"] == family]
        assert mine and (any(r["dim"] for r in mine) or len(mine) == 1 and mine[0]["note"]), (family, mine)


def test_a_filter_lists_the_librarys_matching_names_and_counts_what_it_leaves_out(monkeypatch):
    rows = listed("--family", "timm", "--filter", "test_vit*")
    assert [r["name"] for r in rows] == [f"timm:{n}" for n in timm.list_models("test_vit*")]
    assert all(r["dim"] == get_spec(r["name"]).dim and r["family"] == "timm" for r in rows)
    monkeypatch.setattr(pipeline.catalog, "DESCRIBED", 3)
    many = catalog(CatalogQuery("timm", "test_*"))
    assert len(many) == 3 + 1 and many[-1].note == f"and {len(timm.list_models('test_*')) - 3} more names: narrow --filter"
    assert [r["name"] for r in listed("--family", "torchvision", "--filter", "resnet1*")] == [
        "resnet101", "resnet152", "resnet18"]


def test_weights_are_local_where_the_cache_holds_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hf" / "models--timm--test_vit.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    local = {r.name: r.local for r in catalog(CatalogQuery(filter="test_vit*")) + catalog(CatalogQuery())}
    assert local["timm:test_vit"] is True and local["timm:test_vit2"] is False
    assert local["resnet18"] is True and local["resnet34"] is False


def test_a_family_whose_library_is_missing_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(FAMILIES, "nolib", ("pipeline.families.nolib", "framecache_no_such_library", "nolib"))
    res = invoke("backbones", "--family", "nolib")
    assert res.exit_code == 0 and 'framecache_no_such_library is not installed: pip install -e ".[nolib]"' in \
        res.output, res.output
    res = invoke("backbones", "--family", "clip")
    assert res.exit_code == 1 and "is not a family; choose one of: torchvision, timm" in res.output
