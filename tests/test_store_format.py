"""Store format 2 (rows are spans) beside format 1 (rows are frames): old stores open, read, resume, keep their
fingerprint. The format-1 store is written here with plain h5py, exactly as the format-1 writer laid it out."""
import hashlib
import json

import h5py
import numpy as np
import pytest
from helpers import tiny_config, write_clips

from featstore import FORMAT_VERSION, ConfigMismatch, StoreError, StoreWriter, VideoRecord, compact, open_store
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract
from pipeline.sources import load_source

STR = h5py.string_dtype("utf-8")
# What the format-1 code fingerprinted, in its order (pipeline/extract.py before rows became spans).
FORMAT1_KEYS = ("format", "backbone", "weights", "every", "frames", "fps", "max_frames",
                "size", "resize", "crop", "mean", "std", "dtype")


def format1_fingerprint(config: dict) -> str:
    subset = {k: config.get(k) for k in sorted(FORMAT1_KEYS)}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


def write_format1_store(path, config: dict, videos: dict[str, np.ndarray], fps: float = 25.0,
                        labels: list[str] | None = None, splits: list[str] | None = None) -> str:
    """A format-1 store: header + one shard of frame rows (every 2nd frame), the format-1 datasets only."""
    fp = format1_fingerprint(config)
    dim = next(iter(videos.values())).shape[1]
    path.mkdir(parents=True)

    def attrs(f):
        f.attrs["framecache_format"] = 1
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["fingerprint"] = fp
        f.attrs["fingerprint_keys"] = json.dumps(sorted(FORMAT1_KEYS))
        f.attrs["dim"] = dim

    with h5py.File(path / "_store.h5", "w") as f:
        attrs(f)
    with h5py.File(path / "p0-000000.h5", "w") as f:
        attrs(f)
        feats = np.concatenate(list(videos.values()))
        index = np.concatenate([np.arange(len(v)) * 2 for v in videos.values()])
        f.create_dataset("features", data=feats.astype(np.float32), chunks=(128, dim), maxshape=(None, dim),
                         fletcher32=True)
        f.create_dataset("frame_index", data=index.astype(np.int64))
        f.create_dataset("time_s", data=index / fps)
        lengths = [len(v) for v in videos.values()]
        columns = {"video_id": list(videos), "path": [f"{v}.mkv" for v in videos], "label": labels or ["a"] * len(videos),
                   "group": [""] * len(videos), "split": splits or ["train"] * len(videos), "status": ["ok"] * len(videos),
                   "error": [""] * len(videos)}
        for name, values in columns.items():
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)
        numbers = {"offset": np.cumsum([0] + lengths[:-1]), "length": lengths, "fps": [fps] * len(videos),
                   "n_frames": [2 * n for n in lengths], "width": [32] * len(videos), "height": [32] * len(videos)}
        for name, values in numbers.items():
            f.create_dataset(name, data=np.asarray(values, dtype=np.float64 if name == "fps" else np.int64))
    return fp


def test_a_format1_store_reads_as_frame_spans_and_takes_appends_in_its_own_format(tmp_path):
    config = {"format": 1, "backbone": "resnet18", "every": 2, "dtype": "float32"}
    rng = np.random.default_rng(0)
    old = {"v0": rng.standard_normal((3, 4)).astype(np.float32)}
    fp = write_format1_store(tmp_path / "s", config, old)
    s = open_store(tmp_path / "s")
    assert s.format == 1 and s.fingerprint == fp
    np.testing.assert_array_equal(s.features("v0"), old["v0"])
    np.testing.assert_array_equal(s.frame_end("v0"), s.frame_index("v0") + 1)
    np.testing.assert_allclose(s.time_end_s("v0"), s.time_s("v0") + 1 / 25)
    keys = [k for k in FORMAT1_KEYS if k != "format"]  # today's pipeline no longer lists it: the store owns it
    with StoreWriter(tmp_path / "s", {k: v for k, v in config.items() if k != "format"}, keys, dim=4) as w:
        assert (w.fp, w.format) == (fp, 1)
        w.add(VideoRecord("v1", features=np.ones((2, 4), np.float32), frame_index=np.array([0, 2]),
                          time_s=np.array([0.0, 0.08])))
    s = open_store(tmp_path / "s")
    assert s.ids() == ["v0", "v1"] and s.fingerprint == fp
    np.testing.assert_array_equal(s.frame_end("v1"), [1, 3])
    for shard in (tmp_path / "s").glob("p0-*.h5"):
        with h5py.File(shard) as f:
            assert f.attrs["framecache_format"] == 1 and "frame_end" not in f and f.attrs["fingerprint"] == fp
    # clip rows cannot go into a frame-row store, and a clip setting is a different fingerprint anyway
    with pytest.raises(ConfigMismatch, match="clip_len: store has None, this run has 16"):
        StoreWriter(tmp_path / "s", {**config, "clip_len": 16}, keys + ["clip_len"], dim=4)
    with pytest.raises(StoreError, match="format-1 store"):
        with StoreWriter(tmp_path / "s", config, keys, dim=4) as w:
            w.add(VideoRecord("c", features=np.ones((1, 4), np.float32), frame_index=np.array([0]),
                              frame_end=np.array([16]), time_s=np.array([0.0])))
    one = compact(tmp_path / "s", tmp_path / "one.h5")
    assert open_store(one).format == 1 and open_store(one).fingerprint == fp


def test_a_new_store_is_format_2_and_keeps_clip_spans(tmp_path):
    with StoreWriter(tmp_path / "s", {"backbone": "r3d_18", "clip_len": 16}, ["backbone", "clip_len"], dim=2) as w:
        w.add(VideoRecord("v", features=np.ones((2, 2), np.float32), frame_index=np.array([0, 16]),
                          frame_end=np.array([16, 20]), time_s=np.array([0.0, 0.64]),
                          time_end_s=np.array([0.64, 0.8])))
    s = open_store(tmp_path / "s")
    assert s.format == FORMAT_VERSION == 2
    np.testing.assert_array_equal(s.frame_end("v"), [16, 20])
    np.testing.assert_allclose(s.time_end_s("v"), [0.64, 0.8])


def test_a_store_made_before_clip_settings_existed_resumes_with_the_same_fingerprint(tmp_path):
    items = load_source(write_clips(tmp_path, ["v0.mkv", "v1.mkv", "v2.mkv"]))
    cfg = tiny_config(sampling=Sampling(every=2), limit=1)
    # Today's config of these settings, as the format-1 code recorded it (it had no clip keys at all).
    extract(items, tmp_path / "today", cfg)
    today = open_store(tmp_path / "today").config
    assert set(today.fingerprint_keys()) == set(FORMAT1_KEYS) - {"format"}
    before = {**{k: v for k, v in today.to_attrs().items() if k not in ("clip_len", "clip_stride", "clips")}, "format": 1}
    fp = write_format1_store(tmp_path / "old", before, {"v0": open_store(tmp_path / "today").features("v0")})
    r = extract(items, tmp_path / "old", ExtractConfig(**{**cfg.__dict__, "limit": None}))
    assert (r.skipped, r.done) == (1, 2)
    s = open_store(tmp_path / "old")
    assert s.fingerprint == fp and s.format == 1 and sorted(s.ids()) == ["v0", "v1", "v2"]
    np.testing.assert_array_equal(s.frame_end("v2"), s.frame_index("v2") + 1)


def _labelled(n: int = 16, dim: int = 4):
    """n short videos of two classes that a linear head separates, half train, a quarter each val and test."""
    rng = np.random.default_rng(1)
    labels = ["a", "b"] * (n // 2)
    videos = {f"v{i}": (rng.standard_normal((3, dim)) + (3.0 if labels[i] == "b" else -3.0)).astype(np.float32)
              for i in range(n)}
    splits = (["train"] * (n // 2)) + (["val"] * (n // 4)) + (["test"] * (n // 4))
    return videos, labels, splits


def _format2_copy(path, config: dict, videos, labels, splits) -> None:
    keys = [k for k in FORMAT1_KEYS if k != "format"]  # what today's pipeline fingerprints
    with StoreWriter(path, config, keys, dim=4, dtype="float32") as w:
        for (vid, feats), label, split in zip(videos.items(), labels, splits):
            w.add(VideoRecord(vid, path=f"{vid}.mkv", label=label, split=split, features=feats, fps=25.0,
                              n_frames=2 * len(feats), frame_index=np.arange(len(feats)) * 2,
                              time_s=np.arange(len(feats)) * 2 / 25.0))


def test_a_run_on_a_format1_store_evaluates_on_a_format2_store_of_the_same_settings_only(tmp_path):
    from heads import TrainConfig, evaluate_run, fit_head
    from heads.models import HeadError

    config = {"backbone": "resnet18", "every": 2, "dtype": "float32"}
    videos, labels, splits = _labelled()
    write_format1_store(tmp_path / "old", {"format": 1, **config}, videos, labels=labels, splits=splits)
    fit_head(tmp_path / "old", TrainConfig(head="linear", epochs=5, device="cpu"), tmp_path / "run")
    _format2_copy(tmp_path / "new", config, videos, labels, splits)
    new = open_store(tmp_path / "new")
    assert new.format == 2 and new.fingerprint != open_store(tmp_path / "old").fingerprint  # the layout was hashed
    same = evaluate_run(tmp_path / "run", tmp_path / "new", split="all")
    assert same["accuracy"] == evaluate_run(tmp_path / "run", split="all")["accuracy"]
    _format2_copy(tmp_path / "other", {**config, "every": 3}, videos, labels, splits)
    with pytest.raises(HeadError, match="every: store has 3, the run|every: store has 3"):
        evaluate_run(tmp_path / "run", tmp_path / "other", split="all")
