"""Run directories: every stage-two writer goes through one guard, and a run is replaced whole, never merged.

fit-head (one store, several, --fuse, --seeds, --folds), sweep, fuse and cluster-eval write into `--out DIR` only
when DIR is absent, empty, or a run of the same kind holding only its own files; anything else is refused in one
line naming --force, which replaces DIR whole. A run knows its own files without a hand-kept list: it writes
MANIFEST (the names of what it wrote) and every follow-up that writes into it (evaluate --report, explain,
cluster-eval --thumbnails) adds its own through `claim`. A run written before manifests existed is refused
like a foreign folder: --force replaces it once. The run is written into a hidden staging folder beside DIR and moved
in at the end in place of the old DIR, so an interrupted or failed run leaves the old one as it was and no
temporary files behind, and a finished one never sits beside another run's files (a `head.pt` from an earlier single
run beside the metrics of a --seeds run). Staging folders of a killed run (kill -9) are removed at the next start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from featstore.atomic import OutputRaced, write_text_atomic
from featstore.ownership import check_out_folder, shown
from featstore.staging import clean_stale, temp_name

MANIFEST = "run_files.json"  # {"files": [top-level names the run and its follow-ups wrote]}


def _run_config(path: Path) -> dict | None:
    """The run directory's config.json as a dict, or None (absent, unreadable, not an object)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def write_json(path: Path, obj) -> None:
    """A run file as people read it: indented JSON, numpy scalars as floats (complete or absent, see atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def run_kind(path: Path) -> str | None:
    """The kind of run ("fit-head", "fit-head --seeds", "sweep", ...) that the directory `path` holds, or None, read
    off its config.json."""
    config = _run_config(path)
    if config is None:
        return None
    if config.get("command") in ("fit-head", "cluster-eval", "zero-shot"):
        return config["command"]
    if "grid" in config:
        return "sweep"
    if config.get("mode") in ("seeds", "folds"):
        return f"fit-head --{config['mode']}"
    if config.get("fuse") == "late":
        return "fuse"
    return "fit-head" if isinstance(config.get("train"), dict) else None  # fit-head runs before "command"


def check_run_dir(out: Path, kind: str, force: bool = False) -> None:
    """Raise OwnershipError unless a `kind` run may replace `out` (see the module docstring): the guard every
    writer shares (featstore.ownership), with a run's own files read off its manifest."""
    check_out_folder(out, f"a {kind} run", lambda path: _own_run(path, kind), force,
                     holds=lambda path, entries: _holds(path, entries, kind))


def _foreign(out: Path, entries: list[str]) -> list[str]:
    own = set(run_files(out)) | {MANIFEST}
    return [name for name in entries if name not in own]


def _own_run(out: Path, kind: str) -> bool:
    """`out` holds a `kind` run and nothing else: that run may be replaced by this one."""
    return run_kind(out) == kind and not _foreign(out, sorted(p.name for p in out.iterdir()))


def _holds(out: Path, entries: list[str], kind: str) -> str:
    """What a refused run folder holds, for the error line: a run of another kind, a run beside other files..."""
    foreign, found = _foreign(out, entries), run_kind(out)
    what = f"files that are not a {kind} run"
    if found:
        what = f"a {found} run" + (" and other files" if found == kind else "")
        if found == kind and not (out / MANIFEST).exists():
            what = f"a {found} run without {MANIFEST} (written before runs listed their files)"
    return f"{what} ({shown(foreign or entries)})"


@contextmanager
def staged_run(out: str | Path, kind: str, force: bool = False) -> Iterator[Path]:
    """Check `out` for a `kind` run, yield a staging folder to write the run into; on success it replaces `out`."""
    out = Path(os.path.abspath(out))
    check_run_dir(out, kind, force)
    for base in (out.name, f"{out.name}.old"):  # what killed runs staged, or moved aside to replace
        clean_stale(out.parent, base)
    before = _identity(out)
    stage = out.parent / temp_name(out.name, unique=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        write_json(stage / MANIFEST, {"files": sorted(p.name for p in stage.iterdir())})
        _replace(stage, out, before)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run_files(run: Path) -> list[str]:
    """The top-level names `run`'s manifest lists as written by the run or its follow-ups ([] without one)."""
    try:
        files = json.loads((run / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str)]


def claim(path: str | Path) -> None:
    """Record `path`, about to be written by a follow-up, in the manifest of the run folder holding it (its
    nearest ancestor with one), so that rerunning the run replaces it instead of refusing it as a user's file.
    A path outside any run is left alone."""
    path = Path(os.path.abspath(path))
    for run in path.parents:
        if (run / MANIFEST).is_file() and run_kind(run):
            name = path.relative_to(run).parts[0]
            files = run_files(run)
            if name not in files:
                write_json(run / MANIFEST, {"files": sorted(files + [name])})
            return


def _identity(path: Path) -> tuple[int, int] | None:
    """What tells whether another process replaced `path` meanwhile: its inode and mtime (None when absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _replace(stage: Path, out: Path, before: tuple[int, int] | None) -> None:
    """Move the finished run in, unless another run wrote `out` since this one started (then it lost the race)."""
    raced = OutputRaced(f"another process wrote --out {out} while this run ran; this run's results were discarded "
                        "and the other's kept: run one command per --out at a time, or give each its own --out")
    if _identity(out) != before:
        raise raced
    old = out.parent / temp_name(f"{out.name}.old", unique=True)
    if before is not None:
        os.replace(out, old)
    try:
        os.rename(stage, out)  # fails when a run that finished meanwhile is there now (a non-empty folder)
    except OSError:
        raise raced from None
    shutil.rmtree(old, ignore_errors=True)


def safe_name(text: str) -> str:
    """`text` (a split name, a label: data, not a path) made one harmless path component: no separators, not a
    dot-name, so `report-{split}` stays inside the run whatever the split is called."""
    name = re.sub(r"[/\\\x00]", "_", text)
    return "_" + name if name.startswith(".") or not name else name
