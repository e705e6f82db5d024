"""Faults and user mistakes, for real: exit codes of real processes, real signals, real files in the way.

The README's exit-code table (0 / 1 / 2 / 130 / 143) is checked here on `python cli.py` subprocesses.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cli
from data.synth import write_video
from featstore import open_store
from featstore.verify import verify_store
from pipeline.decode import Sampling
from pipeline.extract import ExtractConfig, extract
from pipeline.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--every", "1", "--size", "32", "--crop", "none",
           "--precision", "fp32"]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def cli_process(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT, text=True,
                          capture_output=True, timeout=600)


def clip(seed: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_manifest(folder: Path, names: list[str], extra: str = "") -> Path:
    rows = ["path,label,group,split"]
    for i, name in enumerate(names):
        if not (folder / name).exists():
            write_video(folder / name, clip(i))
        rows.append(f"{name},{'ab'[i % 2]},g{i},{'test' if i % 4 == 3 else 'train'}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n" + extra)
    return folder / "m.csv"


def small_cfg(**kw) -> ExtractConfig:
    return ExtractConfig(**{**dict(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32,
                                   crop="none", batch_size=4, workers=0, precision="fp32"), **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small extracted store of 8 labelled clips."""
    root = tmp_path_factory.mktemp("faults")
    manifest = write_manifest(root, [f"c{i}.mkv" for i in range(8)])
    extract(load_source(manifest), root / "store", small_cfg())
    return root / "store"


@pytest.fixture(scope="module")
def run_dir(store) -> Path:
    out = store.parent / "runs" / "lin"
    res = invoke("fit-head", store, "--epochs", "2", "--out", out)
    assert res.exit_code == 0, res.output
    return out


# -- exit codes: the README's table, on real processes -----------------------------------------------------------


def test_exit_codes_0_1_2_of_real_processes(store, tmp_path):
    ok = run_cli("info", store)
    assert ok.returncode == 0, ok.stderr
    bad_flag = run_cli("fit-head", store, "--head", "cnn")  # click alone exits 2 here
    assert bad_flag.returncode == 1 and "cnn" in bad_flag.stderr and "Traceback" not in bad_flag.stderr
    (tmp_path / "broken.mkv").write_bytes(b"\x00" * 64)
    failed = run_cli("extract", write_manifest(tmp_path, ["c0.mkv", "broken.mkv"]), *EXTRACT, "--workers", "0",
                     "--store", tmp_path / "s")
    assert failed.returncode == 2 and "broken" in failed.stderr, failed.stderr


@pytest.mark.parametrize("args, message", [
    (["fit-head", "STORE", "--epochs", "0"], "--epochs"),        # out of range
    (["fit-head", "STORE", "--optimizer", "lbfgs"], "lbfgs"),   # not a choice
    (["cluster-eval", "STORE", "--bogus"], "--bogus"),          # no such option
    (["info"], "Missing argument"),                              # no STORE given
])
def test_bad_flag_values_exit_1_like_every_user_error(store, args, message):
    res = invoke(*[store if a == "STORE" else a for a in args])
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output


# -- one line instead of a traceback -------------------------------------------------------------------------------


class Pickled:  # any class: torch's weights-only loader refuses to rebuild it
    pass


def test_a_checkpoint_that_is_not_weights_only_is_refused_in_one_line(run_dir, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    for name in ("config.json", "metrics.json"):
        (bad / name).write_text((run_dir / name).read_text())
    torch.save({"state_dict": {}, "payload": Pickled()}, bad / "head.pt")
    res = invoke("predict", bad, run_dir / "nothing.mp4")
    assert res.exit_code == 1 and "not a weights-only checkpoint" in res.output and "Traceback" not in res.output


def test_a_config_json_of_the_wrong_shape_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "head.pt").write_bytes((run_dir / "head.pt").read_bytes())
    (bad / "config.json").write_text('["a list, not the object fit-head writes"]')
    res = invoke("evaluate", bad)
    assert res.exit_code == 1 and "config.json" in res.output and "Traceback" not in res.output
    (bad / "config.json").write_text("{not json")
    res = invoke("evaluate", bad)
    assert res.exit_code == 1 and "not valid JSON" in res.output


def test_out_pointing_at_a_file_and_an_unknown_device_are_one_line(store, tmp_path):
    (tmp_path / "afile").write_text("mine")
    for command in ("fit-head", "cluster-eval"):
        res = invoke(command, store, "--out", tmp_path / "afile")
        assert res.exit_code == 1 and "is a file" in res.output and "Traceback" not in res.output, res.output
    assert (tmp_path / "afile").read_text() == "mine"
    manifest = store.parent / "m.csv"
    res = invoke("extract", manifest, *EXTRACT, "--device", "tpu", "--store", tmp_path / "s")
    assert res.exit_code == 1 and "--device 'tpu'" in res.output and "Traceback" not in res.output


def test_an_os_error_is_one_line_naming_the_path(store, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that permissions do not restrict (root)")
        res = invoke("fit-head", store, "--epochs", "1", "--out", locked / "run")
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
    manifest = write_manifest(tmp_path, ["c0.mkv", "c1.mkv", "c2.mkv", "c3.mkv", "c4_held.mkv", "c5.mkv", "c6.mkv"])
    held = hold(tmp_path / "c4_held.mkv")
    store = tmp_path / "s"
    proc = cli_process("extract", manifest, *EXTRACT, "--workers", "1", "--batch-size", "1", "--store", store,
                       "--compile", "off", start_new_session=True)
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
    resumed = extract(items, store, small_cfg())
    assert resumed.skipped == len(done) and not resumed.failed
    extract(items, tmp_path / "clean", small_cfg())
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


# -- run directories: never overwrite what is not ours --------------------------------------------------------------


def test_fit_head_refuses_a_folder_with_other_files_until_force(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text('{"mine": true}')
    res = invoke("fit-head", store, "--epochs", "1", "--out", out)
    assert res.exit_code == 1 and "--force" in res.output and "notes.txt" in res.output
    assert json.loads((out / "config.json").read_text()) == {"mine": True}
    res = invoke("fit-head", store, "--epochs", "1", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "notes.txt").exists() and (out / "head.pt").exists()  # --force replaces the folder whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_run_of_the_same_command_is_replaced_and_another_kind_is_refused(store, tmp_path):
    out = tmp_path / "run"
    assert invoke("fit-head", store, "--epochs", "1", "--out", out).exit_code == 0
    first = (out / "head.pt").read_bytes()
    assert invoke("fit-head", store, "--epochs", "1", "--seed", "1", "--out", out).exit_code == 0
    assert (out / "head.pt").read_bytes() != first
    res = invoke("cluster-eval", store, "--plot", "none", "--out", out)
    assert res.exit_code == 1 and "fit-head run" in res.output
    km = tmp_path / "km"
    assert invoke("cluster-eval", store, "--plot", "none", "--out", km).exit_code == 0
    assert invoke("cluster-eval", store, "--plot", "none", "--out", km).exit_code == 0
    res = invoke("fit-head", store, "--epochs", "1", "--out", km)
    assert res.exit_code == 1 and "cluster-eval run" in res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- runs, fit-head messages ------------------------------------------------------------------------------------------


def test_runs_lists_the_good_runs_and_warns_naming_the_bad_metrics_file(run_dir, tmp_path):
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "metrics.json").write_text((run_dir / "metrics.json").read_text())
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text('{"val": {"accuracy": 0.5')  # cut off mid-write
    res = invoke("runs", runs)
    assert res.exit_code == 0, res.output
    assert "good" in res.stdout and "broken" not in res.stdout
    assert str(runs / "broken" / "metrics.json") in res.output and "warning" in res.output


def test_fit_head_names_clips_with_empty_labels_and_skips_them_when_asked(tmp_path):
    manifest = write_manifest(tmp_path, [f"c{i}.mkv" for i in range(8)])
    rows = manifest.read_text().splitlines()
    rows[3] = rows[3].replace(",a,", ",,").replace(",b,", ",,")  # c2 loses its label
    manifest.write_text("\n".join(rows) + "\n")
    extract(load_source(manifest), tmp_path / "s", small_cfg())
    res = invoke("fit-head", tmp_path / "s", "--epochs", "1", "--out", tmp_path / "run")
    assert res.exit_code == 1 and "c2" in res.output and "--skip-unlabelled" in res.output
    res = invoke("fit-head", tmp_path / "s", "--epochs", "1", "--skip-unlabelled", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "c2" not in sum(json.loads((tmp_path / "run" / "splits.json").read_text()).values(), [])


@pytest.mark.slow
def test_ctrl_c_during_fit_head_says_what_it_means_for_the_run(store, tmp_path):
    proc = cli_process("fit-head", store, "--epochs", "100000", "--patience", "100000", "--out", tmp_path / "run")
    deadline = time.time() + 300
    # Training has begun once the process holds the store's shard open (features are read before the first epoch).
    while not any(str(store) in os.path.realpath(f"/proc/{proc.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{proc.pid}/fd")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "no run was written" in stderr and "extract" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*.tmp"))


def test_k_range_takes_lo_colon_hi_as_its_help_says(store, tmp_path):
    res = invoke("cluster-eval", store, "--k-range", "2:3", "--plot", "none", "--out", tmp_path / "km")
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
    manifest = write_manifest(tmp_path, [f"c{i}.mkv" for i in range(6)])
    monkeypatch.chdir(work)  # extract is given a path relative to this folder
    args = [*EXTRACT[:2], "--weights", "w/r18.pth", *EXTRACT[4:]]
    res = invoke("extract", manifest, *args, "--workers", "0", "--store", tmp_path / "s")
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


# -- rotation metadata ------------------------------------------------------------------------------------------------


def write_rotated(path: Path, frames: np.ndarray, degrees: int) -> Path:
    """A lossless clip whose stream carries a display matrix (what phones write) rotating it `degrees` CCW."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.set_display_rotation(degrees)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_display_matrix_is_applied_like_a_player_shows_the_clip(tmp_path, degrees):
    from pipeline.decode import Geometry, decode_video

    frames = np.zeros((3, 32, 48, 3), np.uint8)  # landscape as stored; a red block marks the top-left corner
    frames[:, :8, :12, 0] = 255
    frames[:, 8:, :, 2] = np.arange(3)[:, None, None] * 60 + 40
    rotated = write_rotated(tmp_path / "phone.mp4", frames, degrees)
    upright = write_video(tmp_path / "upright.mkv", np.ascontiguousarray(np.rot90(frames, degrees // 90, axes=(1, 2))))
    geometry = Geometry(size=24, resize=24, crop="square")
    got, want = decode_video(rotated, Sampling(), geometry), decode_video(upright, Sampling(), geometry)
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.rotation == degrees % 360 and want.rotation == 0
    assert (got.width, got.height) == (want.width, want.height) == ((32, 48) if degrees % 180 else (48, 32))


def test_extract_records_each_videos_rotation(tmp_path):
    frames = clip(0)
    write_rotated(tmp_path / "phone.mp4", frames, -90)
    write_video(tmp_path / "plain.mkv", frames)
    (tmp_path / "m.csv").write_text("path,label\nphone.mp4,a\nplain.mkv,b\n")
    extract(load_source(tmp_path / "m.csv"), tmp_path / "s", small_cfg())
    s = open_store(tmp_path / "s")
    assert (s.meta("phone").rotation, s.meta("plain").rotation) == (270, 0)
    assert s.config.autorotate is True


# -- edited labels ------------------------------------------------------------------------------------------------------


def test_edited_labels_warn_and_update_meta_records_them_without_re_embedding(tmp_path):
    manifest = write_manifest(tmp_path, [f"c{i}.mkv" for i in range(6)])
    store = tmp_path / "s"
    assert invoke("extract", manifest, *EXTRACT, "--workers", "0", "--store", store).exit_code == 0
    shards = sorted(p.name for p in store.glob("p0-*.h5"))
    before = open_store(store).load_all().features
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace(",a,g0,train", ",c,g0,test")   # c0: new label and split
    rows[2] = rows[2].replace(",g1,", ",g9,")                 # c1: new group
    manifest.write_text("\n".join(rows) + "\n")
    res = invoke("extract", manifest, *EXTRACT, "--workers", "0", "--store", store)
    assert res.exit_code == 0 and "2 item(s) already in the store have another" in res.output, res.output
    assert "c0: label 'a' -> 'c'" in res.output and "--update-meta" in res.output
    assert open_store(store).meta("c0").label == "a"  # a warning only
    res = invoke("extract", manifest, "--update-meta", "--store", store)
    assert res.exit_code == 0 and "2 item(s) updated" in res.output, res.output
    s = open_store(store)
    assert (s.meta("c0").label, s.meta("c0").split, s.meta("c1").group) == ("c", "test", "g9")
    assert s.meta("c2").label == "a" and s.meta("c0").labels == ["c"]
    assert sorted(p.name for p in store.glob("p0-*.h5")) == shards  # nothing re-embedded
    np.testing.assert_array_equal(s.load_all().features, before)
    again = invoke("extract", manifest, *EXTRACT, "--workers", "0", "--store", store)
    assert again.exit_code == 0 and "another" not in again.output
    assert invoke("compact", store, tmp_path / "one.h5").exit_code == 0
    assert open_store(tmp_path / "one.h5").meta("c0").label == "c"
    info = json.loads(invoke("info", store, "--json").stdout)
    assert {i["id"]: i["split"] for i in info["items"]}["c0"] == "test"
