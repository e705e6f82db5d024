"""extract --save-flow DIR: each row's flow fields kept for inspection, DIR/<video id>/<frame index>.npz (the L flows,
float32 (L, H, W, 2) pixels, compressed) and .png beside it (the L flows side by side through torchvision's
flow_to_image: hue is direction, saturation speed).

DIR is written only where it is absent, empty or already this store's flow folder (it holds MARKER naming the
store): the user's files are never written over, and --force does not change that.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from featstore.ownership import OwnershipError, refuse_store_part
from pipeline.sources import Item
from pipeline.stages import Batch

MARKER = "framecache-flow.json"


def _owned(out: Path, store: str) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("store") == store
    except (OSError, ValueError, AttributeError):
        return False


def claim_flow_folder(out: str | Path, store: str | Path) -> Path:
    """The folder `out`, made (or kept) as `store`'s flow folder; OwnershipError when it holds anything else."""
    out, store = Path(out), str(Path(store).resolve())
    refuse_store_part(out, "--save-flow")
    if out.exists() and not out.is_dir():
        raise OwnershipError(f"--save-flow {out} is a file, not a folder: choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not _owned(out, store):
        raise OwnershipError(f"--save-flow {out} already holds files that are not this store's flow fields: choose "
                             "a new or empty folder (nothing in it is ever written over)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"store": store}) + "\n")
    return out


def safe_name(video_id: str) -> str:
    """A video id as one folder name (ids may hold slashes)."""
    return re.sub(r"[^\w.-]+", "_", video_id).strip("._") or "video"


class FlowSaver:
    """Writes the flows of each batch's rows under `out` (a folder claim_flow_folder has claimed)."""

    def __init__(self, out: Path, items: list[Item]):
        self.out, self.items = out, items

    def __call__(self, batch: Batch, flows: torch.Tensor) -> None:  # flows (B, L, H, W, 2)
        from PIL import Image
        from torchvision.utils import flow_to_image

        pos = 0
        for part in batch.parts:
            folder = self.out / safe_name(self.items[part.slot].id)
            folder.mkdir(exist_ok=True)
            for index, row in zip(part.frame_index.tolist(), flows[pos:pos + len(part)]):
                np.savez_compressed(folder / f"{index:06d}.npz", flow=row.numpy())
                tiles = flow_to_image(row.permute(0, 3, 1, 2))          # (L, 3, H, W) uint8
                side_by_side = torch.cat(list(tiles), dim=2).permute(1, 2, 0)   # (H, L x W, 3)
                Image.fromarray(side_by_side.numpy()).save(folder / f"{index:06d}.png")
            pos += len(part)
