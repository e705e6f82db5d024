"""`cli.py backbones` lists every family: torchvision's registry, a curated few of each family's names or the ones
matching --filter, each with dim, rows and whether its weights are on this machine; a missing library is one line."""
import json

import pytest
from helpers import HF_TINY, invoke, save_tiny_hf

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
        assert mine and all(r["dim"] or r["note"] for r in mine), (family, mine)  # described, or a note why not


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


def hf_cache_with(tmp_path, monkeypatch, repo: str, files: dict[str, bytes] | None = None) -> tuple:
    """An empty Hugging Face cache at tmp_path/hf (monkeypatched in) and the snapshot folder of `repo` in it, holding
    `files`."""
    from huggingface_hub import constants

    folder = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc")
    snapshot = folder / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for name, content in (files or {}).items():
        (snapshot / name).write_bytes(content)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return snapshot


@pytest.mark.slow  # describes 7 CLIPs on the meta device (~1 s each on a busy 2-core machine)
def test_open_clip_lists_its_curated_tags_and_its_pretrained_names_with_weights_local_where_cached(tmp_path,
                                                                                                  monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    # ViT-B-32/openai's hf_hub repository, holding the safetensors twin OpenCLIP prefers
    hf_cache_with(tmp_path, monkeypatch, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b""})
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip
    rows = {r.name: r for r in catalog(CatalogQuery("open_clip"))}
    assert rows["open_clip:ViT-B-32/openai"].dim == 512 and rows["open_clip:ViT-B-32/openai"].rows == "image"
    assert rows["open_clip:ViT-B-32/openai"].local is True and rows["open_clip:ViT-B-16/openai"].local is False
    assert rows["open_clip:ViT-L-14/laion2b_s32b_b82k"].dim == 768
    tagged = [f"open_clip:ViT-B-32/{tag}" for tag in open_clip.list_pretrained_tags_by_model("ViT-B-32")
              if tag.startswith("laion2b")]
    assert [r["name"] for r in listed("--family", "open_clip", "--filter", "ViT-B-32/laion2b*")] == tagged


@pytest.fixture()
def hf_caches_cleared():
    """The hf family caches what it read of a repository (its snapshot folder, config, spec): cleared after a test
    that points the Hugging Face cache elsewhere."""
    transformers = pytest.importorskip("transformers")
    from pipeline.families import hf

    yield transformers
    for function in vars(hf).values():
        if hasattr(function, "cache_clear"):
            function.cache_clear()


def test_hf_lists_curated_repos_described_where_cached_and_says_how_to_fetch_the_others(tmp_path, monkeypatch,
                                                                                        hf_caches_cleared):
    transformers = hf_caches_cleared
    snapshot = hf_cache_with(tmp_path, monkeypatch, "facebook/dinov2-small")
    save_tiny_hf(snapshot, transformers.Dinov2Config(**HF_TINY, image_size=30, patch_size=6),
                 transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 30, "width": 30}))
    rows = {r.name: r for r in catalog(CatalogQuery("hf"))}
    assert rows["hf:facebook/dinov2-small"].dim == 32 and rows["hf:facebook/dinov2-small"].local is True
    other = rows["hf:MCG-NJU/videomae-base"]
    assert other.dim is None and other.local is False and "hf download MCG-NJU/videomae-base" in other.note
    assert [r["name"] for r in listed("--family", "hf", "--filter", "facebook/dinov2*")] == [
        "hf:facebook/dinov2-base", "hf:facebook/dinov2-small", "hf:facebook/dinov2-with-registers-small"]
