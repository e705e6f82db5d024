"""heads.rundir: a run folder is written only where it overwrites nothing of the user's, and all at once."""
import json

import pytest

from heads.models import HeadError
from heads.rundir import RUN_FILES, check_run_dir, check_run_folder, run_kind, staged_run
from helpers import invoke


def staging_folders(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def write_run(folder, config, *names):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config) if isinstance(config, (dict, list)) else config)
    for name in names:
        (folder / name).write_text("old")
    return folder


def test_run_kind_reads_the_command_and_knows_fit_head_runs_written_before_it_was_recorded(tmp_path):
    assert run_kind(write_run(tmp_path / "km", {"command": "cluster-eval"})) == "cluster-eval"
    assert run_kind(write_run(tmp_path / "old", {"train": {"head": "linear"}})) == "fit-head"
    assert run_kind(write_run(tmp_path / "list", ["not", "an", "object"])) is None
    assert run_kind(write_run(tmp_path / "cut", '{"command": "fit-')) is None
    assert run_kind(write_run(tmp_path / "other", {"command": "sweep"})) is None
    assert run_kind(tmp_path / "absent") is None


def test_check_run_dir_takes_an_absent_empty_or_same_kind_folder_and_names_force_for_anything_else(tmp_path):
    check_run_dir(tmp_path / "absent", "fit-head")
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", "fit-head")
    run = write_run(tmp_path / "run", {"command": "fit-head"}, "head.pt", "metrics.json")
    check_run_dir(run, "fit-head")
    with pytest.raises(HeadError, match=r"already holds a fit-head run .*--force"):
        check_run_dir(run, "cluster-eval")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(HeadError, match=r"already holds a fit-head run \(notes.txt\).*--force"):
        check_run_dir(run, "fit-head")
    check_run_dir(run, "fit-head", force=True)
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(HeadError, match="is a file"):
        check_run_dir(tmp_path / "afile", "fit-head", force=True)


def test_check_run_folder_takes_any_framecache_run_and_refuses_other_files_unless_forced(tmp_path):
    check_run_folder(tmp_path / "absent")
    check_run_folder(write_run(tmp_path / "seeds", {"mode": "seeds"}, "seed-0"))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(HeadError, match=r"not a framecache run \(notes.txt\).*--force"):
        check_run_folder(other)
    check_run_folder(other, force=True)


def test_staged_run_replaces_the_old_run_only_when_the_new_one_is_complete(tmp_path):
    out = write_run(tmp_path / "run", {"command": "fit-head"}, "head.pt", "confusion.png")
    with staged_run(out, "fit-head") as stage:
        assert stage.parent == tmp_path and stage != out
        (stage / "config.json").write_text('{"command": "fit-head", "new": true}')
        (stage / "head.pt").write_text("new")
        assert (out / "head.pt").read_text() == "old"  # nothing moves before the run has finished
    assert (out / "head.pt").read_text() == "new" and json.loads((out / "config.json").read_text())["new"]
    assert not (out / "confusion.png").exists()  # the old run's file the new run did not write
    assert not staging_folders(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_run(out, "fit-head") as stage:
            (stage / "head.pt").write_text("half")
            raise RuntimeError("interrupted")
    assert (out / "head.pt").read_text() == "new" and not staging_folders(tmp_path)
    assert set(p.name for p in out.iterdir()) <= RUN_FILES["fit-head"]


def test_staged_run_keeps_the_users_files_beside_a_forced_run(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(HeadError, match="--force"):
        with staged_run(out, "cluster-eval"):
            pass
    with staged_run(out, "cluster-eval", force=True) as stage:
        (stage / "metrics.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt"]
    assert not staging_folders(tmp_path)


# -- through the CLI -----------------------------------------------------------------------------------------------
def test_fit_head_refuses_a_folder_with_other_files_until_force(tiny_store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text('{"mine": true}')
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", out)
    assert res.exit_code == 1 and "--force" in res.output and "notes.txt" in res.output
    assert json.loads((out / "config.json").read_text()) == {"mine": True}
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "keep me" and (out / "head.pt").exists()
    assert not staging_folders(tmp_path)


def test_a_run_of_the_same_command_is_replaced_and_another_kind_is_refused(tiny_store, tmp_path):
    out = tmp_path / "run"
    assert invoke("fit-head", tiny_store, "--epochs", "1", "--out", out).exit_code == 0
    first = (out / "head.pt").read_bytes()
    assert invoke("fit-head", tiny_store, "--epochs", "1", "--seed", "1", "--out", out).exit_code == 0
    assert (out / "head.pt").read_bytes() != first
    res = invoke("cluster-eval", tiny_store, "--plot", "none", "--out", out)
    assert res.exit_code == 1 and "fit-head run" in res.output
    km = tmp_path / "km"
    assert invoke("cluster-eval", tiny_store, "--plot", "none", "--out", km).exit_code == 0
    assert invoke("cluster-eval", tiny_store, "--plot", "none", "--out", km).exit_code == 0
    res = invoke("fit-head", tiny_store, "--epochs", "1", "--out", km)
    assert res.exit_code == 1 and "cluster-eval run" in res.output
    assert not staging_folders(tmp_path)
