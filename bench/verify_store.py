"""Check a store of real clips against an independent computation (run by hand, not a test).

For every ok item: PyAV decodes the sampled frames to PIL images, the weights' own `transforms()` make the
model input, and the backbone embeds them; the cosine to the stored row is reported (min / mean), together
with whether each item's length equals ceil(decoded frames / every).

    python bench/verify_store.py /tmp/dev_store [--out bench/results/verify_store.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore import open_store  # noqa: E402
from pipeline import get_spec, load_backbone  # noqa: E402
from featstore.atomic import write_text_atomic  # noqa: E402  (results complete or absent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify_store.json")
    args = ap.parse_args()
    store = open_store(args.store)
    cfg = store.config
    if cfg.every is None:
        sys.exit("this check supports --every stores only")
    backbone = load_backbone(cfg.backbone, cfg.weights_arg)
    tf = get_spec(cfg.backbone).weights.DEFAULT.transforms()
    cosines, bad_length = [], []
    for vid in store.ids():
        meta = store.meta(vid)
        images, n = [], 0
        with av.open(meta.path) as c:
            for n, frame in enumerate(c.decode(video=0), start=1):
                if (n - 1) % cfg.every == 0:
                    images.append(frame.to_image())
        if meta.length != math.ceil(n / cfg.every):
            bad_length.append(vid)
        with torch.inference_mode():
            ref = backbone.model(torch.stack([tf(im) for im in images])).float().numpy()
        ours = store.features(vid)
        cosines.extend((ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1))
    result = {"store": str(args.store), "items": len(store.ids()), "frames": len(cosines),
              "cosine_min": float(np.min(cosines)), "cosine_mean": float(np.mean(cosines)),
              "length_mismatches": bad_length}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
