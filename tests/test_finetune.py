"""Stage three on real tiny videos: supervised and temporal fine-tuning, backbone.pt back through extract,
kill -9 / Ctrl-C and --resume, and the inputs it must refuse."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import N_FRAMES, read_indices
from helpers import (assert_backbone_pt_extracts_its_own_store, child_env, cli_command, extract_flags, invoke,
                     write_manifest)

from data.synth import make_pattern_dataset, make_temporal_dataset
from finetune import FinetuneConfig, finetune
from finetune.data import ClipFrames, FrameSampler, pair_positions, segment_positions
from finetune.model import trainable_backbone
from heads.models import HeadError
from pipeline.backbones import BackboneError, load_backbone
from pipeline.decode import Geometry, decode_chosen
from pipeline.sources import load_source

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(backbone="resnet18", weights="none", size=32, crop="none", segments=2, precision="fp32", workers=0,
            batch_size=4)
TINY_FLAGS = ["--backbone", "resnet18", "--weights", "none", "--size", "32", "--crop", "none", "--segments", "2",
              "--precision", "fp32", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_temporal_dataset(tmp_path_factory.mktemp("ft") / "clips", n_per_class=4, frames=6, size=32, seed=2)


@pytest.fixture(scope="module")
def head_run(clips, tmp_path_factory) -> Path:
    """The clips extracted as finetune reads them (resnet18, 32 px, no crop) and a linear fit-head run on them
    (refit, the default). Tests copy it before changing it."""
    root = tmp_path_factory.mktemp("ft_head")
    assert invoke("extract", clips, *extract_flags(every=2), "--store", root / "store").exit_code == 0
    assert invoke("fit-head", root / "store", "--epochs", "3", "--out", root / "head").exit_code == 0
    return root / "head"


@pytest.fixture(scope="module")
def tuned(clips, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ft_runs") / "sup"
    with torch.random.fork_rng(devices=[]):
        finetune(load_source(clips), FinetuneConfig(**TINY, epochs=1), run)
    return run


def test_decode_chosen_returns_exactly_the_picked_frames(index_clip):
    video = decode_chosen(index_clip, lambda n, fps: np.array([n - 1, 3, 3, 0]), Geometry(32, 32, "none"))
    assert video.frame_index.tolist() == [0, 3, N_FRAMES - 1]
    assert read_indices(video.frames).tolist() == [0, 3, N_FRAMES - 1]


def test_segments_take_one_frame_per_segment_and_pairs_stay_within_the_window():
    assert segment_positions(40, 4, None).tolist() == [5, 15, 25, 35]
    rng = np.random.default_rng(0)
    for _ in range(50):
        pos = segment_positions(40, 4, rng)
        assert all(10 * k <= p < 10 * (k + 1) for k, p in enumerate(pos))
        i, j = pair_positions(100, 25.0, 0.4, rng)
        assert i != j and abs(i - j) <= 10
    assert segment_positions(2, 4, rng).max() <= 1 and pair_positions(1, 25.0, 1.0, rng).tolist() == [0, 0]


def test_a_clips_frames_and_augmentation_depend_on_seed_epoch_and_clip_only(index_clip):
    item = load_source(index_clip)
    sampler = FrameSampler("segments", 4)
    a, b = (ClipFrames(item, [0], Geometry(32, 32, "none"), sampler, augment=True, seed=0) for _ in range(2))
    a.epoch = b.epoch = 3
    torch.manual_seed(123)
    first = a[0][1]
    assert torch.equal(first, b[0][1]) and first.shape == (4, 32, 32, 3)
    b.epoch = 4
    assert not torch.equal(first, b[0][1])
    # entries carry their position in the source, which is what targets and ids are indexed by
    source = [item[0]] * 3
    assert ClipFrames(source, [2, 0], Geometry(32, 32, "none"), sampler, False, 0)[0][0] == 2


def test_a_run_directory_like_every_run_and_runs_lists_it(tuned):
    for name in ("backbone.pt", "checkpoint.pt", "probe.pt", "config.json", "history.csv", "metrics.json",
                 "curves.png"):
        assert (tuned / name).exists(), name
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["objective"] == "supervised" and 0 <= metrics["test"]["accuracy"] <= 1
    rows = json.loads(invoke("runs", tuned.parent, "--json").stdout)
    assert [r["name"] for r in rows] == ["sup"] and rows[0]["backbone"] == "resnet18"


def test_backbone_pt_round_trips_through_extract_with_its_sha256_in_the_fingerprint(tuned, clips, tmp_path):
    saved = torch.load(tuned / "backbone.pt", weights_only=True)  # a plain state_dict of the registry architecture
    load_backbone("resnet18", "none").model.load_state_dict(saved)  # strict: every key, nothing else
    assert json.loads((tuned / "backbone.json").read_text())["backbone"] == "resnet18"
    loaded = load_backbone("resnet18", str(tuned / "backbone.pt")).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    assert_backbone_pt_extracts_its_own_store(tuned, clips, "resnet18", tmp_path)
    res = invoke("extract", clips, *extract_flags(every=2, weights=tuned / "backbone.pt", backbone="resnet34"),
                 "--store", tmp_path / "x")
    assert res.exit_code == 1 and "holds resnet18 weights" in res.output and "--backbone resnet18" in res.output


def test_a_backbone_pt_from_before_the_sidecar_still_loads_and_names_its_backbone(tuned, tmp_path):
    old = tmp_path / "old.pt"  # the format finetune wrote before backbone.json: one dict holding everything
    torch.save({"state_dict": torch.load(tuned / "backbone.pt", weights_only=True), "backbone": "resnet18",
                "config": json.loads((tuned / "backbone.json").read_text())["config"]}, old)
    assert torch.equal(load_backbone("resnet18", str(old)).model.conv1.weight,
                       load_backbone("resnet18", str(tuned / "backbone.pt")).model.conv1.weight)
    with pytest.raises(BackboneError, match="holds resnet18 weights.*--backbone resnet18"):
        load_backbone("resnet34", str(old))


def test_a_quantized_backbone_is_refused_naming_the_float_one(clips, tmp_path):
    with pytest.raises(BackboneError, match="int8 model and cannot be trained.*'mobilenet_v2'"):
        trainable_backbone("quantized_mobilenet_v2", "none")
    res = invoke("finetune", clips, "--backbone", "quantized_mobilenet_v2", "--weights", "none", "--out", tmp_path)
    assert res.exit_code == 1 and "mobilenet_v2" in res.output and "Traceback" not in res.output


def test_init_head_of_other_features_is_refused_naming_the_difference(clips, head_run, tmp_path):
    args = ["finetune", clips, *TINY_FLAGS, "--init-head", head_run, "--out", tmp_path / "ft"]
    other_backbone = invoke(*args, "--backbone", "resnet34")
    assert other_backbone.exit_code == 1, other_backbone.output
    assert "backbone: store has 'resnet18', this run has 'resnet34'" in other_backbone.output
    other_size = invoke(*args, "--size", "48")
    assert other_size.exit_code == 1 and "size: store has 32, this run has 48" in other_size.output
    assert not (tmp_path / "ft").exists()
    same = invoke(*args, "--epochs", "1")
    assert same.exit_code == 0, same.output
    ran = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert ran["init_head"] and ran["n_test"] == json.loads((head_run / "metrics.json").read_text())["n_test"]


def test_init_head_of_a_knn_run_is_refused_as_having_no_weights(clips, tmp_path):
    store = tmp_path / "store"
    assert invoke("extract", clips, "--backbone", "resnet18", "--weights", "none", "--every", "2", "--size", "32",
                  "--crop", "none", "--workers", "0", "--store", store).exit_code == 0
    assert invoke("fit-head", store, "--head", "knn", "--out", tmp_path / "knn").exit_code == 0
    res = invoke("finetune", clips, *TINY_FLAGS, "--init-head", tmp_path / "knn", "--out", tmp_path / "ft")
    assert res.exit_code == 1 and "--head knn run: it has no weights" in res.output, res.output


def test_a_refit_head_run_starts_the_fit_from_its_early_head_and_a_refit_from_epoch_0_ends_on_its_final_head(
        clips, head_run, tmp_path):
    head = shutil.copytree(head_run, tmp_path / "head")  # refit: the default
    ckpt = torch.load(head / "head.pt", weights_only=True)
    assert not all(torch.equal(ckpt["state_dict"][k], v) for k, v in ckpt["early_state_dict"].items())
    # an lr far below float32's resolution moves no weight: val cannot improve, the start (epoch 0) wins, and the
    # refit of 0 epochs leaves fit-head's own refit head on the unchanged backbone
    cfg = FinetuneConfig(**TINY, init_head=str(head), lr=1e-30, epochs=1)
    m = finetune(load_source(clips), cfg, tmp_path / "ft")
    assert m["best_epoch"] == 0 and m["refit"] and m["eval_segments"] == 25
    assert m["test"] == m["start"]["test"], "the final weights are the --init-head run's refit head"
    assert m["test_early"]["loss"] != m["test"]["loss"], "the fit phase starts from the early-stopped head"
    assert [r[0] for r in whole_history(tmp_path / "ft")] == ["fit"]
    torch.save({k: v for k, v in ckpt.items() if k != "early_state_dict"}, head / "head.pt")  # an older fit-head
    with pytest.raises(HeadError, match="keeps no early-stopped head.*--no-refit"):
        finetune(load_source(clips), cfg, tmp_path / "ft2")


def test_without_init_head_a_probe_of_the_frozen_backbone_is_fit_first_and_kept_when_no_epoch_beats_it(
        clips, tmp_path):
    items = load_source(clips)
    # an lr far below float32's resolution moves no weight: the probe (epoch 0) wins on val, and the refit of 0
    # epochs leaves the probe's own refit head on the unchanged backbone. Run by the CLI, which says so.
    res = invoke("finetune", clips, *TINY_FLAGS, "--epochs", "1", "--lr", "1e-30", "--out", tmp_path / "ft")
    assert res.exit_code == 0 and "the linear probe as it was" in res.output and "kept the linear probe" in res.output
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["start_from"] == "probe" and m["best_epoch"] == 0 and m["kept"] == "start"
    assert m["test"] == m["start"]["test"], "the final weights are the probe's refit head"
    probe = torch.load(tmp_path / "ft" / "probe.pt", weights_only=True)
    head = {k.removeprefix("head."): v for k, v in
            torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)["model"].items() if k.startswith("head.")}
    # the fit phase started from the probe's early-stopped head (which 1e-30 did not move), the refit from its
    # refit head
    assert head.keys() == probe["early"].keys() and all(torch.equal(head[k], probe["early"][k]) for k in head)
    assert not all(torch.equal(probe["early"][k], v) for k, v in probe["final"].items()), "fit, then refit"
    # --resume reads the probe back instead of embedding the clips again, and ends where the run ended
    written = (tmp_path / "ft" / "probe.pt").stat().st_mtime_ns
    assert finetune(items, FinetuneConfig(**TINY, lr=1e-30, epochs=1), tmp_path / "ft", resume=True)["test"] == m["test"]
    assert (tmp_path / "ft" / "probe.pt").stat().st_mtime_ns == written
    # the defaults: a trained head is fine-tuned gently, a new one (--no-probe) at the new-head rate
    assert FinetuneConfig(**TINY).lr == 3e-5 and FinetuneConfig(**TINY, probe=False).lr == 1e-3
    plain = finetune(items, FinetuneConfig(**TINY, probe=False, epochs=1), tmp_path / "plain")
    assert plain["start_from"] == "new head" and plain["start"] is None and not (tmp_path / "plain" / "probe.pt").exists()


def test_a_source_where_every_video_fails_exits_2_listing_them_and_writes_nothing(tmp_path):
    rows = []
    for name, split in (("a1", "train"), ("b1", "train"), ("a2", "val"), ("b2", "test")):
        (tmp_path / f"{name}.mp4").write_bytes(b"not a video" if name[1] == "1" else b"")
        rows.append((f"{name}.mp4", name[0], split))
    manifest = write_manifest(tmp_path, rows, ["path", "label", "split"])
    res = invoke("finetune", manifest, *TINY_FLAGS, "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "failed a1" in res.output and "failed b1" in res.output and "nothing was trained" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_temporal_trains_without_labels_and_an_interrupted_run_resumes_to_the_same_result(clips, tmp_path):
    cfg = FinetuneConfig(**TINY, objective="temporal", epochs=2, pos_window=0.2)
    items = load_source(clips)
    whole = finetune(items, cfg, tmp_path / "whole")

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises
    with pytest.raises(KeyboardInterrupt):
        finetune(items, cfg, tmp_path / "cut", on_epoch=stop_after_first)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (tmp_path / "cut" / "backbone.pt").exists()
    resumed = finetune(items, cfg, tmp_path / "cut", resume=True)
    assert resumed["val"] == whole["val"] and resumed["test"] == whole["test"]
    assert {"loss", "pos_cos", "neg_cos"} <= set(whole["val"]) and whole["task"] == "temporal"
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")
    with pytest.raises(Exception, match="pass --resume"):
        finetune(items, cfg, tmp_path / "cut")


def whole_history(run: Path) -> list[list[str]]:
    return [r.split(",") for r in (run / "history.csv").read_text().splitlines()[1:]]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a / "backbone.pt", weights_only=True)
    wb = torch.load(b / "backbone.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


KILLED_RUN = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from finetune import FinetuneConfig, finetune
    from pipeline.sources import load_source
    cfg = FinetuneConfig(backbone="resnet18", weights="none", size=32, crop="none", segments=2, precision="fp32",
                         workers=1, batch_size=4, epochs=3, objective=sys.argv[4], pos_window=0.2, probe=False)
    # Stall after the first epoch of the phase named (fit or refit) so the kill lands between checkpoints,
    # however fast the machine.
    finetune(load_source(sys.argv[1]), cfg, sys.argv[2],
             on_epoch=lambda row: time.sleep(600) if (row["phase"], row["epoch"]) == (sys.argv[3], 1) else None)
""")


def _wait_for_epoch(checkpoint: Path, proc: subprocess.Popen, timeout: float = 180, phase: str = "fit") -> None:
    deadline, seen = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp != seen:  # a new checkpoint (they are large: read each one once)
            seen = stamp
            if torch.load(checkpoint, weights_only=True)["state"]["phase"] == phase:
                return
        time.sleep(0.1)
    raise AssertionError(f"no {phase} checkpoint after {timeout} s (exit code {proc.poll()})")


def killed_run_config(objective: str, workers: int = 1) -> FinetuneConfig:
    """KILLED_RUN's config: a new head (no probe), so that epochs beat the start and a refit phase runs (a resumed
    probe: test_without_init_head_a_probe_...). The killed process decodes in a worker, as a CPU run does by default;
    the resume and the uninterrupted run decode in this process (workers=0: a worker's start costs every epoch ~1 s
    here), which a resume may change (finetune.train.RESUMABLE_CHANGES) without changing a weight."""
    return FinetuneConfig(**{**TINY, "workers": workers}, epochs=3, objective=objective, pos_window=0.2, probe=False)


@pytest.fixture(scope="module")
def uninterrupted(clips, tmp_path_factory):
    """objective -> (metrics, run folder) of KILLED_RUN's config run without a kill; each run once per module."""
    runs = {}

    def run(objective: str) -> tuple[dict, Path]:
        if objective not in runs:
            out = tmp_path_factory.mktemp("whole") / objective
            runs[objective] = finetune(load_source(clips), killed_run_config(objective, workers=0), out), out
        return runs[objective]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("objective, phase", [("supervised", "fit"), ("supervised", "refit"), ("temporal", "fit")])
def test_kill_9_then_resume_equals_an_uninterrupted_run(clips, uninterrupted, tmp_path, objective, phase):
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(clips), str(run), phase, objective],
                            env=child_env(OMP_NUM_THREADS="1"))
    _wait_for_epoch(run / "checkpoint.pt", proc, phase=phase)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert (state["epoch"], state["refit_epoch"]) == ((1, 0) if phase == "fit" else (3, 1))
    assert not (run / "backbone.pt").exists() and not list(run.glob("*.tmp"))
    resumed = finetune(load_source(clips), killed_run_config(objective, workers=0), run, resume=True)
    whole, whole_dir = uninterrupted(objective)
    assert resumed["epochs_run"] == whole["epochs_run"] == 3
    refits = [r for r in whole_history(whole_dir) if r[0] == "refit"]
    assert len(refits) == whole["best_epoch"] >= 1 and resumed["test"] == whole["test"]
    assert {int(r[6]) for r in refits} == {whole["n_train"] + whole["n_val"]}, "the refit trains on train + val"
    _assert_same_weights(run, whole_dir)
    assert [r[:5] for r in whole_history(run)] == [r[:5] for r in whole_history(whole_dir)]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_the_last_checkpoint(clips, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_command("finetune", clips, *TINY_FLAGS, "--epochs", "3", "--out", run),
                            env=child_env(OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(run / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["epoch"] >= 1


@pytest.mark.slow
def test_supervised_finetune_learns_what_frozen_random_features_cannot(tmp_path):
    # 1-pixel stripes, horizontal vs vertical, in an 8x8 patch placed anywhere on a smooth 48x48 background that
    # changes every frame: globally pooled random ResNet-18 features hardly see the orientation, a trained one does.
    items = load_source(make_pattern_dataset(tmp_path / "clips", n_per_class=32, frames=8, size=48, patch=8))
    # 8 eval segments on 8-frame clips see each frame once (25 would repeat them); the early-stopped model is scored
    # without a refit: the claim is about what training the backbone can learn, and both take half the time
    base = {**TINY, "size": 48, "batch_size": 8, "augment": False, "lr": 1e-3, "patience": 6, "eval_segments": 8,
            "refit": False, "probe": False}
    # the control: the same run with every backbone stage frozen (layer4 is ResNet-18's last), a head-only lr
    frozen = finetune(items, FinetuneConfig(**{**base, "lr": 1e-2}, freeze_until="layer4", epochs=6),
                      tmp_path / "frozen")
    tuned = finetune(items, FinetuneConfig(**base, backbone_lr_mult=1.0, epochs=8), tmp_path / "tuned")
    assert frozen["n_test"] == tuned["n_test"] == 16
    assert frozen["test"]["accuracy"] <= 0.75, frozen["test"]["accuracy"]
    assert tuned["test"]["accuracy"] >= 0.9, tuned["test"]["accuracy"]
