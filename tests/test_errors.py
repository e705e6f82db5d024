"""ui/errors.py: exhausted resources end a command with one line naming the setting to change (issue 19, rule 7)."""
import errno
import os

import pytest
import torch
import typer

from ui.errors import user_errors


def huge_tensor():
    torch.empty(2**50, dtype=torch.uint8)  # the allocator refuses: a RuntimeError, not a MemoryError


def huge_bytes():
    bytearray(2**60)


def shm_full():
    raise RuntimeError("unable to write to file </torch_4242_1234567_0>: No space left on device (28)")


def cuda_full():
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def no_fds():
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/data/clips/a.mp4")


def disk_full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/store/p0-000001.h5")


@pytest.mark.parametrize("cause, setting", [(huge_tensor, "--batch-size"), (huge_bytes, "--batch-size"),
                                            (shm_full, "--workers 0"), (cuda_full, "--batch-size"),
                                            (no_fds, "ulimit -n"), (disk_full, "free some space")])
def test_resource_errors_are_one_line_naming_the_setting_to_change(capsys, cause, setting):
    with pytest.raises(typer.Exit) as stopped:
        with user_errors():
            cause()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.exit_code == 1 and len(lines) == 1 and setting in lines[0], lines


def test_a_runtime_error_that_is_no_resource_keeps_its_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        with user_errors():
            raise RuntimeError("a bug")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # what Python prints, and ignores
def test_a_stop_signal_swallowed_in_a_finalizer_is_raised_again_at_the_next_progress_update():
    import signal

    from ui.errors import StopSignals
    from ui.render import progress_bar

    class SignalledWhileCollected:
        def __del__(self):  # the handler's KeyboardInterrupt is raised here, where Python only prints it
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with StopSignals(), progress_bar() as bar:
            task = bar.add_task("fit", total=2, rate="")
            SignalledWhileCollected()
            bar.update(task, completed=1)  # the next epoch's update: the interruption is not lost
