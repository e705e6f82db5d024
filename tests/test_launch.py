"""--shard auto: launcher environments → parts; simulated Slurm arrays and torchrun ranks writing one store."""
import os
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, assert_same_store, cli_command, extract_flags, invoke, write_clips, write_manifest

from pipeline.launch import LaunchError, detect_launch

LAUNCH_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
               "SLURM_ARRAY_TASK_STEP", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.mark.parametrize("env, engine, shard", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "64"}, "slurm-array", (5, 64)),
    # --array=1-64: ids start at 1, parts at 0
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "64"}, "slurm-array", (0, 64)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "10",
      "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "6"}, "slurm-array", (3, 6)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, "torchrun", (3, 8)),
    # one array task per node, torchrun inside it: parts task * WORLD_SIZE + RANK
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "1", "WORLD_SIZE": "8"},
     "slurm-array+torchrun", (17, 32)),
])
def test_launcher_variables_give_the_part(env, engine, shard):
    launch = detect_launch(env)
    assert (launch.engine, launch.shard) == (engine, shard)
    assert all(f"{k}={v}" in launch.found for k, v in env.items() if k != "SLURM_ARRAY_TASK_STEP"
               and not (k == "SLURM_ARRAY_TASK_COUNT" and "SLURM_ARRAY_TASK_MIN" in env))


@pytest.mark.parametrize("env, message", [
    ({}, "looked for SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "3"}, "cannot tell how many parts"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9",
      "SLURM_ARRAY_TASK_COUNT": "3"}, "not a range"),  # --array=1,5,9
    ({"RANK": "4", "WORLD_SIZE": "4"}, "0 <= RANK < WORLD_SIZE"),
    ({"RANK": "1"}, "torchrun sets both"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "not an integer"),
])
def test_no_or_inconsistent_launcher_is_a_one_line_error(env, message):
    with pytest.raises(LaunchError, match=message):
        detect_launch(env)


def test_local_rank_picks_the_rank_gpu_and_ranks_share_the_node_cores():
    launch = detect_launch({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert launch.device("auto", visible_gpus=4) == "cuda:1"
    assert launch.device("auto", visible_gpus=1) == "cuda:0"   # the launcher gave each rank its own GPU
    assert launch.device("auto", visible_gpus=0) == "auto"     # no GPU: extract's own choice (CPU)
    assert launch.device("cpu", visible_gpus=4) == "cpu"       # an explicit --device wins
    assert launch.cores(16) == 4 and launch.cores(2) == 1
    with pytest.raises(LaunchError, match="LOCAL_RANK=3 but this process sees 2 GPUs"):
        detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}).device("auto", visible_gpus=2)
    assert detect_launch({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}).cores(16) is None


def test_cli_shard_auto_outside_a_launcher_says_what_it_looked_for(tmp_path, monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    res = invoke("extract", write_manifest(tmp_path, [("x.mp4", "a")]), "--weights", "none", "--shard", "auto",
                 "--store", tmp_path / "s")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "SLURM_ARRAY_TASK_ID" in res.output and "RANK with WORLD_SIZE" in res.output


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("launch"), [f"v{i}.mkv" for i in range(9)],
                       frames=[3 + i % 3 for i in range(9)])


@pytest.fixture(scope="module")
def single(clips) -> Path:
    """The clips extracted by one process, as the launched processes extract them."""
    proc = run_cli(clips, clips.parent / "single", {})
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return clips.parent / "single"


def run_cli(manifest: Path, store: Path, extra_env: dict[str, str], *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(extra_env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = cli_command("extract", manifest, *extract_flags(every=2, dtype="float32"), "--store", store, *args)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["slurm", "torchrun"])
def test_three_launched_processes_write_one_store_equal_to_a_single_process(clips, single, tmp_path, launcher):
    def env(i: int) -> dict[str, str]:
        if launcher == "slurm":
            return {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "3"}
        return {"RANK": str(i), "WORLD_SIZE": "3", "LOCAL_RANK": str(i), "LOCAL_WORLD_SIZE": "3"}

    procs = [run_cli(clips, tmp_path / "parts", env(i), "--shard", "auto") for i in range(3)]
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0 and f"part {i}/3" in stderr, stderr
    assert {f.name.split("-")[0] for f in (tmp_path / "parts").glob("*-0*.h5")} <= {"s0of3", "s1of3", "s2of3"}
    assert_same_store(tmp_path / "parts", single, n=9, atol=1e-5)
