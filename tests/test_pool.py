"""featstore.pool (`cli.py pool`): one row per video, written by the store writer, and heads that read it."""
import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from featstore import StoreError, StoreWriter, VideoRecord, open_store
from featstore.pool import pool_store
from heads.api import evaluate, fit
from heads.config import TrainConfig
from heads.models import HeadError
from test_heads_train import D, SMALL, blob_clips, one_thread, write_store  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = write_store(tmp_path_factory.mktemp("pool") / "src", blob_clips())
    with StoreWriter(path, {"backbone": "synthetic", "every": 1}, ["backbone", "every"], D, prefix="bad") as w:
        w.add(VideoRecord("broken", path="broken.mp4", label="class0", status="failed", error="cannot decode"))
    return path


@pytest.fixture(scope="module")
def pooled(source, tmp_path_factory):
    return pool_store(source, tmp_path_factory.mktemp("pooled") / "mean").out


def test_pool_writes_one_row_per_video_with_the_same_ids_labels_groups_and_splits(source, pooled):
    src, dst = open_store(source), open_store(pooled)
    assert dst.ids(status=None) == src.ids(status=None)
    for vid in src.ids():
        a, b = src.meta(vid), dst.meta(vid)
        assert (b.label, b.group, b.split, b.status, b.length) == (a.label, a.group, a.split, "ok", 1)
        np.testing.assert_allclose(dst.features(vid)[0], src.features(vid).mean(0), rtol=1e-3, atol=1e-3)
        assert dst.frame_index(vid)[0] == src.frame_index(vid)[0]  # the row spans the first to the last frame
        assert dst.frame_end(vid)[0] == src.frame_end(vid)[-1]
    broken = dst.meta("broken")
    assert (broken.status, broken.error, broken.length) == ("failed", "cannot decode", 0)


def test_max_pooling_keeps_each_dimensions_largest_row_exactly(source, tmp_path):
    src, dst = open_store(source), open_store(pool_store(source, tmp_path / "max", "max").out)
    for vid in src.ids():
        assert np.array_equal(dst.raw_features(vid)[0], src.raw_features(vid).max(0))


def test_a_pooled_store_is_fingerprinted_apart_from_its_source_and_other_poolings(source, pooled, tmp_path):
    src, dst = open_store(source), open_store(pooled)
    maxed = open_store(pool_store(source, tmp_path / "max", "max").out)
    assert (dst.config.pooled, dst.config.value("pooled_from")) == ("mean", src.fingerprint)
    assert src.config.pooled is None
    assert len({src.fingerprint, dst.fingerprint, maxed.fingerprint}) == 3
    assert {"pool", "pooled_from"} <= set(dst.fingerprint_keys)


def test_pool_refuses_an_out_that_is_not_its_own(source, pooled, tmp_path):
    for out, pool in ((pooled, "max"), (source, "mean"), (source / "inside", "mean")):
        with pytest.raises(StoreError, match=f"--out {out} is .*store.* never written over"):
            pool_store(source, out, pool, force=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(StoreError, match="--out .* holds files that are not pool output .*--force"):
        pool_store(source, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    pool_store(source, tmp_path / "notes", force=True)  # replaced whole
    assert not (tmp_path / "notes" / "todo.txt").exists() and open_store(tmp_path / "notes").config.pooled


def test_pool_resumes_skipping_the_videos_it_already_wrote(tmp_path):
    clips = blob_clips()
    source = write_store(tmp_path / "src", clips[:30])
    first = pool_store(source, tmp_path / "pooled")
    with StoreWriter(source, {"backbone": "synthetic", "every": 1}, ["backbone", "every"], D, prefix="more") as w:
        for vid, label, group, split, feats in clips[30:]:
            w.add(VideoRecord(vid, label=label, group=group, split=split, features=feats,
                              frame_index=np.arange(len(feats)), time_s=np.arange(len(feats)) / 25))
    again = pool_store(source, tmp_path / "pooled")
    assert (first.written, again.written, again.resumed) == (30, len(clips) - 30, 30)
    assert again.fingerprint == first.fingerprint
    assert open_store(tmp_path / "pooled").ids() == open_store(source).ids()


def test_fit_head_linear_on_the_pooled_store_scores_as_on_its_source(source, pooled, tmp_path):
    # every frame in every step (no frame dropout, one batch) and no normalization statistics: the linear head on
    # a clip's frames then sees exactly the pooled row, up to its float16 rounding
    cfg = TrainConfig(head="linear", normalize="none", frame_dropout=0.0, **{**SMALL, "batch_size": 64})
    on_frames = fit(source, cfg, tmp_path / "frames").metrics
    on_rows = fit(pooled, cfg, tmp_path / "rows").metrics
    for split in ("val", "test"):
        assert on_rows[split]["accuracy"] == on_frames[split]["accuracy"]
        assert on_rows[split]["confusion"] == on_frames[split]["confusion"]
    assert on_rows["best_epoch"] == on_frames["best_epoch"]
    a, b = (evaluate(tmp_path / name).metrics for name in ("frames", "rows"))
    assert abs(a["macro_f1"] - b["macro_f1"]) < 1e-9


def test_a_head_that_reads_frames_in_order_refuses_a_pooled_store(pooled, tmp_path):
    with pytest.raises(HeadError, match="--head lstm reads a clip's frames in order, but .* is a pooled store"):
        fit(pooled, TrainConfig(head="lstm", **SMALL), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_on_the_pooled_store_refuses_its_source_store(source, pooled, tmp_path):
    fit(pooled, TrainConfig(head="linear", **{**SMALL, "epochs": 2}), tmp_path / "run")
    with pytest.raises(HeadError, match="pool: store has None, this run has 'mean'"):
        evaluate(tmp_path / "run", source)


def test_cli_pool_writes_the_store_and_refuses_the_source_as_out(source, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli.app, ["pool", str(source), "--out", str(tmp_path / "p"), "--pool", "max"])
    assert res.exit_code == 0, res.output
    assert "pooled 49 videos" in res.output
    assert open_store(tmp_path / "p").config.pooled == "max"
    res = runner.invoke(cli.app, ["pool", str(source), "--out", str(source)])
    assert res.exit_code == 1 and "never written over" in res.output
    assert "Traceback" not in res.output
