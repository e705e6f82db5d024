"""featstore.config.StoreConfig: what a store records, read and written back exactly, fingerprinted as before."""
import hashlib
import json

import h5py
import numpy as np
from helpers import write_clips

from featstore import StoreConfig, StoreWriter, VideoRecord, compact, open_store
from featstore.config import FINGERPRINT_KEYS
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract, resolve, store_geometry
from pipeline.sources import load_source

# A store's config as extract wrote it before engines, int8 and clips existed: none of the optional keys.
OLD = {"backbone": "resnet18", "weights": "none(seed=0)", "weights_arg": "none", "every": 2, "frames": None,
       "fps": None, "max_frames": None, "size": 32, "resize": 37, "crop": "center", "mean": [0.5, 0.5, 0.5],
       "std": [0.2, 0.2, 0.2], "dtype": "float16", "dim": 4, "device": "cpu", "format": 2}


def old_fingerprint(config: dict) -> str:
    """The fingerprint exactly as the code before StoreConfig computed it."""
    subset = {k: config.get(k) for k in sorted(FINGERPRINT_KEYS)}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


def write_old_store(path, config: dict) -> str:
    """A store of one shard, its header's and shard's attributes then set to `config` as the old code wrote them."""
    with StoreWriter(path, config, FINGERPRINT_KEYS, dim=4) as w:
        w.add(VideoRecord("v0", path="v0.mkv", status="ok", features=np.ones((2, 4), np.float32),
                          frame_index=np.array([0, 2]), time_s=np.array([0.0, 0.1])))
    for file in path.glob("*.h5"):
        with h5py.File(file, "r+") as f:
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            f.attrs["fingerprint"] = old_fingerprint(config)
    return old_fingerprint(config)


def test_a_config_read_from_hdf5_attributes_writes_back_the_same_attributes(tmp_path):
    config = {**OLD, "clip_len": None, "resize_engine": "swscale", "fused_stores": [{"store": "a"}]}
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.attrs["config"] = json.dumps(config, sort_keys=True)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        read = StoreConfig.from_attrs(json.loads(f.attrs["config"]))
    assert read.to_attrs() == config and json.dumps(read.to_attrs(), sort_keys=True) == json.dumps(config,
                                                                                                   sort_keys=True)
    assert read.resize_engine == "swscale" and read.extra == {"fused_stores": [{"store": "a"}]}
    assert StoreConfig.from_attrs(read.to_attrs()) == read


def test_an_old_store_without_the_optional_keys_keeps_its_fingerprint_and_its_attributes(tmp_path):
    fp = write_old_store(tmp_path / "s", OLD)
    store = open_store(tmp_path / "s")
    assert store.fingerprint == fp == store.config.fingerprint(store.fingerprint_keys)
    assert store.config.fingerprint_keys() == FINGERPRINT_KEYS  # no optional key is set
    assert store.config.to_attrs() == OLD  # nothing added: no clip, engine or int8 keys
    out = compact(tmp_path / "s", tmp_path / "c.h5")
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"]) == OLD and f.attrs["fingerprint"] == fp
    with StoreWriter(tmp_path / "s", {**OLD, "clip_len": None, "quantization": None}, FINGERPRINT_KEYS, dim=4):
        pass  # the same settings from code that knows the newer keys (unset): a resume, not a mismatch


def test_a_fingerprint_difference_names_the_setting_and_both_values():
    store, run = StoreConfig.from_attrs({**OLD, "every": 2}), StoreConfig.from_attrs({**OLD, "every": 3})
    assert store.diff(run, FINGERPRINT_KEYS) == ["every: store has 2, this run has 3"]
    assert store.feature_diffs(["every", "format"], run.with_extra(format=1), ["every"]) == [
        "every: store has 2, this run has 3"]  # the layout version is not a feature setting


def test_the_geometry_a_store_records_is_the_one_extract_decoded_with(tmp_path):
    items = load_source(write_clips(tmp_path, ["v0.mkv"], height=40, width=48))
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=2), size=32,
                        resize_engine="swscale", batch_size=4, workers=0, precision="fp32")
    extract(items, tmp_path / "s", cfg)
    store = open_store(tmp_path / "s")
    run = resolve(cfg, None, items)
    assert store_geometry(store.config) == run.geometry
    assert (run.geometry.size, run.geometry.engine, store.config.is_clip) == (32, "swscale", False)
    assert store.config == run.store.with_extra(format=store.config.format)  # what resolve decided is what it records
