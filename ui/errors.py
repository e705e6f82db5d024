"""How a command ends: exit codes, one-line errors on stderr, and SIGINT/SIGTERM handling.

Exit codes (README, tests): 0 success; 1 user error, bad flag values included (one line, no traceback); 2 finished
with failed items; 130 interrupted by SIGINT (Ctrl-C); 143 stopped by SIGTERM.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from contextlib import contextmanager

import typer
from typer.core import TyperGroup

from ui import render

USER_ERROR, FAILED_ITEMS, INTERRUPTED, TERMINATED = 1, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM


class ExitCodes(TyperGroup):
    """Every command's exit code follows the table above; click alone would exit 2 on a bad flag value, which
    reads as "finished with failed items"."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except render.UsageError as e:  # a bad flag value, or no command given: a user error like any other
            render.show_usage_error(e)
            code = USER_ERROR
        except typer.Abort:
            code = INTERRUPTED
        code = code if isinstance(code, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


def fail(message: str, code: int = USER_ERROR) -> None:
    render.print_error(message)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (how Slurm, Docker and systemd stop a job), raised like Ctrl-C so the same cleanup runs."""


class StopSignals:
    """SIGINT and SIGTERM interrupt the command once, as KeyboardInterrupt / Terminated, so that `finally` blocks
    save finished work; a second signal while that runs is ignored, so it cannot abandon the save halfway.

    A signal that lands inside a C extension can have its exception swallowed there (PyAV replaces it with its own
    error), and one that lands in a weakref callback or a finalizer is only printed as "Exception ignored"; so every
    progress update (ui.render.progress_bar) and extract's callback call `check()`, which raises it again."""

    def __init__(self) -> None:
        self.raised: int | None = None  # the signal that interrupted, once one did
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        render.signal_check = self.check
        return self

    def handle(self, signum: int, frame) -> None:
        if self.raised is not None:
            os.write(2, b"\nstill saving what is finished; it takes a moment\n")
            return
        self.raised = signum
        self.check()

    def check(self) -> None:
        if self.raised is not None:
            raise Terminated() if self.raised == signal.SIGTERM else KeyboardInterrupt()

    def __exit__(self, *exc) -> None:
        render.signal_check = render._no_signal
        for sig, handler in self.previous.items():
            # Once interrupted, the command only winds down (DataLoader workers are joined as their iterator is
            # collected, after this block): a further signal then must not raise inside that cleanup.
            signal.signal(sig, signal.SIG_IGN if self.raised is not None else handler)


# What to do about an OS error, by errno; the error's own text says what happened.
OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space or choose another path, then rerun: finished work is kept",
    errno.EDQUOT: "free some space or choose another path, then rerun: finished work is kept",
    errno.EFBIG: "the file grew past a size limit, ulimit -f or the filesystem's: raise it or choose another path",
    errno.EACCES: "check the permissions of that path, or choose another one",
    errno.EPERM: "check the permissions of that path, or choose another one",
    errno.EROFS: "that filesystem is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that path is a folder; a file was expected",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower --workers",
    errno.ENFILE: "too many open files on this machine: lower --workers",
    errno.ENOMEM: "out of memory: lower --batch-size or --workers",
}
# Resource exhaustion that torch and Python report as RuntimeError / MemoryError: (what its text says, the line).
SHM_LINE = "shared memory is full: raise it (docker run --shm-size, or free /dev/shm) or use --workers 0"
RESOURCE_MARKERS = (("shared memory", SHM_LINE), ("/torch_", SHM_LINE), ("out of memory", None),
                    ("can't allocate memory", None), ("cannot allocate memory", None))


def os_error_line(e: OSError) -> str:
    """One line for an OS error: what failed, on which path, and what to do."""
    line = e.strerror or " ".join(str(e).split()) or type(e).__name__
    if e.filename:
        line += f": {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    hint = OS_ERROR_HINTS.get(e.errno or 0)
    return line + (f" ({hint})" if hint else "")


def resource_line(e: BaseException, memory: str) -> str | None:
    """One line for a resource that ran out (memory, shared memory), naming the setting to change; None when `e`
    is not about resources. `memory` says which settings lower the command's memory ("lower --batch-size")."""
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError):
        return f"out of memory: {memory}"
    for marker, line in RESOURCE_MARKERS:
        if marker in text.lower():
            return line or f"out of memory ({text[:160]}): {memory}"
    return None


@contextmanager
def user_errors(on_interrupt: str = "nothing was written", memory: str = "lower --batch-size",
                interrupted: str | None = None):
    """Run a command's work: the library's user-facing errors, OS errors and exhausted resources become one line
    on stderr and exit 1; SIGINT/SIGTERM end it with 130/143 after `finally` blocks ran (saying `interrupted`, or
    "interrupted (on_interrupt)"). Anything else is a bug and keeps its traceback."""
    from featstore.errors import FramecacheError

    try:
        with StopSignals() as stop:
            yield stop
    except FramecacheError as e:
        fail(str(e))
    except OSError as e:  # disk full, permissions, a file where a folder should be: the environment, not a bug
        fail(os_error_line(e))
    except (MemoryError, RuntimeError) as e:  # torch's allocators and DataLoader report these as RuntimeError
        line = resource_line(e, memory)
        if line is None:
            raise
        fail(line)
    except Terminated:
        render.print_stopped(interrupted or f"terminated by SIGTERM ({on_interrupt})")
        raise typer.Exit(TERMINATED)
    except KeyboardInterrupt:
        render.print_stopped(interrupted or f"interrupted ({on_interrupt})")
        raise typer.Exit(INTERRUPTED)
