"""--memory-budget: how much memory a store's rows may take before stage two streams them from the shards.

Declared once (`MemoryBudget.memory_budget`) and shared by every command that reads a store's rows: fit-head (and
its --seeds/--folds), sweep and cluster-eval through their configs, which inherit it, and evaluate on its own.
`auto` is half of the memory available when the rows are about to be read (Linux MemAvailable, else the free
pages): the other half is left to the process itself (torch, the head, the batches) and to everything else
running on the machine. Kept light (no torch): configs import it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from featstore.errors import FramecacheError
from featstore.settings import setting

AUTO_SHARE = 0.5  # of the available memory, what `auto` gives the rows
UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40,
         "TB": 2**40}


class BudgetError(FramecacheError, ValueError):
    """A --memory-budget that is not a size; the message names the flag."""


@dataclass
class MemoryBudget:
    memory_budget: str = setting("auto", "Most memory the store's rows may take (300MB, 2GB); a store larger "
                                 "as loaded streams from its shards. auto: half the available RAM.")

    def __post_init__(self):
        budget_bytes(self.memory_budget)  # a bad size is refused when the config is made, not when rows are read


def budget_bytes(text: str | int) -> int:
    """The budget in bytes: an int as it is, a size such as '300MB', '2GB', '512k', or 'auto' (resolved now)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif str(text).strip().lower() == "auto":
        return int(available_memory() * AUTO_SHARE)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", str(text).upper())
        if match is None:
            raise BudgetError(f"--memory-budget {text!r} is not a size: give a number with a unit, such as 300MB "
                              "or 2GB, or auto")
        value = int(float(match.group(1)) * UNITS[match.group(2)])
    if value <= 0:
        raise BudgetError(f"--memory-budget {text!r} must be more than 0 bytes")
    return value


def available_memory() -> int:
    """Bytes of memory a new allocation can get without swapping: MemAvailable (Linux), else the free pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
