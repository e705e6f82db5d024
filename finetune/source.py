"""`cli.py finetune` as one library call: the source's items, fine-tuned into a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from finetune.config import FinetuneConfig
from finetune.run import finetune
from pipeline.sources import load_source


def finetune_source(source: str | Path, cfg: FinetuneConfig, out: str | Path, *, split_id: int = 1,
                    resume: bool = False, force: bool = False,
                    on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune on every item of `source` (anything `extract` reads) into the run folder `out`; returns
    metrics.json. `force` writes into a folder that holds other files (see finetune.rundir)."""
    items = load_source(source, split_id=split_id)
    return finetune(items, cfg, out, resume=resume, on_epoch=on_epoch, force=force)
