"""featstore.staging: what a killed run staged is removed at the next start of the same command, unless its owner
lives or lives on another host (issue 19, item 8)."""
import os
import subprocess

import pytest

from featstore.meta import MetaChange, write_meta_update
from featstore.staging import HOST, clean_stale, temp_name
from featstore import StoreWriter
from featstore.format import HEADER
from heads.rundir import staged_run


def a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def start_extract(tmp_path):
    StoreWriter(tmp_path / "s", {"backbone": "x"}, ["backbone"], dim=4).close()


def start_update_meta(tmp_path):
    start_extract(tmp_path)  # an update is recorded against a store's header
    write_meta_update(tmp_path / "s", [MetaChange("a", {"label": "x"}, {"label": "y"})])


def start_fit_head(tmp_path):
    with staged_run(tmp_path / "run", "fit-head"):
        pass


# the command: (where it stages, what it stages, its start)
COMMANDS = {"extract": ("s", HEADER, start_extract), "extract --update-meta": ("s", "_meta.h5", start_update_meta),
            "fit-head": (".", "run", start_fit_head)}


@pytest.mark.parametrize("command", COMMANDS)
def test_what_a_killed_run_staged_is_removed_at_the_next_start_unless_its_owner_lives(tmp_path, command):
    where, base, start = COMMANDS[command]
    folder = tmp_path / where
    folder.mkdir(exist_ok=True)
    left = {"dead": folder / f".{base}.{HOST}.{a_dead_pid()}.tmp", "live": folder / f".{base}.{HOST}.1.tmp",
            "another host": folder / f".{base}.elsewhere-{HOST}.{a_dead_pid()}.tmp"}
    for path in left.values():
        path.mkdir() if base == "run" else path.write_bytes(b"half written")
    start(tmp_path)
    assert not left["dead"].exists()
    assert left["live"].exists() and left["another host"].exists()


def test_a_temp_name_is_this_processs_own_and_cleaning_keeps_it(tmp_path):
    mine = tmp_path / temp_name("x.h5")
    mine.write_bytes(b"")
    assert mine.name == f".x.h5.{HOST}.{os.getpid()}.tmp"
    assert clean_stale(tmp_path, "x.h5") == [] and mine.exists()
