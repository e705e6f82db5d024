"""extract --engine ray on a local Ray cluster: same store as one process; a killed worker costs nothing twice.

One cluster for the module's tests that need one (Ray takes seconds to start), all slow; skipped cleanly without Ray.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import ROOT, assert_same_store, child_env, tiny_config, write_clips, write_manifest

from featstore import open_store
from pipeline.decode import Sampling
from pipeline.extract import extract
from pipeline.sources import load_source

ray = pytest.importorskip("ray")
from pipeline.ray_engine import (RayEngineError, RayOptions, TaskPlan, extract_on_ray, plan_tasks, probe,  # noqa: E402
                                 runtime_env)


def on_cluster(test):
    """A slow test that runs on the module's local Ray cluster."""
    return pytest.mark.slow(pytest.mark.usefixtures("cluster")(test))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    yield
    ray.shutdown()


def make_clips(folder: Path, n: int, frames: int, size: int = 32) -> Path:
    return write_clips(folder, [f"c{i:02d}.mkv" for i in range(n)], frames=frames, height=size)


def cfg(**kw):
    return tiny_config(**{"sampling": Sampling(every=2), **kw})


def records_per_id(store: Path) -> dict[str, int]:
    """How many records each id has across all shard files (a duplicate would show as 2)."""
    counts: dict[str, int] = {}
    for shard in store.glob("*-0*.h5"):
        with h5py.File(shard, "r") as f:
            for vid in f["video_id"][()]:
                counts[vid.decode()] = counts.get(vid.decode(), 0) + 1
    return counts


@on_cluster
def test_ray_tasks_write_the_same_store_as_one_process(tmp_path):
    items = load_source(make_clips(tmp_path, 8, 5))
    seen = []
    r = extract_on_ray(items, tmp_path / "ray", cfg(), RayOptions(tasks=3, poll_seconds=0.2), seen.append)
    assert (r.done, r.skipped, r.failed) == (8, 0, []) and r.frames == 8 * 3
    extract(items, tmp_path / "one", cfg())
    assert_same_store(tmp_path / "ray", tmp_path / "one", n=8, atol=1e-5)
    assert {p.name.split("-")[0] for p in (tmp_path / "ray").glob("*-0*.h5")} <= {"s0of3", "s1of3", "s2of3"}
    assert seen[-1]["done"] == seen[-1]["total"] == 8
    again = extract_on_ray(items, tmp_path / "ray", cfg(), RayOptions(tasks=3))
    assert (again.done, again.skipped) == (0, 8)  # a rerun resumes: nothing left, no task started


@on_cluster
def test_a_killed_worker_is_retried_and_every_item_ends_up_once(tmp_path):
    # 4 items of 240 frames per part, one per shard: when a part reports its first item it still has three items
    # (seconds of work even on an idle machine) ahead, far more than the killer needs to react (~60 ms). A part
    # seen only after it finished is not killed: its pid may already serve another task.
    frames = 240
    items = load_source(make_clips(tmp_path, 8, frames, size=64))
    store = tmp_path / "killed"
    progress: list[dict] = []
    killed: list[int] = []
    finished = threading.Event()

    def kill_a_running_part():
        # A task reports its pid when it starts and its first item at once (the shard file can lag on a busy disk).
        while not finished.is_set() and not killed:
            for p in (progress[-1]["parts"] if progress else []):
                if p.pid and 1 <= p.done < p.first_total:
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.part)
                    break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_running_part, daemon=True)
    killer.start()
    run = dict(sampling=Sampling(every=1), size=64)
    try:
        r = extract_on_ray(items, store, cfg(**run, flush_videos=1), RayOptions(tasks=2, poll_seconds=0.05),
                           progress.append)
    finally:
        finished.set()
        killer.join()
    assert killed, "the kill must land mid-run"
    victim = next(p for p in progress[-1]["parts"] if p.part == killed[0])
    assert victim.attempts == 2, "the killed part must have been retried"
    assert r.done == 8 and not r.failed and r.frames == 8 * frames
    assert records_per_id(store) == {it.id: 1 for it in items}
    s = open_store(store)
    assert all(np.array_equal(s.frame_index(it.id), np.arange(frames)) for it in items)


@on_cluster
def test_cli_joins_a_running_cluster_prints_the_usual_summary_and_exits_2_on_failures(tmp_path):
    manifest = make_clips(tmp_path, 4, 3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    manifest.write_text(manifest.read_text() + "broken.mp4,a\n")
    address = ray.get_runtime_context().gcs_address  # the module's cluster, joined as a user joins theirs
    res = cli_subprocess(tmp_path, "--address", address, "--tasks", "2", manifest=manifest,
                         args=("--backbone", "resnet18", "--size", "32", "--workers", "0"))
    assert res.returncode == 2, res.stderr
    assert "written" in res.stdout and "broken" in res.stderr
    assert sorted(open_store(tmp_path / "s").ids(status=None)) == ["broken", "c00", "c01", "c02", "c03"]


@on_cluster
def test_parts_default_to_the_cluster_and_impossible_requests_are_refused_at_once(tmp_path):
    assert plan_tasks(ray, RayOptions()) == TaskPlan(tasks=2, gpus=0.0, cpus=1.0)  # 2 CPUs, no GPU
    assert plan_tasks(ray, RayOptions(cpus_per_task=2)).tasks == 1
    with pytest.raises(RayEngineError, match="no node of the cluster has 1 CPUs and 1 GPUs"):
        plan_tasks(ray, RayOptions(gpus_per_task=1))  # Ray would wait forever for such a task
    with pytest.raises(RayEngineError, match="drop --shard"):
        extract_on_ray(load_source(make_clips(tmp_path, 1, 2)), tmp_path / "s", cfg(shard=(0, 2)), RayOptions())


def cli_subprocess(tmp_path: Path, *ray_args: str, prelude: str = "pass", manifest: Path | None = None,
                   args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    if manifest is None:
        manifest = write_manifest(tmp_path, [("x.mp4", "a")])
    code = f"{prelude}; import sys, cli; sys.argv = ['cli.py', *sys.argv[1:]]; cli.app()"
    cmd = [sys.executable, "-c", code, "extract", str(manifest), "--weights", "none", "--store", str(tmp_path / "s"),
           *args, "--engine", "ray", *ray_args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=child_env(RAY_ADDRESS=""))


@pytest.mark.slow
def test_engine_ray_without_ray_installed_names_the_install_command(tmp_path):
    res = cli_subprocess(tmp_path, prelude="import sys; sys.modules['ray'] = None")  # import ray fails
    assert res.returncode == 1 and 'pip install "framecache[ray]"' in res.stderr and "Traceback" not in res.stderr


@on_cluster
def test_an_address_that_does_not_answer_is_a_timeout_with_a_message(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    refused = cli_subprocess(tmp_path, "--address", f"127.0.0.1:{port}")  # nothing listens there now
    assert refused.returncode == 1 and f"cannot reach Ray at 127.0.0.1:{port}" in refused.stderr
    with socket.socket() as silent:  # accepts TCP connections but never speaks Ray's protocol
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        res = cli_subprocess(tmp_path, "--address", f"127.0.0.1:{silent.getsockname()[1]}", "--connect-timeout", "3")
        assert res.returncode == 1 and "did not answer within 3 s" in res.stderr, res.stderr
        assert time.monotonic() - start < 60
    probe(ray.get_runtime_context().gcs_address, 5)  # a real head answers the probe


def test_bad_ray_options_are_user_errors_naming_the_flag():
    # FramecacheError subclasses: the CLI shows them as one line, exit 1 (a library caller can catch them the same way)
    for options, flag in [(dict(tasks=0), "--tasks"), (dict(cpus_per_task=0), "--cpus-per-task"),
                          (dict(gpus_per_task=-1), "--gpus-per-task")]:
        with pytest.raises(RayEngineError, match=flag):
            RayOptions(**options)
