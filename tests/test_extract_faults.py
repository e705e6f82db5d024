"""No input and no resource limit makes `extract` wait forever (issue 19, item 3), on real `cli.py` processes.

Each rule loops over the inputs or resources it covers: files that are not regular files, shared memory or the file
size limit running out, decode workers dead or stuck, and SIGTERM / SIGINT whatever the workers are doing. Every
process must end within seconds with its documented exit code, leaving no worker behind and nothing in /dev/shm.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.synth import write_video
from featstore import open_store
from helpers import PYTHON_START_S, gone, private_shm, stop_at_held_file

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--every", "1", "--size", "32", "--crop", "none",
           "--precision", "fp32", "--batch-size", "1"]


def write_clips(folder: Path, names: list[str]) -> Path:
    """Tiny clips for the names that do not exist yet, and a manifest of all the names."""
    for i, name in enumerate(names):
        if not (folder / name).exists() and not (folder / name).is_symlink():
            write_video(folder / name, np.random.default_rng(i).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    (folder / "m.csv").write_text("path\n" + "\n".join(names) + "\n")
    return folder / "m.csv"


def extract_command(manifest: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "extract", str(manifest), *EXTRACT, "--store", str(store), *extra]


def timed_run(command: list[str], limit: float) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=limit)
    return res, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_pipes_devices_and_sockets_are_failed_items_that_are_never_opened(tmp_path, workers):
    os.mkfifo(tmp_path / "pipe.mkv")  # would wait for a writer forever
    (tmp_path / "zero.mkv").symlink_to("/dev/zero")  # a character device that never ends
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock.mkv"))
    manifest = write_clips(tmp_path, ["c0.mkv", "pipe.mkv", "zero.mkv", "sock.mkv", "c1.mkv"])
    # --compile auto reads a few headers to weigh compiling (pipeline/speed.py): those must not block either
    res, took = timed_run(extract_command(manifest, tmp_path / "s", "--workers", workers), PYTHON_START_S + 60)
    listener.close()
    assert res.returncode == 2, res.stderr
    store = open_store(tmp_path / "s")
    assert store.ids() == ["c0", "c1"]
    for name, kind in [("pipe", "a named pipe"), ("zero", "a character device"), ("sock", "a socket")]:
        assert kind in store.meta(name).error and "not a regular file" in store.meta(name).error
    assert "Traceback" not in res.stderr and took < PYTHON_START_S + 30


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["/dev/shm full", "/dev/shm smaller than a window", "ulimit -f"])
def test_shared_memory_or_file_size_running_out_ends_extract_with_exit_1_and_the_fix(tmp_path, limit):
    manifest = write_clips(tmp_path, [f"c{i}.mkv" for i in range(4)])
    store = tmp_path / "s"
    if limit == "ulimit -f":  # the store's header exists, so what hits the limit first is a shared frame
        assert subprocess.run(extract_command(manifest, store, "--limit", "1"), cwd=ROOT).returncode == 0
        prefix = private_shm(None) + ["sh", "-c", 'ulimit -f 8; exec "$@"', "sh"]
        fix = "ulimit -f"
    else:
        prefix = private_shm(8 if limit == "/dev/shm full" else 64)
        fix = "shared memory is full"
    res, took = timed_run(prefix + extract_command(manifest, store, "--workers", "1", "--compile", "off"),
                          PYTHON_START_S + 60)
    assert res.returncode == 1, res.stderr
    assert fix in res.stderr and "--workers 0" in res.stderr and "Traceback" not in res.stderr
    assert re.search(r"^left in /dev/shm: *$", res.stderr, re.M), res.stderr
    assert took < PYTHON_START_S + 20


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_extract_with_workers_0_ends_within_seconds_while_a_file_does_not_answer(tmp_path, hold, sig):
    """--workers 0 decodes in the command's own process, where no watchdog can time out a read blocked in the kernel
    (docs/cli-decisions.md): the signal still ends it within seconds."""
    manifest = write_clips(tmp_path, ["c0.mkv", "c1_held.mkv"])
    held = hold(tmp_path / "c1_held.mkv")
    proc = subprocess.Popen(extract_command(manifest, tmp_path / "s", "--workers", "0", "--compile", "off"),
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert held.opened.wait(PYTHON_START_S + 60), proc.poll()
        start = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        proc.kill()
        held.release()
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], stderr
    assert took < 15 and "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("worker, sig", [("blocked opening a file", signal.SIGTERM),
                                         ("blocked opening a file", signal.SIGINT),
                                         ("stopped (SIGSTOP)", signal.SIGTERM), ("stopped (SIGSTOP)", signal.SIGINT),
                                         ("killed (SIGKILL)", None)])
def test_extract_ends_within_seconds_whatever_its_decode_worker_is_doing(tmp_path, hold, worker, sig):
    """A signal to the main process alone (docker stop signals PID 1) ends it with 143 / 130, a worker that ignores
    SIGTERM included; without a signal, a worker that dies ends the run with its item failed (exit 2). No worker
    outlives the run. (A worker alive but stuck is found after STALL_S: tests/test_stages.py.)"""
    manifest = write_clips(tmp_path, ["c0.mkv", "c1.mkv", "c2_held.mkv", "c3.mkv"])
    held = hold(tmp_path / "c2_held.mkv")
    code, stderr, took, workers = stop_at_held_file(
        extract_command(manifest, tmp_path / "s", "--workers", "1", "--compile", "off"), held, worker, sig)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130, None: 2}[sig], stderr
    assert took < 15 and gone(workers) and "Traceback" not in stderr
    if sig is None:
        failed = open_store(tmp_path / "s").meta("c2_held")
        assert failed.status == "failed" and "died while decoding it" in failed.error
