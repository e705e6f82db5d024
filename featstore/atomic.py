"""One output file written by one process at a time, complete or not at all, and every "wrote X" true.

Every writer of a single output file (a shard, a header, a compacted store, a metadata update, a run's JSON or
PNG, a checkpoint, a benchmark's results) writes a temp file beside it under a name unique to the process (pid
and random: two processes never share one), fsyncs it and moves it into place in one atomic step. The step is
checked: if the file at the target afterwards is not the one this process wrote, another writer replaced it
meanwhile, and `OutputRaced` says so instead of a "wrote" that is no longer true. `OutputLock` goes further for
long writes (compact): of two writers of one output started together, the second is refused at once.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featstore.errors import FramecacheError
from featstore.staging import clean_stale, temp_name

class OutputRaced(FramecacheError):
    """Another process wrote the same output at the same time (this one lost the race, or was refused)."""


def temp_path(path: Path) -> Path:
    """A temp name beside `path` that no other process (nor another write of this one) uses."""
    return path.with_name(temp_name(path.name, unique=True))


def remove_stale_temps(path: Path) -> None:
    """Remove the temp files of `path` that a killed writer left (its process is gone)."""
    clean_stale(path.parent, path.name)


def fsync_path(path: Path) -> None:
    """Flush a file's content, or a folder's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path) -> os.stat_result:
    """Move the complete, fsynced `tmp` onto `path` atomically; the stat of the file now at `path`.

    Raises OutputRaced when that file is not `tmp` (another process replaced it between the two steps)."""
    ours = os.stat(tmp).st_ino
    os.replace(tmp, path)
    fsync_path(path.parent)  # the rename itself survives a power cut
    return check_ours(path, ours)


def check_ours(path: Path, inode: int) -> os.stat_result:
    """The stat of `path`, after checking that it is still the file of inode `inode` this process wrote."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is None or st.st_ino != inode:
        raise OutputRaced(f"another process replaced {path} while this one wrote it, so what it holds now is "
                          "not this run's output: run one writer at a time per output (or give each its own)")
    return st


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write `path`'s content into; on success it becomes `path` (see `publish`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_path(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """`path.write_text(text)`, complete or not at all, and never mixed with another writer's."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


class OutputLock:
    """The right to write `path`, held for a whole long write: a second writer of it is refused in one line.

    A POSIX lock on `.NAME.lock` beside `path`, removed on release (the lock taken is checked to be on the file
    that is there, so a writer that opened it just before it was removed tries again)."""

    def __init__(self, path: Path, command: str):
        self.path, self.command = Path(path), command
        self.file = self.path.with_name(f".{self.path.name}.lock")
        self._fh = None

    def __enter__(self) -> "OutputLock":
        while self._fh is None:
            fh = open(self.file, "a")
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                fh.close()
                raise OutputRaced(f"another process is writing {self.path} ({self.command}); wait for it to finish, "
                                  "or write to another path") from None
            try:
                current = os.stat(self.file).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fh.fileno()).st_ino:
                self._fh = fh
            else:
                fh.close()
        return self

    def __exit__(self, *exc) -> None:
        self.file.unlink(missing_ok=True)
        self._fh.close()
        self._fh = None
