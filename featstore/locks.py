"""Who may write which shards of a store: one writer per prefix, and one partition scheme at a time.

Each writer holds an exclusive POSIX record lock (`lockf`) on `STORE/.<prefix>.lock`. Not `flock`: a flock is
shared with forked DataLoader workers, which outlive a `kill -9` of their parent for a moment and kept the store
locked against the immediate rerun; a POSIX lock belongs to the process alone. It does not exclude the same
process, hence `_HELD` as well, and closing ANY descriptor of the file drops the process's lock, so the
in-process check comes before any open.

Prefixes `s<i>of<N>` (`--shard i/N`) split the videos by a hash of their id; any other prefix (`p0`) takes them
all. Two live writers of different schemes (`p0` and `s0of2`, or `s0of2` and `s1of3`) would embed the same videos
twice, so the second is refused while the first holds its lock. One after the other is fine: a writer skips
every video already in the store.
"""
from __future__ import annotations

import fcntl
import re
from pathlib import Path

from featstore.errors import StoreError

_HELD: set[str] = set()  # lock files held by writers of this process
LOCK_RE = re.compile(r"^\.(?P<prefix>[A-Za-z0-9_]+)\.lock$")
PARTITION_RE = re.compile(r"s(?P<i>\d+)of(?P<n>\d+)")


def partition_of(prefix: str) -> int | None:
    """N for a `--shard i/N` prefix, None for a writer that takes every video."""
    m = PARTITION_RE.fullmatch(prefix)
    return int(m["n"]) if m else None


def describe_prefix(prefix: str) -> str:
    m = PARTITION_RE.fullmatch(prefix)
    return f"'{prefix}', i.e. --shard {m['i']}/{m['n']}" if m else f"'{prefix}', i.e. no --shard"


def compatible(a: str, b: str) -> bool:
    """Can writers of prefixes a and b run at once without embedding the same video twice?"""
    return a != b and partition_of(a) is not None and partition_of(a) == partition_of(b)


class WriterLock:
    """The right to write shards `<prefix>-*.h5` into a store directory; refused while a conflicting writer lives."""

    def __init__(self, store: Path, prefix: str, created: bool = False):
        """`created`: the caller just made the store directory (so `abandon` may remove it again)."""
        self.store, self.prefix, self.created = Path(store), prefix, created
        self.key = str((self.store / f".{prefix}.lock").resolve())
        busy = StoreError(f"another process is writing shards '{prefix}' of {self.store}; wait for it, "
                          "or give each process its own part with --shard i/N")
        if self.key in _HELD:
            raise busy
        try:
            self._fh = open(self.key, "a")
        except OSError as e:
            raise StoreError(f"cannot create lock file {self.key}: {e.strerror}") from None
        try:
            fcntl.lockf(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            self._fh.close()
            raise busy from None
        _HELD.add(self.key)
        # Taken before looking at the others: of two conflicting writers starting together, one at least sees
        # the other (both may be refused, never neither).
        try:
            self._refuse_other_schemes()
        except BaseException:
            self.release()
            raise

    def _refuse_other_schemes(self) -> None:
        for path in sorted(self.store.iterdir()):
            m = LOCK_RE.match(path.name)
            if not m or m["prefix"] == self.prefix or compatible(m["prefix"], self.prefix):
                continue
            if _is_held(path):
                raise StoreError(
                    f"a writer with another partition of the videos is active on {self.store} "
                    f"({describe_prefix(m['prefix'])}); this one ({describe_prefix(self.prefix)}) would embed "
                    "the same videos again: wait for it to finish, or give every process the same --shard ?/N")

    def release(self) -> None:
        if self.key in _HELD:
            _HELD.discard(self.key)
            self._fh.close()

    def abandon(self) -> None:
        """Release, and remove what taking the lock created when nothing was written (a run that failed
        before its first shard must not leave an empty store directory behind)."""
        self.release()
        if not self.created or any(p.name != Path(self.key).name for p in self.store.iterdir()):
            return
        Path(self.key).unlink(missing_ok=True)
        try:
            self.store.rmdir()
        except OSError:  # another writer arrived meanwhile: the directory is its now
            pass


def _is_held(lock_file: Path) -> bool:
    """Does some live writer (this process included) hold this lock file?"""
    if str(lock_file.resolve()) in _HELD:
        return True
    try:
        fh = open(lock_file, "a")
    except OSError:
        return False
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return True
    else:
        fcntl.lockf(fh, fcntl.LOCK_UN)
        return False
    finally:
        fh.close()
