"""`cli.py explain` as one library call: explain the given files, or the run's most confident mistakes, into one
folder of PNGs with an index.json, refusing a folder that holds what is not explain's own."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from explain import METHODS, ExplainError
from explain.core import Explained, ExplainConfig, Explainer, mistake_jobs, video_jobs, write_index
from featstore.ownership import check_out_folder, clear_folder

_PNG = re.compile(r".+\.(" + "|".join(re.escape(m) for m in METHODS) + r")\.png$")


def is_explain_folder(path: Path) -> bool:
    """A folder explain wrote: its index.json and PNGs named NAME.METHOD.png, nothing else."""
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(index, list) and all(isinstance(r, dict) and "path" in r for r in index)
            and all(p.name == "index.json" or _PNG.match(p.name) for p in path.iterdir()))


def explain_run(run: str | Path, cfg: ExplainConfig, out: str | Path | None = None, *,
                videos: list[str | Path] | None = None, mistakes: int | None = None, force: bool = False,
                on_progress: Callable[[int, int, str], None] | None = None) -> list[Explained]:
    """One PNG per file of `videos`, or per one of the `mistakes` most confident mistakes of the run's test split,
    into `out` (default RUN/explain) with index.json; `force` replaces a folder of other files whole.
    `on_progress(done, total, path)` after each."""
    if bool(videos) == (mistakes is not None):
        raise ExplainError("give VIDEO files or --mistakes N (one of the two)")
    out = Path(out) if out is not None else Path(run) / "explain"
    replace = check_out_folder(out, "explain", is_explain_folder, force)
    explainer = Explainer(run, cfg)
    jobs = (mistake_jobs(run, mistakes, out, cfg.method) if mistakes
            else video_jobs([str(v) for v in videos], out, cfg.method))
    if replace:
        clear_folder(out)
    results: list[Explained] = []
    if on_progress is not None:
        on_progress(0, len(jobs), "")
    for job in jobs:
        results.append(explainer.explain(job.path, job.png, job.true))
        if on_progress is not None:
            on_progress(len(results), len(jobs), job.path)
    write_index(results, out)
    return results
