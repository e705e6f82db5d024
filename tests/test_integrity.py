"""Store integrity under faults: disk full, kill -9, damaged and foreign shards, user mistakes (issue 7).

Real files, real child processes with RLIMIT_FSIZE, real SIGKILL, bytes flipped on disk; every fault case ends
with a store that `verify --deep` passes after the rerun and that equals an uninterrupted run.
"""
import json
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_same_store, child_env, cli_command, extract_flags, invoke, kill_9_when_shards, write_clips

from featstore import BadShard, ForeignShard, StoreError, StoreWriter, VideoRecord, open_store, verify_store

N_CLIPS = 10
SETTINGS = extract_flags(precision="fp32", dtype="float32")


def extract_args(manifest, store, *extra):
    return ["extract", manifest, *SETTINGS, "--store", store, *extra]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Ten lossless 32 px clips of 5 frames, two labels: returns the manifest."""
    return write_clips(tmp_path_factory.mktemp("clips"), [f"c{i:02d}.mkv" for i in range(N_CLIPS)], frames=5,
                       split=lambda i: "test" if i >= 8 else "train")


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> Path:
    """The same clips extracted in one uninterrupted run."""
    store = tmp_path_factory.mktemp("ref") / "store"
    res = invoke(*extract_args(clips, store))
    assert res.exit_code == 0, res.output
    return store


def assert_verify_deep_passes(store: Path) -> None:
    res = invoke("verify", store, "--deep")
    assert res.exit_code == 0, res.output
    assert "store ok" in res.output


def no_temp_files(store: Path) -> bool:
    return not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


class FileSizeLimit:
    """preexec_fn of a child whose files may not grow past `nbytes`: with SIGXFSZ ignored, a write past the limit
    fails with EFBIG, as it fails with ENOSPC on a full disk."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __call__(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.nbytes, self.nbytes))


def cli_child(*args, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in a child process, optionally under a file size limit."""
    env = child_env(COLUMNS="400")  # wide: rich must not wrap the one line
    return subprocess.run(cli_command(*args), env=env, text=True, capture_output=True, timeout=300,
                          preexec_fn=FileSizeLimit(file_limit) if file_limit else None)


# -- disk full -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_disk_full_in_extract_is_one_line_keeps_finished_shards_and_the_rerun_resumes(clips, reference, tmp_path):
    store = tmp_path / "s"
    assert invoke(*extract_args(clips, store, "--limit", "6")).exit_code == 0
    finished = {p.name: p.read_bytes() for p in store.glob("p0-*.h5")}
    # A shard's feature chunk alone is 128 x 512 x 4 bytes: under a 150 kB file size limit the next shard cannot
    # be written (the header and lock files already exist).
    full = cli_child(*extract_args(clips, store), file_limit=150_000)
    assert full.returncode == 1, full.stderr
    line = one_line_error(full.stderr)
    assert "disk full writing" in line and str(store) in line and "free space" in line
    assert no_temp_files(store)
    assert {p.name: p.read_bytes() for p in store.glob("p0-*.h5")} == finished
    assert_verify_deep_passes(store)
    assert len(open_store(store).ids()) == 6
    resumed = invoke(*extract_args(clips, store))
    assert resumed.exit_code == 0 and "already in store" in resumed.output
    assert_verify_deep_passes(store)
    assert_same_store(store, reference, N_CLIPS)


GROWING_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from featstore import DiskFull, StoreWriter, VideoRecord
    w = StoreWriter(sys.argv[1], {"backbone": "r", "every": 1}, ["backbone", "every"], dim=512, flush_videos=2,
                    dtype="float32")
    try:
        for i in range(8):  # shard 0: 40 + 80 rows (one 256 kB chunk); shard 1: 120 + 160 rows (three)
            n = 40 * (i + 1)
            w.add(VideoRecord(f"v{i}", features=np.full((n, 512), i, np.float32), frame_index=np.arange(n),
                              time_s=np.arange(n) / 25))
    except DiskFull as e:
        print(str(e))
        w.abort()
""")


def test_disk_full_mid_run_leaves_earlier_shards_and_no_temp_file_and_exits_cleanly(tmp_path):
    store = tmp_path / "s"
    run = subprocess.run([sys.executable, "-c", GROWING_WRITER, str(store)], capture_output=True, text=True,
                         env=child_env(), preexec_fn=FileSizeLimit(600_000), timeout=120)
    assert run.returncode == 0, run.stderr  # not 139: HDF5 never saw the failed write
    assert "disk full writing" in run.stdout and "p0-000001.h5" in run.stdout
    assert no_temp_files(store)
    s = open_store(store)
    assert s.ids() == ["v0", "v1"] and (s.features("v1") == 1).all()
    assert verify_store(store, deep=True).passed


@pytest.fixture
def small_filesystem(tmp_path):
    """A 700 kB tmpfs (a really full disk: ENOSPC); skipped where this process may not mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_really_full_disk_gives_the_same_one_line_as_the_size_limit(small_filesystem):
    store = small_filesystem / "s"
    run = subprocess.run([sys.executable, "-c", GROWING_WRITER, str(store)], capture_output=True, text=True,
                         env=child_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "disk full writing" in run.stdout and "p0-000001.h5" in run.stdout and "kB is free there" in run.stdout
    assert no_temp_files(store) and open_store(store).ids() == ["v0", "v1"]


@pytest.mark.slow
def test_disk_full_in_compact_is_one_line_and_leaves_no_file(reference, tmp_path):
    out = tmp_path / "one.h5"
    full = cli_child("compact", reference, out, file_limit=20_000)
    assert full.returncode == 1, full.stderr
    line = one_line_error(full.stderr)
    assert "disk full writing" in line and str(out) in line
    assert not out.exists() and no_temp_files(tmp_path)
    assert invoke("compact", reference, out).exit_code == 0
    assert_verify_deep_passes(out)
    assert_same_store(out, reference, N_CLIPS)


# -- kill -9 ---------------------------------------------------------------------------------------------------
KILLED = textwrap.dedent("""
    import sys, time
    from pipeline.decode import Sampling
    from pipeline.extract import ExtractConfig, extract
    from pipeline.sources import load_source
    cfg = ExtractConfig(backbone="resnet18", weights="none", sampling=Sampling(every=1), size=32, crop="none",
                        workers=0, precision="fp32", dtype="float32", flush_videos=2)
    extract(load_source(sys.argv[1]), sys.argv[2], cfg,
            on_progress=lambda p: time.sleep(0.5) if p["done"] >= 4 else None)  # the kill lands mid-run
""")


@pytest.mark.slow
def test_kill_9_then_rerun_gives_a_store_that_verify_deep_passes_equal_to_an_uninterrupted_run(
        clips, reference, tmp_path):
    store = tmp_path / "s"
    kill_9_when_shards(subprocess.Popen([sys.executable, "-c", KILLED, str(clips), str(store)], env=child_env()), store)
    assert 0 < len(open_store(store).ids()) < N_CLIPS, "the kill must land mid-run"
    assert_verify_deep_passes(store)
    assert invoke(*extract_args(clips, store)).exit_code == 0
    assert_verify_deep_passes(store)
    assert_same_store(store, reference, N_CLIPS)


# -- damaged shards --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_runs(clips, tmp_path_factory) -> Path:
    """The clips extracted in three runs: shards of 4, 4 and 2 videos."""
    store = tmp_path_factory.mktemp("three") / "s"
    for extra in (["--limit", "4"], ["--limit", "4"], []):
        assert invoke(*extract_args(clips, store, *extra)).exit_code == 0
    return store


@pytest.fixture
def three_shards(three_runs, tmp_path) -> Path:
    """A copy of three_runs for the test to damage."""
    return shutil.copytree(three_runs, tmp_path / "s")


def shards(store: Path) -> list[Path]:
    return sorted(store.glob("p0-*.h5"))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def feature_chunk_offset(shard: Path) -> int:
    with h5py.File(shard) as f:
        return f["features"].id.get_chunk_info(0).byte_offset


def test_truncated_shard_is_named_by_every_command_then_quarantine_and_rerun_repair_it(clips, reference,
                                                                                       three_shards, tmp_path):
    store, victim = three_shards, shards(three_shards)[1]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    for args in (["info", store], ["compact", store, tmp_path / "one.h5"], extract_args(clips, store),
                 ["fit-head", store, "--out", tmp_path / "run"], ["cluster-eval", store, "--out", tmp_path / "km"]):
        res = invoke(*args)
        assert res.exit_code == 1, (args, res.output)
        assert victim.name in res.output and "truncated" in res.output, (args, res.output)
        assert f"verify {store} --quarantine" in res.output and "Traceback" not in res.output
    res = invoke("verify", store)
    assert res.exit_code == 1 and victim.name in res.output and "truncated" in res.output
    res = invoke("verify", store, "--quarantine")
    assert res.exit_code == 1 and "rerun extract to redo their videos" in res.output
    assert (store / "_quarantine" / victim.name).exists() and not victim.exists()
    assert len(open_store(store).ids()) == N_CLIPS - 4
    assert invoke(*extract_args(clips, store)).exit_code == 0
    assert json.loads(invoke("info", store, "--json").stdout)["videos"] == N_CLIPS
    assert_verify_deep_passes(store)
    assert_same_store(store, reference, N_CLIPS)


def test_flipped_bytes_in_features_name_the_shard_and_deep_verify_finds_them(clips, reference, three_shards):
    store, victim = three_shards, shards(three_shards)[0]
    with h5py.File(victim) as f:
        first = f["video_id"][0].decode()
    flip_byte(victim, feature_chunk_offset(victim) + 100)
    s = open_store(store)  # structure is intact: opening reads only the per-video columns
    with pytest.raises(BadShard, match=rf"shard .*{victim.name}: checksum mismatch in features .*"
                                       rf"verify {store} --quarantine"):
        s.load_all()
    with pytest.raises(BadShard, match="checksum mismatch in features"):
        s.features(first)
    res = invoke("fit-head", store, "--out", store.parent / "run")
    assert res.exit_code == 1 and victim.name in res.output and "checksum mismatch in features" in res.output
    assert verify_store(store).passed  # without --deep no frame block is read
    report = verify_store(store, deep=True, quarantine=True)
    assert list(report.bad) == [victim.name] and "checksum mismatch in features" in report.bad[victim.name]
    assert invoke(*extract_args(clips, store)).exit_code == 0
    assert_verify_deep_passes(store)
    assert_same_store(store, reference, N_CLIPS)


def test_non_finite_features_fail_deep_verify_naming_the_video(tmp_path):
    with StoreWriter(tmp_path / "s", {"b": 1}, ["b"], dim=4, dtype="float32") as w:
        w.add(VideoRecord("fine", features=np.ones((3, 4)), frame_index=np.arange(3), time_s=np.arange(3.0)))
        w.add(VideoRecord("nan", features=np.full((2, 4), np.nan), frame_index=np.arange(2), time_s=np.arange(2.0)))
    report = verify_store(tmp_path / "s", deep=True)
    assert not report.passed and "non-finite values in features (row 3, video nan)" in next(iter(report.bad.values()))


def test_every_per_video_column_is_checksummed(three_shards):
    victim = shards(three_shards)[2]
    original = victim.read_bytes()
    with h5py.File(victim) as f:
        offset_at = f["offset"].id.get_offset()  # contiguous: the column's first value starts here
        fps_at = f["fps"].id.get_offset()
    path_at = original.index(b"c08.mkv")  # variable-length strings live in a heap fletcher32 cannot see
    for where, column in ((offset_at + 8, "offset"), (fps_at + 3, "fps"), (path_at, "path")):
        victim.write_bytes(original)
        flip_byte(victim, where)
        with pytest.raises(BadShard, match=rf"{victim.name}: checksum mismatch in {column}"):
            open_store(three_shards)
        assert "checksum mismatch in " + column in verify_store(three_shards).bad[victim.name]


def test_a_shard_without_checksums_still_opens_and_its_offsets_are_validated(three_shards):
    """Shards written before column checksums existed have no `columns_sha256`: they open, and a flipped
    offset is still caught by the offsets check (contiguous, in range, summing to the rows)."""
    victim = shards(three_shards)[2]
    with h5py.File(victim, "r+") as f:
        del f.attrs["columns_sha256"]
    assert len(open_store(three_shards).ids()) == N_CLIPS
    with h5py.File(victim) as f:
        offset_at = f["offset"].id.get_offset()
    flip_byte(victim, offset_at + 8)  # the second video's offset
    with pytest.raises(BadShard, match=r"video c09 has offset .* must be contiguous"):
        open_store(three_shards)


def test_two_bad_shards_are_both_named(three_shards):
    for victim in shards(three_shards)[:2]:
        victim.write_bytes(b"\0" * 4096)
    with pytest.raises(StoreError, match=r"2 shards of .* cannot be used \(p0-000000.h5: not an HDF5 file.*"
                                         r"p0-000001.h5: not an HDF5 file"):
        open_store(three_shards)


# -- foreign and duplicate shards ------------------------------------------------------------------------------
def test_a_shard_of_other_settings_is_refused_naming_it_and_the_setting(clips, reference, three_shards, tmp_path):
    other = tmp_path / "other"
    assert invoke("extract", clips, *[a if a != "1" else "2" for a in SETTINGS], "--store", other,
                  "--limit", "2").exit_code == 0
    stray = three_shards / "p0-000009.h5"
    shutil.copyfile(shards(other)[0], stray)
    with pytest.raises(ForeignShard, match=r"p0-000009.h5: was extracted with other settings than its store "
                                           r"\(every: store has 1, this shard has 2\)"):
        open_store(three_shards)
    res = invoke("fit-head", three_shards, "--out", tmp_path / "run")
    assert res.exit_code == 1 and "p0-000009.h5" in res.output and "every: store has 1" in res.output
    report = verify_store(three_shards, quarantine=True)
    assert list(report.bad) == ["p0-000009.h5"] and report.lost_videos == 0
    assert_verify_deep_passes(three_shards)
    assert_same_store(three_shards, reference, N_CLIPS)


def test_a_shard_copied_twice_is_a_duplicate_for_verify(three_shards):
    shutil.copyfile(shards(three_shards)[0], three_shards / "p0-000007.h5")
    res = invoke("verify", three_shards)
    assert res.exit_code == 1 and "p0-000007.h5" in res.output and "stored ok twice" in res.output
    assert invoke("verify", three_shards, "--quarantine").exit_code == 1
    assert_verify_deep_passes(three_shards)


def test_verify_of_a_missing_store_or_bad_header_is_one_line(tmp_path):
    assert invoke("verify", tmp_path / "nope").exit_code == 1
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "_store.h5").write_text("not hdf5")
    res = invoke("verify", tmp_path / "s")
    assert res.exit_code == 1 and "_store.h5 is not a readable framecache store header" in res.output


# -- user mistakes ---------------------------------------------------------------------------------------------
def test_compact_refuses_to_overwrite_a_file_that_is_not_a_store_unless_forced(reference, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    res = invoke("compact", reference, notes)
    assert res.exit_code == 1 and "is not a framecache store file" in res.output and "--force" in res.output
    assert notes.read_text() == "my notes\n"
    assert invoke("compact", reference, tmp_path / "one.h5").exit_code == 0
    assert invoke("compact", reference, tmp_path / "one.h5").exit_code == 0  # a store file may be replaced
    assert invoke("compact", reference, notes, "--force").exit_code == 0
    assert len(open_store(notes).ids()) == N_CLIPS


def test_compact_into_a_directory_is_one_line_and_leaves_nothing(reference, tmp_path):
    target = tmp_path / "cdir"
    target.mkdir()
    res = invoke("compact", reference, target)
    assert res.exit_code == 1 and "is a directory" in res.output and "Traceback" not in res.output
    assert not list(tmp_path.rglob("*.tmp")) and not list(target.iterdir())


def test_extract_refuses_a_non_empty_directory_that_is_not_a_store_unless_forced(clips, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\begin{document}")
    res = invoke(*extract_args(clips, folder, "--limit", "1"))
    assert res.exit_code == 1 and "not a framecache store (it holds thesis.tex)" in res.output
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert invoke(*extract_args(clips, folder, "--limit", "1", "--force")).exit_code == 0
    assert len(open_store(folder).ids()) == 1 and (folder / "thesis.tex").exists()
    # An empty directory is fine without --force.
    (tmp_path / "empty").mkdir()
    assert invoke(*extract_args(clips, tmp_path / "empty", "--limit", "1")).exit_code == 0


def test_a_text_file_given_as_store_is_not_called_a_compacted_store(clips, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = invoke(*extract_args(clips, tmp_path / "notes.txt"))
    assert res.exit_code == 1 and "is a file, not a store directory" in res.output
    assert "compacted" not in res.output
    res = invoke("info", tmp_path / "notes.txt")
    assert res.exit_code == 1 and "not an HDF5 file" in res.output and "Traceback" not in res.output


def test_a_second_writer_is_refused_before_its_model_is_loaded(clips, tmp_path):
    store = tmp_path / "s"
    with StoreWriter(store, {"b": 1}, ["b"], dim=4):
        # The weights file does not exist: had the model been loaded first, the error would be about it.
        res = invoke("extract", clips, "--backbone", "resnet18", "--weights", tmp_path / "absent.pth",
                     "--store", store)
    assert res.exit_code == 1 and "another process is writing shards 'p0'" in res.output


def test_writers_of_different_partitions_cannot_run_at_once(tmp_path):
    store, cfg, keys = tmp_path / "s", {"b": 1}, ["b"]
    with StoreWriter(store, cfg, keys, dim=4):  # p0: every video
        with pytest.raises(StoreError, match=r"another partition .* \('p0', i.e. no --shard\); this one "
                                             r"\('s1of2', i.e. --shard 1/2\)"):
            StoreWriter(store, cfg, keys, dim=4, prefix="s1of2")
    with StoreWriter(store, cfg, keys, dim=4, prefix="s0of2"), StoreWriter(store, cfg, keys, dim=4, prefix="s1of2"):
        with pytest.raises(StoreError, match="another partition"):
            StoreWriter(store, cfg, keys, dim=4, prefix="s0of3")
        probe = (f"from featstore import StoreWriter; StoreWriter({str(store)!r}, {cfg!r}, {keys!r}, dim=4)")
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_env())
        assert other.returncode != 0 and "another partition" in other.stderr
    # One after the other is fine: the later writer skips what the store already holds.
    StoreWriter(store, cfg, keys, dim=4).close()


def test_info_failed_lists_every_failure(tmp_path):
    with StoreWriter(tmp_path / "s", {"b": 1}, ["b"], dim=4) as w:
        for i in range(25):
            w.add(VideoRecord(f"bad{i:02d}", status="failed", error=f"reason {i}"))
    res = invoke("info", tmp_path / "s")
    assert "bad19" in res.output and "bad20" not in res.output and "5 more" in res.output
    assert "--failed" in res.output
    listed = invoke("info", tmp_path / "s", "--failed")
    assert listed.exit_code == 0
    assert listed.stdout.splitlines() == [f"bad{i:02d}\treason {i}" for i in range(25)]


def test_a_damaged_compacted_file_is_named_and_verify_says_to_compact_again(reference, tmp_path):
    one = tmp_path / "one.h5"
    assert invoke("compact", reference, one, "--compression", "none").exit_code == 0
    flip_byte(one, feature_chunk_offset(one) + 64)
    res = invoke("fit-head", one, "--out", tmp_path / "run")
    assert res.exit_code == 1 and f"store file {one}: checksum mismatch in features" in res.output
    assert "cli.py compact" in res.output and "Traceback" not in res.output
    res = invoke("verify", one, "--deep")
    assert res.exit_code == 1 and "checksum mismatch in features" in res.output
    assert "cli.py compact" in res.output and "--quarantine" not in res.output  # the hint that works for a file
    res = invoke("verify", one, "--quarantine")
    assert res.exit_code == 1 and "compact it again" in res.output


def test_a_run_that_fails_before_its_first_shard_leaves_no_store_directory(clips, tmp_path):
    res = invoke("extract", clips, "--backbone", "resnet18", "--weights", tmp_path / "absent.pth",
                 "--store", tmp_path / "new")
    assert res.exit_code == 1 and "absent.pth" in res.output
    assert not (tmp_path / "new").exists()
