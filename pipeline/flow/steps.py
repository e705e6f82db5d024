"""The flow stage of an extraction: between rebatching and the backbone (pipeline/stages.py), each Batch of frame
runs, (B, L + 1, H, W, 3) uint8, becomes a Batch of flow stacks, (B, 2L, H, W) float32, with the same rows."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from pipeline.flow.compute import FlowComputer
from pipeline.flow.stack import flow_stack
from pipeline.stages import Batch, Done, Rows


def flow_steps(steps: Iterator[Batch | Done], compute: FlowComputer,
               save: Callable[[Batch, torch.Tensor], None] | None = None) -> Iterator[Batch | Done]:
    """The same steps, each Batch's frames replaced by the flow stacks computed from them (and handed to `save`)."""
    for step in steps:
        if isinstance(step, Batch):
            flows = compute(step.units())                               # (B, L, H, W, 2)
            if save is not None:
                save(step, flows)
            step = Batch(_with_units(step.parts, flow_stack(flows)))
        yield step


def _with_units(parts: list[Rows], units: torch.Tensor) -> list[Rows]:
    out, pos = [], 0
    for p in parts:
        out.append(Rows(p.slot, units[pos:pos + len(p)], p.frame_index, p.frame_end, p.time_s, p.time_end_s))
        pos += len(p)
    return out
