"""Temporary names that say who owns them, and the cleaning of those a killed process left behind.

A writer stages its output under the hidden name `.<base>.<host>.<pid>.tmp` (a file or a folder) and renames it
into place when done. A run killed before that leaves it behind; the next start of the same command removes the
ones whose owner is gone: written on this host by a process that no longer exists. Those of a live process, and
any written from another host (whose processes cannot be seen from here, as on a shared filesystem), are kept.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path

# The host as a name part: letters, digits and '-' only, so that '.' still separates the parts.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_name(base: str, unique: bool = False) -> str:
    """The hidden name this process stages `base` under, in the same folder; `unique` adds a random part, so that
    two writes of one output, even from one process, never share a temp file."""
    token = f"-{secrets.token_hex(4)}" if unique else ""
    return f".{base}.{HOST}.{os.getpid()}{token}.tmp"


def clean_stale(folder: Path, base: str) -> list[Path]:
    """Remove the staged `base` files and folders in `folder` whose owner process is dead; returns what went."""
    owned = re.compile(rf"^\.{re.escape(base)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)(-[0-9a-f]+)?\.tmp$")
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no folder yet: nothing was left there
        return []
    stale = [p for p in entries if (m := owned.match(p.name)) and m["host"] == HOST and not pid_alive(int(m["pid"]))]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def pid_alive(pid: int) -> bool:
    """Is process `pid` still running (another user's process counts as running)?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
