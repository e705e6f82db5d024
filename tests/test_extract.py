"""Stage one end to end: real tiny videos → extract → store; resume, kill -9, bad input, CLI errors."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import (assert_same_store, child_env, extract_flags, invoke, kill_9_when_shards, random_frames,
                     tiny_config, write_clips, write_manifest, write_rotated)

from data.synth import write_video
from featstore import open_store
from pipeline.backbones import load_backbone
from pipeline.decode import Sampling
from pipeline.extract import extract
from pipeline.sources import load_source


@pytest.fixture()
def dataset(tmp_path):
    """Six lossless clips of 3..8 frames in two classes, a manifest, and the frames that were written."""
    manifest = write_clips(tmp_path, [f"v{i}.mkv" for i in range(6)], frames=[3 + i for i in range(6)],
                           group=lambda i: f"g{i // 2}", split=lambda i: "test" if i >= 4 else "train")
    return manifest, {f"v{i}": random_frames(i, 3 + i) for i in range(6)}


def cfg(**kw):
    return tiny_config(**{"sampling": Sampling(every=2), **kw})


def test_stored_embeddings_equal_a_direct_model_call_on_the_same_frames(dataset, tmp_path):
    manifest, written = dataset
    r = extract(load_source(manifest), tmp_path / "s", cfg())
    assert r.done == 6 and not r.failed
    b = load_backbone("resnet18", "none")
    mean, std = torch.tensor(b.preprocess.mean).view(1, 3, 1, 1), torch.tensor(b.preprocess.std).view(1, 3, 1, 1)
    s = open_store(tmp_path / "s")
    for vid, frames in written.items():
        idx = np.arange(0, len(frames), 2)
        np.testing.assert_array_equal(s.frame_index(vid), idx)
        np.testing.assert_allclose(s.time_s(vid), idx / 25, atol=1e-6)
        x = (torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            expected = b.model(x).numpy()
        np.testing.assert_allclose(s.features(vid), expected, rtol=1e-3, atol=1e-3)
        m = s.meta(vid)
        assert m.n_frames == len(frames) and (m.width, m.height) == (32, 32)


def test_batches_span_videos_without_changing_any_video_features(dataset, tmp_path):
    items = load_source(dataset[0])
    extract(items, tmp_path / "a", cfg(batch_size=1))
    extract(items, tmp_path / "b", cfg(batch_size=7, workers=2))  # batches cut across videos
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert a.ids() == b.ids()
    np.testing.assert_allclose(a.load_all().features, b.load_all().features, atol=1e-4)


def test_bad_inputs_are_recorded_as_failed_and_the_run_goes_on(dataset, tmp_path):
    manifest, _ = dataset
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(os.urandom(5000))
    manifest.write_text(manifest.read_text() + "zero.mp4,a,g9,train\nnoise.mp4,b,g9,train\nmissing.mp4,a,g9,train\n")
    res = invoke("extract", manifest, *extract_flags(every=2), "--store", tmp_path / "s")
    assert res.exit_code == 2, res.output
    s = open_store(tmp_path / "s")
    assert len(s.ids()) == 6 and sorted(s.ids("failed")) == ["missing", "noise", "zero"]
    assert all(s.meta(v).error and "\n" not in s.meta(v).error for v in s.ids("failed"))
    info = json.loads(invoke("info", tmp_path / "s", "--json").stdout)
    assert (info["videos"], info["ok"], info["failed"]) == (9, 6, 3)
    assert {i["id"] for i in info["items"] if i["status"] == "failed"} == {"missing", "noise", "zero"}


def test_resume_skips_done_items_and_retry_failed_redoes_only_failures(dataset, tmp_path):
    manifest, written = dataset
    items = load_source(manifest)
    r1 = extract(items, tmp_path / "s", cfg(limit=2))
    assert r1.done == 2
    r2 = extract(items, tmp_path / "s", cfg())
    assert (r2.done, r2.skipped) == (4, 2)
    # A file that was broken on the first pass and fixed later is picked up by --retry-failed.
    (tmp_path / "late.mkv").write_bytes(b"not yet")
    manifest.write_text(manifest.read_text() + "late.mkv,a,g7,train\n")
    items = load_source(manifest)
    assert extract(items, tmp_path / "s", cfg()).failed
    write_video(tmp_path / "late.mkv", random_frames(99, 7))
    assert extract(items, tmp_path / "s", cfg()).done == 0
    r4 = extract(items, tmp_path / "s", cfg(retry_failed=True))
    assert r4.done == 1 and not r4.failed
    s = open_store(tmp_path / "s")
    assert sorted(s.ids()) == sorted([*written, "late"]) and not s.ids("failed")


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pipeline.decode import Sampling
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import load_source
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32, crop="none",
                        batch_size=4, workers=1, precision="fp32", dtype="float32", flush_videos=2)
    # Slow down after a few videos so the kill reliably lands mid-run, however fast the machine.
    extract(load_source(sys.argv[1]), sys.argv[2], cfg,
            on_progress=lambda p: time.sleep(0.3) if p["done"] >= 4 else None)
""")


@pytest.mark.slow
def test_kill_9_mid_extract_then_resume_equals_an_uninterrupted_run(tmp_path):
    manifest = write_clips(tmp_path, [f"c{i:02d}.mkv" for i in range(16)], frames=6)
    store = tmp_path / "killed"
    kill_9_when_shards(subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(manifest), str(store)], env=child_env()),
                       store)
    partial = open_store(store).ids()
    assert 0 < len(partial) < 16, "the kill must land mid-run"
    items = load_source(manifest)
    run = dict(sampling=Sampling(every=1), batch_size=4, flush_videos=2)
    resumed = extract(items, store, cfg(**run))
    assert resumed.skipped == len(partial)
    extract(items, tmp_path / "clean", cfg(**run))
    assert_same_store(store, tmp_path / "clean", n=16)


def test_shards_split_the_items_between_processes_and_together_cover_them(dataset, tmp_path):
    items = load_source(dataset[0])
    r0 = extract(items, tmp_path / "s", cfg(shard=(0, 2)))
    r1 = extract(items, tmp_path / "s", cfg(shard=(1, 2)))
    assert r0.done + r1.done == 6 and r0.done and r1.done
    assert sorted(open_store(tmp_path / "s").ids()) == sorted(it.id for it in items)
    assert {p.name.split("-")[0] for p in (tmp_path / "s").glob("*-0*.h5")} == {"s0of2", "s1of2"}


def test_images_are_single_frame_items(tmp_path):
    from PIL import Image

    for name in ("cat/a.png", "cat/b.jpg", "dog/c.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(random_frames(len(name), 1)[0]).save(tmp_path / name)
    extract(load_source(tmp_path), tmp_path / "s", cfg())
    s = open_store(tmp_path / "s")
    assert len(s.ids()) == 3 and all(s.meta(v).length == 1 for v in s.ids())
    assert {s.meta(v).label for v in s.ids()} == {"cat", "dog"}


def test_cli_extract_info_compact_roundtrip(dataset, tmp_path):
    manifest, _ = dataset
    base = ["extract", manifest, *extract_flags(every=3), "--store", tmp_path / "s"]
    assert invoke(*base).exit_code == 0
    again = invoke(*base)
    assert again.exit_code == 0 and "already in store" in again.stdout
    assert invoke("compact", tmp_path / "s", tmp_path / "one.h5").exit_code == 0
    one = json.loads(invoke("info", tmp_path / "one.h5", "--json").stdout)
    assert one["videos"] == 6 and one["config"]["every"] == 3 and one["backbone"] == "resnet18"
    assert "fingerprint" in invoke("info", tmp_path / "s").stdout


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vgg99"], "choose one of: mc3_18, mobilenet_v2"),
    (["--every", "2", "--frames", "4"], "choose one of --every, --frames, --fps"),
    (["--shard", "3/2"], "--shard"),
    (["--device", "cuda:7"], "cuda"),
])
def test_cli_user_errors_exit_1_with_one_line_and_no_traceback(dataset, tmp_path, args, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    res = invoke("extract", dataset[0], "--weights", "none", "--store", tmp_path / "s", *args)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


def test_cli_refuses_to_append_other_settings_naming_the_setting(dataset, tmp_path):
    base = ["extract", dataset[0], "--store", tmp_path / "s", "--limit", "1"]
    assert invoke(*base, *extract_flags(every=2)).exit_code == 0
    res = invoke(*base, *extract_flags(every=5))
    assert res.exit_code == 1 and "every: store has 2, this run has 5" in res.output


def test_cli_missing_manifest_column_and_unwritable_store(tmp_path):
    write_manifest(tmp_path, [("x.mp4", "a")], ["file", "label"])
    res = invoke("extract", tmp_path / "m.csv", "--weights", "none", "--store", tmp_path / "s")
    assert res.exit_code == 1 and "path" in res.output and "Traceback" not in res.output
    write_manifest(tmp_path, [("x.mp4", "a")])
    (tmp_path / "afile").write_text("a file where the store's parent folder should be")
    res = invoke("extract", tmp_path / "m.csv", "--weights", "none", "--store", tmp_path / "afile" / "s")
    assert res.exit_code == 1 and "cannot create store directory" in res.output and "Traceback" not in res.output


def test_extract_records_each_videos_rotation(tmp_path):
    frames = random_frames(0, 4)
    write_rotated(tmp_path / "phone.mp4", frames, -90)
    write_video(tmp_path / "plain.mkv", frames)
    extract(load_source(write_manifest(tmp_path, [("phone.mp4", "a"), ("plain.mkv", "b")])), tmp_path / "s",
            tiny_config(dtype="float16"))
    s = open_store(tmp_path / "s")
    assert (s.meta("phone").rotation, s.meta("plain").rotation) == (270, 0)
    assert s.config.autorotate is True


def test_extract_summary_counts_a_failed_item_as_failed_not_written(tmp_path):
    (tmp_path / "clips" / "a").mkdir(parents=True)
    write_video(tmp_path / "clips" / "a" / "ok.mp4", np.zeros((6, 32, 32, 3), np.uint8))
    (tmp_path / "clips" / "a" / "broken.mp4").write_bytes(b"\x00" * 100)
    res = invoke("extract", tmp_path / "clips", "--backbone", "resnet18", "--weights", "none", "--size", "32",
                 "--crop", "none", "--workers", "0", "--store", tmp_path / "s")
    assert res.exit_code == 2, res.output
    rows = dict(line.strip("│ ").split("│")[:2] for line in res.stdout.splitlines() if "│" in line)
    assert {k.strip(): v.strip() for k, v in rows.items()}.items() >= {"written": "1", "failed": "1"}.items()
