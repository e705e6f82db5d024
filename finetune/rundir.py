"""A finetune run folder: which files are the command's own, so that `finetune --out DIR` never writes over a
user's files (the guard itself is featstore.ownership's, shared by every writer)."""
from __future__ import annotations

import json
from pathlib import Path

from featstore.ownership import check_out_folder

# What finetune writes into its run folder (backbone.pt for extract, checkpoint.pt every epoch for --resume);
# NAME.tmp is one of them half-written by a killed run.
RUN_FILES = {"backbone.pt", "backbone.json", "checkpoint.pt", "probe.pt", "config.json", "splits.json", "history.csv",
             "metrics.json", "curves.png"}


def is_finetune_run(path: Path) -> bool:
    """A folder holding only finetune's files: a finished run (its config.json) or an interrupted one (a checkpoint
    or the probe, which --resume continues from)."""
    names = {p.name for p in path.iterdir()}
    if {n.removesuffix(".tmp") for n in names} - RUN_FILES:
        return False
    if "config.json" not in names:
        return bool({"checkpoint.pt", "probe.pt"} & names)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("finetune"), dict)


def check_finetune_out(out: str | Path, force: bool = False) -> bool:
    """Raise OwnershipError unless finetune may write its run into `out` (absent, empty, a finetune run, or
    `force`); True when `out` is to be replaced whole (featstore.ownership.clear_folder) before the first write."""
    return check_out_folder(out, "finetune", is_finetune_run, force)
