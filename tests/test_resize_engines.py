"""--resize-engine: each engine lands within a level or two of the exact recipe, turns phone videos upright like it,
and a store records its engine so that it resumes with it (older stores, which lack the key, mean the exact one)."""
import numpy as np
import pytest

from conftest import index_frames
from helpers import invoke, tiny_config, write_clips, write_rotated

from data.synth import write_video
from featstore import open_store
from pipeline.decode import RESIZE_ENGINES, Geometry, Sampling, SamplingError, decode_video
from pipeline.extract import ExtractConfig, ExtractError, config_from_store, extract
from pipeline.sources import load_source

SMOOTH = index_frames(6, 48, 64)  # gradients: resampling differences stay small, geometry mistakes do not


@pytest.fixture(scope="module")
def smooth_clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("engines") / "smooth.mp4", SMOOTH)


@pytest.mark.parametrize("engine", RESIZE_ENGINES[1:])
@pytest.mark.parametrize("geometry", [dict(size=32, resize=40), dict(size=48, resize=56), dict(size=24, crop="none")],
                         ids=["down", "up", "squash"])
def test_every_engine_lands_near_the_exact_recipe(smooth_clip, engine, geometry):
    exact = decode_video(smooth_clip, Sampling(), Geometry(**geometry))
    other = decode_video(smooth_clip, Sampling(), Geometry(**geometry, engine=engine))
    diff = np.abs(other.frames.astype(int) - exact.frames)
    assert other.frames.shape == exact.frames.shape and diff.mean() < 1.0 and diff.max() <= 8


@pytest.mark.parametrize("engine", RESIZE_ENGINES[1:])
@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_engines_turn_a_phone_video_upright_before_the_crop(tmp_path, engine, degrees):
    frames = np.zeros((2, 32, 48, 3), np.uint8)  # a red block marks the top-left corner as stored
    frames[:, :8, :12, 0] = 255
    rotated = write_rotated(tmp_path / "phone.mp4", frames, degrees)
    upright = write_video(tmp_path / "upright.mkv", np.ascontiguousarray(np.rot90(frames, degrees // 90, axes=(1, 2))))
    geometry = Geometry(size=24, resize=30, engine=engine)
    got, want = decode_video(rotated, Sampling(), geometry), decode_video(upright, Sampling(), geometry)
    assert np.abs(got.frames.astype(int) - want.frames).mean() < 1.0


def test_an_unknown_engine_names_the_flag():
    with pytest.raises(SamplingError, match="--resize-engine"):
        Geometry(engine="opencv")
    with pytest.raises(ExtractError, match="--resize-engine"):
        ExtractConfig(backbone="resnet18", resize_engine="opencv")


def _items(tmp_path):
    return load_source(write_clips(tmp_path, ["v0.mkv", "v1.mkv", "v2.mkv"], frames=3, height=40))


def _cfg(**kw):
    return tiny_config(**{"crop": "center", "dtype": "float16", "limit": 1, **kw})


def test_a_store_records_its_engine_and_resumes_with_it(tmp_path):
    items = _items(tmp_path)
    extract(items, tmp_path / "sws", _cfg(resize_engine="swscale"))
    config = open_store(tmp_path / "sws").config
    assert config.resize_engine == "swscale" and "resize_engine" in config.fingerprint_keys()
    assert config_from_store(config).resize_engine == "swscale"  # predict decodes new files the same way
    r = extract(items, tmp_path / "sws", _cfg(limit=None))  # auto: the store's own engine
    assert (r.skipped, r.done) == (1, 2) and open_store(tmp_path / "sws").config.resize_engine == "swscale"
    with pytest.raises(ExtractError, match="made with --resize-engine swscale, this run asks for exact"):
        extract(items, tmp_path / "sws", _cfg(resize_engine="exact", retry_failed=True, limit=None))


def test_the_exact_recipe_adds_no_key_so_older_stores_keep_their_fingerprint(tmp_path):
    items = _items(tmp_path)
    extract(items, tmp_path / "exact", _cfg(resize_engine="exact"))
    config = open_store(tmp_path / "exact").config
    assert config.resize_engine is None and "resize_engine" not in config.fingerprint_keys()
    r = extract(items, tmp_path / "exact", _cfg(limit=None))  # auto on a store without the engine: exact
    assert (r.skipped, r.done) == (1, 2)
    with pytest.raises(ExtractError, match="made with --resize-engine exact, this run asks for torch"):
        extract(items, tmp_path / "exact", _cfg(resize_engine="torch", limit=None))


def test_info_names_the_engine_a_store_was_made_with(tmp_path):
    items = _items(tmp_path)
    extract(items, tmp_path / "sws", _cfg(resize_engine="swscale"))
    extract(items, tmp_path / "exact", _cfg())  # auto on a new store: the default, the exact recipe
    assert "resize engine=swscale" in invoke("info", tmp_path / "sws").stdout
    assert "resize engine=exact" in invoke("info", tmp_path / "exact").stdout
