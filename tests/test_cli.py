"""cli.py for real: the README's exit codes (0 / 1 / 2 / 130 / 143) on `python cli.py` processes, real signals,
one line instead of a traceback for every user mistake, and what runs, fit-head, cluster-eval and predict say."""
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
from featstore import open_store
from featstore.verify import verify_store
from helpers import ROOT, cli_command, extract_flags, invoke, run_cli, tiny_config, write_split_clips
from pipeline.extract import extract
from pipeline.sources import load_source

EXTRACT = extract_flags(precision="fp32")


def cli_process(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(cli_command(*args), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kw)


# -- exit codes: the README's table, on real processes -----------------------------------------------------------


@pytest.mark.slow
def test_exit_codes_0_1_2_of_real_processes(tiny_store, tmp_path):
    ok = run_cli("info", tiny_store)
    assert ok.returncode == 0, ok.stderr
    bad_flag = run_cli("fit-head", tiny_store, "--head", "cnn")  # click alone exits 2 here
    assert bad_flag.returncode == 1 and "cnn" in bad_flag.stderr and "Traceback" not in bad_flag.stderr
    (tmp_path / "broken.mkv").write_bytes(b"\x00" * 64)
    failed = run_cli("extract", write_split_clips(tmp_path, ["c0.mkv", "broken.mkv"]), *EXTRACT,
                     "--store", tmp_path / "s")
    assert failed.returncode == 2 and "broken" in failed.stderr, failed.stderr


@pytest.mark.parametrize("args, message", [
    (["fit-head", "STORE", "--epochs", "0"], "--epochs"),        # out of range
    (["fit-head", "STORE", "--optimizer", "lbfgs"], "lbfgs"),   # not a choice
    (["cluster-eval", "STORE", "--bogus"], "--bogus"),          # no such option
    (["info"], "Missing argument"),                              # no STORE given
])
def test_bad_flag_values_exit_1_like_every_user_error(tiny_store, args, message):
    res = invoke(*[tiny_store if a == "STORE" else a for a in args])
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


# -- one line instead of a traceback -------------------------------------------------------------------------------


class Pickled:  # any class: torch's weights-only loader refuses to rebuild it
    pass


def test_a_checkpoint_that_is_not_weights_only_is_refused_in_one_line(tiny_run, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    for name in ("config.json", "metrics.json"):
        (bad / name).write_text((tiny_run / name).read_text())
    torch.save({"state_dict": {}, "payload": Pickled()}, bad / "head.pt")
    res = invoke("predict", bad, tiny_run / "nothing.mp4")
    assert res.exit_code == 1 and "not a weights-only checkpoint" in res.output and "Traceback" not in res.output


def test_a_config_json_of_the_wrong_shape_is_one_line(tiny_run, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "head.pt").write_bytes((tiny_run / "head.pt").read_bytes())
    (bad / "config.json").write_text('["a list, not the object fit-head writes"]')
    res = invoke("evaluate", bad)
    assert res.exit_code == 1 and "config.json" in res.output and "Traceback" not in res.output
    (bad / "config.json").write_text("{not json")
    res = invoke("evaluate", bad)
    assert res.exit_code == 1 and "not valid JSON" in res.output


def test_out_pointing_at_a_file_and_an_unknown_device_are_one_line(tiny_store, tmp_path):
    (tmp_path / "afile").write_text("mine")
    for command in ("fit-head", "cluster-eval"):
        res = invoke(command, tiny_store, "--out", tmp_path / "afile")
        assert res.exit_code == 1 and "is a file" in res.output and "Traceback" not in res.output, res.output
    assert (tmp_path / "afile").read_text() == "mine"
    manifest = tiny_store.parent / "m.csv"
    res = invoke("extract", manifest, *EXTRACT, "--device", "tpu", "--store", tmp_path / "s")
    assert res.exit_code == 1 and "--device 'tpu'" in res.output and "Traceback" not in res.output


def test_an_os_error_is_one_line_naming_the_path(tiny_store, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that permissions do not restrict (root)")
        res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", locked / "run")
        assert res.exit_code == 1 and str(locked) in res.output and "Traceback" not in res.output
    finally:
        locked.chmod(0o700)


def test_os_error_line_names_path_and_hint():
    line = cli.os_error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/store/p0-000001.h5"))
    assert line.startswith("No space left on device: /data/store/p0-000001.h5") and "free some space" in line


def test_a_genuine_bug_keeps_its_traceback():
    """Only user-facing errors become one line: a plain ValueError (a bug) must reach the developer intact."""
    with pytest.raises(ValueError, match="a bug"):
        with cli.user_errors():
            raise ValueError("a bug")


# -- signals: SIGTERM like Ctrl-C, a second Ctrl-C without worker tracebacks ----------------------------------------


def signalled_extract(tmp_path: Path, hold, sig: int, twice: bool,
                      group: bool) -> tuple[subprocess.CompletedProcess, Path]:
    """Extract 4 clips, then one whose opening blocks (held, like a file on a stalled network mount), then 2 more;
    signal the extract while the decode worker waits to open it, then let the file go."""
    manifest = write_split_clips(tmp_path, ["c0.mkv", "c1.mkv", "c2.mkv", "c3.mkv", "c4_held.mkv", "c5.mkv", "c6.mkv"])
    held = hold(tmp_path / "c4_held.mkv")
    store = tmp_path / "s"
    proc = cli_process("extract", manifest, *extract_flags(precision="fp32", workers=1), "--batch-size", "1",
                       "--compile", "off", "--store", store, start_new_session=True)
    assert held.opened.wait(300), proc.poll()
    time.sleep(1.0)
    send = (lambda s: os.killpg(proc.pid, s)) if group else (lambda s: os.kill(proc.pid, s))
    send(sig)
    if twice:
        time.sleep(0.3)
        send(sig)
    time.sleep(0.5)
    held.release()
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), manifest


def assert_resume_equals_uninterrupted(store: Path, manifest: Path, tmp_path: Path, done: list[str]) -> None:
    items = load_source(manifest)
    resumed = extract(items, store, tiny_config(dtype="float16"))
    assert resumed.skipped == len(done) and not resumed.failed
    extract(items, tmp_path / "clean", tiny_config(dtype="float16"))
    a, b = open_store(store), open_store(tmp_path / "clean")
    assert verify_store(store, deep=True).passed
    assert sorted(a.ids()) == sorted(b.ids()) == sorted(it.id for it in items)
    for vid in b.ids():
        np.testing.assert_allclose(a.features(vid), b.features(vid), atol=2e-3)


@pytest.mark.slow
def test_sigterm_saves_finished_videos_says_one_line_and_exits_143(tmp_path, hold):
    res, manifest = signalled_extract(tmp_path, hold, signal.SIGTERM, twice=False, group=False)  # docker stop: PID 1
    assert res.returncode == 143, res.stderr
    assert "terminated by SIGTERM" in res.stderr and "Traceback" not in res.stderr
    done = open_store(tmp_path / "s").ids(status=None)
    # the worker reached the held file, so the main process had taken at least 2 clips; none is a failure
    assert done[:2] == ["c0", "c1"] and done == [f"c{i}" for i in range(len(done))] and len(done) <= 4
    assert not list((tmp_path / "s").glob(".*.tmp"))
    assert_resume_equals_uninterrupted(tmp_path / "s", manifest, tmp_path, done)


@pytest.mark.slow
def test_two_ctrl_c_to_the_process_group_exit_130_without_a_worker_traceback(tmp_path, hold):
    res, manifest = signalled_extract(tmp_path, hold, signal.SIGINT, twice=True, group=True)  # a terminal's Ctrl-C
    assert res.returncode == 130, res.stderr
    assert "interrupted" in res.stderr and "Traceback" not in res.stderr and "Error" not in res.stderr
    done = open_store(tmp_path / "s").ids(status=None)
    assert done[:2] == ["c0", "c1"] and "c4_held" not in done
    assert_resume_equals_uninterrupted(tmp_path / "s", manifest, tmp_path, done)


# -- runs, fit-head messages ------------------------------------------------------------------------------------------


def test_runs_lists_the_good_runs_and_warns_naming_the_bad_metrics_file(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "metrics.json").write_text((tiny_run / "metrics.json").read_text())
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text('{"val": {"accuracy": 0.5')  # cut off mid-write
    res = invoke("runs", runs)
    assert res.exit_code == 0, res.output
    assert "good" in res.stdout and "broken" not in res.stdout
    assert str(runs / "broken" / "metrics.json") in res.output and "warning" in res.output


def test_fit_head_names_clips_with_empty_labels_and_skips_them_when_asked(tmp_path):
    manifest = write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(8)])
    rows = manifest.read_text().splitlines()
    rows[3] = rows[3].replace(",a,", ",,").replace(",b,", ",,")  # c2 loses its label
    manifest.write_text("\n".join(rows) + "\n")
    extract(load_source(manifest), tmp_path / "s", tiny_config(dtype="float16"))
    res = invoke("fit-head", tmp_path / "s", "--epochs", "1", "--out", tmp_path / "run")
    assert res.exit_code == 1 and "c2" in res.output and "--skip-unlabelled" in res.output
    res = invoke("fit-head", tmp_path / "s", "--epochs", "1", "--skip-unlabelled", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "c2" not in sum(json.loads((tmp_path / "run" / "splits.json").read_text()).values(), [])


@pytest.mark.slow
def test_ctrl_c_during_fit_head_says_what_it_means_for_the_run(tiny_store, tmp_path):
    proc = cli_process("fit-head", tiny_store, "--epochs", "100000", "--patience", "100000", "--out", tmp_path / "run")
    deadline = time.time() + 300
    # Training has begun once the process holds the store's shard open (features are read before the first epoch).
    while not any(str(tiny_store) in os.path.realpath(f"/proc/{proc.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{proc.pid}/fd")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "no run was written" in stderr and "extract" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*.tmp"))


def test_k_range_takes_lo_colon_hi_as_its_help_says(tiny_store, tmp_path):
    res = invoke("cluster-eval", tiny_store, "--k-range", "2:3", "--plot", "none", "--out", tmp_path / "km")
    assert res.exit_code == 0, res.output
    sweep = json.loads((tmp_path / "km" / "metrics.json").read_text())["sweep"]
    assert [row["k"] for row in sweep] == [2, 3]
    help_text = invoke("cluster-eval", "--help").output
    assert "LO:HI" in help_text and "LO,HI" not in help_text


# -- weights found by content ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_finds_weights_by_absolute_path_and_accepts_a_moved_copy_checked_by_hash(tmp_path, monkeypatch):
    from pipeline.backbones import load_backbone

    work = tmp_path / "work"
    (work / "w").mkdir(parents=True)
    torch.save(load_backbone("resnet18", "none").model.state_dict(), work / "w" / "r18.pth")
    manifest = write_split_clips(tmp_path, [f"c{i}.mkv" for i in range(6)])
    monkeypatch.chdir(work)  # extract is given a path relative to this folder
    res = invoke("extract", manifest, *extract_flags(weights="w/r18.pth", precision="fp32"), "--store", tmp_path / "s")
    assert res.exit_code == 0, res.output
    config = open_store(tmp_path / "s").config
    assert config.weights_file == str(work / "w" / "r18.pth") and len(config.weights_sha256) == 64
    assert invoke("fit-head", tmp_path / "s", "--epochs", "1", "--out", tmp_path / "run").exit_code == 0
    monkeypatch.chdir(tmp_path)  # the relative path no longer resolves; the recorded absolute one does
    res = invoke("predict", tmp_path / "run", tmp_path / "c0.mkv", "--json")
    assert res.exit_code == 0, res.output
    expected = json.loads(res.stdout)
    (work / "w" / "r18.pth").rename(tmp_path / "moved.pth")
    res = invoke("predict", tmp_path / "run", tmp_path / "c0.mkv")
    assert res.exit_code == 1 and "--weights PATH" in res.output and "Traceback" not in res.output
    res = invoke("predict", tmp_path / "run", tmp_path / "c0.mkv", "--json", "--weights", tmp_path / "moved.pth")
    assert res.exit_code == 0 and json.loads(res.stdout) == expected
    other = load_backbone("resnet18", "none").model.state_dict()
    other["conv1.weight"] = other["conv1.weight"] + 1
    torch.save(other, tmp_path / "other.pth")
    res = invoke("predict", tmp_path / "run", tmp_path / "c0.mkv", "--weights", tmp_path / "other.pth")
    assert res.exit_code == 1 and "not the ones the store was made with" in res.output


