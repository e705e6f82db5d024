"""finetune's decode workers are watched as extract's are (issue 19, item 3; pipeline.stages.DecodeWorkers): a
worker that dies or hangs on a clip ends the run naming that clip, shared memory running out ends it with the fix,
and SIGTERM / SIGINT end it within seconds whatever the workers are doing, leaving no worker and nothing in
/dev/shm. Real `cli.py finetune` processes, real signals, a real held file and a real full /dev/shm."""
import multiprocessing
import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import PYTHON_START_S, cli_command, gone, private_shm, stop_at_held_file, write_split_clips

from finetune.data import ClipFrames, ClipsLost, FrameSampler, clip_batches
from pipeline.decode import Geometry
from pipeline.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ["--backbone", "resnet18", "--weights", "none", "--size", "32", "--crop", "none", "--segments", "2",
            "--eval-segments", "2", "--precision", "fp32", "--batch-size", "2", "--epochs", "1", "--workers", "1"]


def finetune_command(manifest: Path, out: Path) -> list[str]:
    return cli_command("finetune", manifest, *FINETUNE, "--out", out)


@pytest.mark.slow
@pytest.mark.parametrize("worker, sig", [("blocked opening a file", signal.SIGTERM),
                                         ("stopped (SIGSTOP)", signal.SIGINT), ("killed (SIGKILL)", None)])
def test_finetune_ends_within_seconds_whatever_its_decode_worker_is_doing(tmp_path, hold, worker, sig):
    """A signal to the main process alone ends it with 143 / 130; without one, a worker that dies ends the run with
    exit 2 naming the clip it held and the way on (--resume). No worker outlives the run, nothing is left in
    /dev/shm. (A worker alive but stuck is found after STALL_S: the test below.)"""
    manifest = write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(8)])
    held = hold(tmp_path / "c0.mkv")  # a training clip: the probe's first pass reaches it
    # cli.py starts and builds the model before the probe's first pass opens the clips
    code, stderr, took, workers = stop_at_held_file(private_shm(None) + finetune_command(manifest, tmp_path / "run"),
                                                    held, worker, sig, wrapped=True, start_s=PYTHON_START_S + 240)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130, None: 2}[sig], stderr
    # within seconds, not minutes: a bound loose enough for a cold interpreter's exit on a saturated 2-core machine
    assert took < 30 and gone(workers) and "Traceback" not in stderr
    assert re.search(r"^left in /dev/shm: *$", stderr, re.M), stderr
    if sig is None:
        assert "clip c0: decode worker 0" in stderr and "died while decoding it" in stderr and "--resume" in stderr


@pytest.mark.slow
def test_a_finetune_decode_worker_stuck_on_a_clip_costs_that_clip_and_ends_the_run(tmp_path, hold):
    items = load_source(write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(3)]))
    held = hold(tmp_path / "c1.mkv")
    clips = ClipFrames(items, [0, 1, 2], Geometry(32, 32, "none"), FrameSampler("segments", 2), False, 0)
    seen = []
    try:
        with pytest.raises(ClipsLost) as lost:
            with clip_batches(clips, [0, 1, 2], 1, 1, False, stall_s=3.0) as batches:
                seen += [batch.index.tolist() for batch in batches]
    finally:
        held.release()
    assert seen in ([[0]], []) and list(lost.value.failures) == ["c1"]
    assert "made no progress on it for 3 s" in lost.value.failures["c1"] and "--resume" in str(lost.value)
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_shared_memory_running_out_ends_finetune_with_exit_1_and_the_fix(tmp_path):
    manifest = write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(8)])
    res = subprocess.run(private_shm(8) + finetune_command(manifest, tmp_path / "run"), cwd=ROOT, text=True,
                         capture_output=True, timeout=PYTHON_START_S + 120)
    assert res.returncode == 1, res.stderr
    assert "shared memory is full" in res.stderr and "--workers 0" in res.stderr and "Traceback" not in res.stderr
    assert re.search(r"^left in /dev/shm: *$", res.stderr, re.M), res.stderr
