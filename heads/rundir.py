"""Run directories: refuse to overwrite what is not ours, and replace a run all at once.

`fit-head --out DIR` and `cluster-eval --out DIR` write into DIR only when it is absent, empty, or a run of the
same command (whose files the new run replaces); anything else needs `force=True`, which overwrites the files the
run writes and leaves the others. The run is written into a hidden staging folder beside DIR and moved in at the
end, so an interrupted or failed run leaves the old one as it was and no temporary files behind.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from featstore.staging import clean_stale, temp_name
from heads.models import HeadError

# The files each command writes into its run directory.
RUN_FILES = {
    "fit-head": {"config.json", "splits.json", "history.csv", "metrics.json", "head.pt", "curves.png",
                 "confusion.png"},
    "cluster-eval": {"config.json", "metrics.json", "assignments.csv", "embedding.png", "contingency.png",
                     "sweep.png"},
}


def _run_config(path: Path) -> dict | None:
    """The run directory's config.json as a dict, or None (absent, unreadable, not an object)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def run_kind(path: Path) -> str | None:
    """The command that wrote the run directory `path` ('fit-head', 'cluster-eval'), or None."""
    config = _run_config(path)
    if config is None:
        return None
    if config.get("command") in RUN_FILES:
        return config["command"]
    return "fit-head" if isinstance(config.get("train"), dict) else None  # fit-head runs before "command"


def check_run_dir(out: Path, kind: str, force: bool = False) -> None:
    """Raise HeadError unless `kind` may write its run into `out` (see the module docstring)."""
    if out.exists() and not out.is_dir():
        raise HeadError(f"--out {out} is a file; give a folder for the run (it is created if missing)")
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in RUN_FILES[kind]]
    if not entries or force or (run_kind(out) == kind and not foreign):
        return
    what = (f"a {run_kind(out)} run" if run_kind(out) else "files that are not a " + kind + " run")
    shown = ", ".join(foreign[:5] or entries[:5]) + (" ..." if len(foreign or entries) > 5 else "")
    raise HeadError(f"--out {out} already holds {what} ({shown}); choose a new or empty folder, "
                    f"or pass --force to overwrite the files {kind} writes there")


def check_run_folder(out: Path, force: bool = False) -> None:
    """For runs that write in place (--seeds/--folds, several stores, sweeps, late fusion): `out` must be absent,
    empty or a framecache head run (a config.json of ours), unless `force`."""
    if out.exists() and not out.is_dir():
        raise HeadError(f"--out {out} is a file; give a folder for the run (it is created if missing)")
    if not out.exists() or force or not any(out.iterdir()) or _is_head_run(out):
        return
    shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
    raise HeadError(f"--out {out} already holds files that are not a framecache run ({shown}); choose a new or "
                    "empty folder, or pass --force to write the run's files there")


def _is_head_run(path: Path) -> bool:
    config = _run_config(path)
    return config is not None and any(k in config for k in ("train", "fuse", "command", "mode"))


@contextmanager
def staged_run(out: str | Path, kind: str, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder to write the run into; on success its files replace the run in `out`."""
    out = Path(out)
    check_run_dir(out, kind, force)
    clean_stale(out.parent, out.name)  # staged by runs that were killed
    stage = out.parent / temp_name(out.name)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        _publish(stage, out, kind)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path, kind: str) -> None:
    replacing = out.is_dir() and run_kind(out) == kind
    out.mkdir(parents=True, exist_ok=True)
    written = {p.name for p in stage.iterdir()}
    for name in sorted(written, key=lambda n: (n == "metrics.json", n)):  # metrics.json last: runs lists it
        os.replace(stage / name, out / name)
    if replacing:  # the old run's files the new run did not write (confusion.png of a multiclass run, ...)
        for name in RUN_FILES[kind] - written:
            (out / name).unlink(missing_ok=True)
