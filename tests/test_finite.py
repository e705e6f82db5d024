"""featstore.finite: no non-finite feature enters a store, and none is trained on.

extract fails an item whose features overflow the storage dtype (a random-init resnet152 at 32 px gives activations
above float16's 65504, as it does at full size), naming the fix; every reader of a store written before that check
refuses its non-finite rows in one line naming the shard and the video, before any epoch; predict's embedding of new
files fails them the same way. Real processes, real stores."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import extract_flags, invoke, run_cli, write_clips

from featstore import StoreWriter, VideoRecord, open_store, verify_store
from featstore.finite import fail_non_finite
from pipeline.extract import embed_files

OVERFLOWS = extract_flags(every=4, backbone="resnet152")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two lossless 32 px clips of 8 frames: returns the manifest."""
    return write_clips(tmp_path_factory.mktemp("clips"), ["c0.mkv", "c1.mkv"], frames=8)


@pytest.fixture(scope="module")
def float32_store(clips, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("f32") / "store"  # a store to read: made in this process
    done = invoke("extract", clips, *OVERFLOWS, "--dtype", "float32", "--store", store)
    assert done.exit_code == 0, done.output
    return store


def test_extract_fails_items_whose_features_overflow_float16_and_the_named_fix_works(clips, float32_store, tmp_path):
    store = tmp_path / "store"
    done = run_cli("extract", clips, *OVERFLOWS, "--store", store)
    assert done.returncode == 2, done.stderr  # some items failed
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed")]
    assert len(failed) == 2 and all("overflow float16" in x and "--dtype float32" in x for x in failed), failed
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr
    assert [m.status for m in open_store(store).items()] == ["failed", "failed"]
    assert verify_store(store, deep=True).passed  # nothing non-finite was written
    # the fix it names: the same run in float32 stores every item, and finite
    s = open_store(float32_store)
    assert [m.status for m in s.items()] == ["ok", "ok"]
    assert np.abs(s.features("c0")).max() > np.finfo(np.float16).max
    assert verify_store(float32_store, deep=True).passed


def test_predict_embedding_fails_files_whose_features_overflow_the_store_dtype(clips, float32_store):
    config = replace(open_store(float32_store).config, dtype="float16")  # a float16 store of the same backbone
    records = embed_files([str(clips.parent / "c0.mkv")], config, device="cpu")
    assert records[0].status == "failed" and "--dtype float32" in records[0].error
    assert records[0].features is None


def test_a_nan_is_failed_in_any_dtype_with_the_precision_hint():
    rec = fail_non_finite(VideoRecord("v", features=np.array([[1.0, np.nan]]), frame_index=np.arange(1),
                                      time_s=np.zeros(1)), "float32")
    assert rec.status == "failed" and "--precision fp32" in rec.error and rec.features is None
    fine = VideoRecord("w", features=np.ones((2, 2)), frame_index=np.arange(2), time_s=np.zeros(2))
    assert fail_non_finite(fine, "float16").status == "ok"


@pytest.fixture()
def inf_store(tmp_path) -> Path:
    """A float16 store as extract wrote them before it checked: one video's rows hold infinity (in shard 2)."""
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    with StoreWriter(store, {"backbone": "x"}, ["backbone"], dim=8, flush_videos=6) as w:
        for i in range(12):
            features = rng.normal(size=(3, 8))
            if i == 9:
                features[1, 2] = 1e6  # above float16's range: stored as inf
            w.add(VideoRecord(f"v{i:02d}", label="ab"[i % 2], split="test" if i >= 10 else "train",
                              features=features, frame_index=np.arange(3), time_s=np.arange(3.0)))
    return store


@pytest.mark.parametrize("command", [
    ["fit-head", "{store}", "--head", "linear", "--out", "{tmp}/run"],
    ["fit-head", "{store}", "--head", "linear", "--seeds", "2", "--out", "{tmp}/seeds"],
    ["cluster-eval", "{store}", "--k", "2", "--plot", "none", "--out", "{tmp}/km"],
])
def test_every_reader_refuses_non_finite_rows_before_training_naming_shard_and_video(inf_store, tmp_path, command):
    done = run_cli(*[a.format(store=inf_store, tmp=tmp_path) for a in command])
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]  # beside an idle progress bar
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "p0-000001.h5" in lines[0] and "video v09" in lines[0] and "non-finite" in lines[0]
    assert "--deep --quarantine" in lines[0]  # a plain verify would not find the shard again
    assert "epoch" not in done.stdout + done.stderr


def test_verify_deep_then_quarantine_as_the_reader_says_removes_the_non_finite_shard(inf_store):
    report = verify_store(inf_store, deep=True, quarantine=True)
    assert list(report.bad) == ["p0-000001.h5"] and "video v09" in report.bad["p0-000001.h5"]
    assert verify_store(inf_store, deep=True).passed


def test_a_large_float32_store_beyond_float16s_range_trains_on_its_own_values(tmp_path, monkeypatch):
    import heads.data

    config = {"backbone": "synthetic", "dtype": "float32"}
    with StoreWriter(tmp_path / "s", config=config, fingerprint_keys=sorted(config), dim=2, dtype="float32") as w:
        w.add(VideoRecord("v", features=np.array([[1e5, -2e5]]), frame_index=np.arange(1), time_s=np.zeros(1)))
    monkeypatch.setattr(heads.data, "FLOAT32_LIMIT", 0)  # as if the cache were past the in-memory float32 limit
    cache = heads.data.load_cache(tmp_path / "s")
    assert cache.features.dtype == torch.float32 and cache.features.tolist() == [[1e5, -2e5]]
