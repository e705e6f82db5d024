"""Two writers, one output (issue 19, item 2): unique temp names, a checked atomic final step, every "wrote" true.

Real processes started together on real stores of a few MB; the file each claims to have written is read back.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featstore import StoreWriter, VideoRecord, open_store
from featstore.atomic import OutputRaced, check_ours, temp_path, write_text_atomic
from featstore.staging import HOST
from heads.rundir import staged_run

ROOT = Path(__file__).resolve().parents[1]


def make_store(path: Path, videos: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with StoreWriter(path, {"backbone": "resnet18", "weights": "none"}, ["backbone", "weights"], 512,
                     dtype="float32", flush_videos=20) as w:
        for i in range(videos):
            w.add(VideoRecord(f"v{i:03d}", label="ab"[i % 2], features=rng.standard_normal((60, 512)).astype("f4"),
                              frame_index=np.arange(60), time_s=np.arange(60) / 25.0))
    return path


def start_compact(store: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "compact", str(store), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.slow
def test_two_compacts_to_one_out_started_together_give_one_true_wrote_and_one_refusal(tmp_path):
    """Before: both wrote `.c.h5.tmp`; one printed "wrote c.h5 (0.7 MB)" over a 3.3 MB file, the other died with
    ENOENT on the rename. Now one writes and its size is the file's, the other says it lost and exits 1."""
    stores = [make_store(tmp_path / "big", 60, 0), make_store(tmp_path / "small", 10, 1)]
    out = tmp_path / "c.h5"
    for attempt in range(3):
        out.unlink(missing_ok=True)
        procs = [start_compact(store, out) for store in stores]
        results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
        wrote = [(o, store) for (o, e, rc), store in zip(results, stores) if rc == 0]
        for o, e, rc in results:
            assert rc in (0, 1) and "Traceback" not in e, e
            if rc == 1:  # lost the race, or began after the other finished: then OUT is another store's file
                lost = "another process is writing" in e or "exists and is another store's file" in e
                assert lost and str(out) in e and len(e.strip().splitlines()) == 1, e
        assert wrote, results
        # the "wrote" of the writer whose store the file holds is true: its size is the file's (a writer that
        # finished before the other began was true when it said so: the other then replaced a whole file)
        held = sorted(open_store(out).ids())
        o = next(o for o, store in wrote if sorted(open_store(store).ids()) == held)
        assert f"({out.stat().st_size / 1e6:.1f} MB)" in " ".join(o.split())
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.h5")]  # no temp or lock left


def test_temp_names_are_unique_per_process_and_call(tmp_path):
    names = {temp_path(tmp_path / "x.h5") for _ in range(100)}
    assert len(names) == 100 and all(f".x.h5.{HOST}.{os.getpid()}-" in n.name for n in names)


def test_a_file_replaced_after_publish_is_a_lost_race_not_a_wrote(tmp_path):
    target = tmp_path / "index.json"
    tmp = temp_path(target)
    tmp.write_text("ours")
    ours = os.stat(tmp).st_ino
    assert check_ours(Path(tmp.rename(target)), ours).st_size == 4
    write_text_atomic(target, "theirs, written by another process meanwhile")
    with pytest.raises(OutputRaced, match=f"another process replaced {target}"):
        check_ours(target, ours)
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]  # no temp left by either


def test_a_run_written_to_the_same_out_while_this_one_ran_makes_this_one_lose(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputRaced, match="another process wrote --out"):
        with staged_run(out, "fit-head") as stage:
            (stage / "config.json").write_text('{"command": "fit-head"}')
            with staged_run(out, "fit-head") as other:  # the other run finishes first
                (other / "config.json").write_text('{"command": "fit-head", "other": 1}')
    assert '"other": 1' in (out / "config.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_temps_of_a_killed_writer_are_removed_at_the_next_write_of_the_same_output(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the writer that left these was kill -9'ed
    store = make_store(tmp_path / "s", 4, 0)
    out = tmp_path / "c.h5"
    stale = [tmp_path / f".c.h5.{HOST}.{dead.pid}-0000beef.tmp", tmp_path / f".index.json.{HOST}.{dead.pid}-0000beef.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    res = start_compact(store, out)
    assert res.wait(timeout=300) == 0, res.stderr.read()
    write_text_atomic(tmp_path / "index.json", "[]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "index.json", "s"]
