"""The feature store: layout, resume bookkeeping, crash safety, config refusal, compaction."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from featstore import ConfigMismatch, StoreError, StoreWriter, VideoRecord, compact, open_store

KEYS = ["backbone", "every"]
CFG = {"backbone": "resnet18", "every": 10, "device": "cpu"}


def rec(vid, n, dim=4, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return VideoRecord(vid, label=kw.pop("label", "a"), features=rng.standard_normal((n, dim)).astype(np.float32),
                       frame_index=np.arange(n) * 10, time_s=np.arange(n) * 0.4, **kw)


def test_ragged_roundtrip_keeps_each_video_contiguous(tmp_path):
    feats = {}
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, flush_videos=2) as w:
        for i, n in enumerate([3, 1, 5, 2, 4]):
            r = rec(f"v{i}", n, seed=i, label="x|y" if i == 2 else "x", group=f"g{i % 2}", split="train")
            feats[r.video_id] = r.features
            w.add(r)
    s = open_store(tmp_path / "s")
    assert s.ids() == [f"v{i}" for i in range(5)]
    for vid, f in feats.items():
        np.testing.assert_allclose(s.features(vid), f, atol=2e-3)  # float16 storage
        assert s.features(vid).dtype == np.float32
    assert s.meta("v2").labels == ["x", "y"] and s.meta("v2").length == 5
    np.testing.assert_array_equal(s.frame_index("v4"), np.arange(4) * 10)
    loaded = s.load_all()
    assert loaded.features.shape == (15, 4)
    np.testing.assert_array_equal(loaded.lengths, [3, 1, 5, 2, 4])
    np.testing.assert_allclose(loaded.item(2), feats["v2"], atol=2e-3)
    assert len(list((tmp_path / "s").glob("p0-*.h5"))) == 3  # 2 + 2 + 1 videos


def test_shards_are_self_describing_and_checksummed(tmp_path):
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4) as w:
        w.add(rec("v0", 3))
    shard = next((tmp_path / "s").glob("p0-*.h5"))
    with h5py.File(shard) as f:
        assert f["features"].fletcher32 and f["features"].dtype == np.float16
        assert '"backbone": "resnet18"' in f.attrs["config"]
        assert len(f.attrs["fingerprint"]) == 16


def test_appending_with_other_settings_is_refused_naming_the_setting(tmp_path):
    StoreWriter(tmp_path / "s", CFG, KEYS, dim=4).close()
    with pytest.raises(ConfigMismatch, match=r"every: store has 10, this run has 5"):
        StoreWriter(tmp_path / "s", {**CFG, "every": 5}, KEYS, dim=4)
    # Settings outside the fingerprint (device) do not matter.
    StoreWriter(tmp_path / "s", {**CFG, "device": "cuda"}, KEYS, dim=4).close()


def test_second_writer_on_same_prefix_is_refused_other_prefix_allowed(tmp_path):
    w1 = StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, prefix="s0of2")
    with pytest.raises(StoreError, match="another process is writing"):
        StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, prefix="s0of2")
    # The refused attempt must not have dropped w1's lock: another process is still kept out.
    probe = (f"from featstore import StoreWriter; StoreWriter({str(tmp_path / 's')!r}, {CFG!r}, {KEYS!r}, dim=4, "
             "prefix='s0of2')")
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert other.returncode != 0 and "another process is writing" in other.stderr
    w2 = StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, prefix="s1of2")
    w1.add(rec("a", 2)); w2.add(rec("b", 3))
    w1.close(); w2.close()
    assert sorted(open_store(tmp_path / "s").ids()) == ["a", "b"]


def test_retried_failure_is_superseded_by_success_but_not_vice_versa(tmp_path):
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4) as w:
        w.add(VideoRecord("v", status="failed", error="truncated"))
        w.add(rec("ok", 2))
    time.sleep(0.01)
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4) as w:
        w.add(rec("v", 3))
        w.add(VideoRecord("ok", status="failed", error="later failure"))
    s = open_store(tmp_path / "s")
    assert s.ids(status=None) == ["v", "ok"]
    assert s.meta("v").status == "ok" and s.features("v").shape == (3, 4)
    assert s.meta("ok").status == "ok"


def test_compact_writes_one_file_that_opens_as_a_store(tmp_path):
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, flush_videos=1) as w:
        for i in range(3):
            w.add(rec(f"v{i}", i + 1, seed=i))
        w.add(VideoRecord("bad", status="failed", error="zero bytes"))
    src = open_store(tmp_path / "s")
    out = compact(tmp_path / "s", tmp_path / "one.h5")
    one = open_store(out)
    assert one.fingerprint == src.fingerprint and one.ids(None) == src.ids(None)
    assert one.meta("bad").error == "zero bytes"
    np.testing.assert_array_equal(one.load_all().features, src.load_all().features)


def test_missing_or_foreign_path_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a framecache store"):
        open_store(tmp_path / "empty")


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from featstore import StoreWriter, VideoRecord
    w = StoreWriter(sys.argv[1], {"backbone": "r", "every": 1}, ["backbone", "every"], dim=64, flush_videos=3)
    for i in range(100000):
        f = np.full((20, 64), i, np.float32)
        w.add(VideoRecord(f"v{i}", features=f, frame_index=np.arange(20), time_s=np.arange(20.0)))
        if i == 12:
            print("go", flush=True)
""")


def test_kill_9_while_writing_never_leaves_a_corrupt_or_partial_store(tmp_path):
    path = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = open_store(path)
    ids = s.ids()
    assert len(ids) >= 12 and len(ids) % 3 == 0  # whole shards only
    assert ids == [f"v{i}" for i in range(len(ids))]  # no gap, no duplicate
    for vid in ids[-4:]:
        assert (s.features(vid) == int(vid[1:])).all()
    # The next writer of that prefix cleans up the dead writer's temp file and continues numbering.
    with StoreWriter(path, {"backbone": "r", "every": 1}, ["backbone", "every"], dim=64) as w:
        w.add(VideoRecord("extra", features=np.zeros((1, 64)), frame_index=np.zeros(1), time_s=np.zeros(1)))
    assert not list(path.glob(".*.tmp"))
    assert open_store(path).ids()[-1] == "extra"


def test_a_store_with_more_shards_than_open_handles_reads_everything(tmp_path, monkeypatch):
    import featstore.reader as fs

    monkeypatch.setattr(fs, "MAX_OPEN_SHARDS", 3)
    with StoreWriter(tmp_path / "s", CFG, KEYS, dim=4, flush_videos=1) as w:
        for i in range(8):
            w.add(rec(f"v{i}", 2, seed=i))
    s = open_store(tmp_path / "s")
    assert s.load_all().features.shape == (16, 4)
    for vid in reversed(s.ids()):
        assert s.features(vid).shape == (2, 4)
    assert len(s._handles) == 3
