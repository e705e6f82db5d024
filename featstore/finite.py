"""Non-finite features (NaN, infinity) never enter a store and are never trained on.

`extract` fails an item whose features are not finite in the store's dtype (`fail_non_finite`: float16 overflows
above 65504, which a random-init resnet152 reaches); every reader of a store's features refuses rows that are not
(`finite_rows`: stores written before extract checked), in one line naming the shard and the video, before any
epoch runs. Both find the row with `first_non_finite`, as `verify --deep` does.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from featstore.integrity import BadShard, first_non_finite
from featstore.format import VideoRecord
from featstore.reader import Loaded, Store

class NonFiniteShard(BadShard):
    """A shard holding NaN or infinite features: only `verify --deep` reads them, so its hint says --deep."""

    verify_flags = "--deep --quarantine"


def fail_non_finite(record: VideoRecord, dtype: str) -> VideoRecord:
    """`record`, made a failed one (with the reason and the fix) when its features are not finite in `dtype`."""
    if record.features is None:
        return record
    with np.errstate(over="ignore"):  # overflow is what is being looked for
        if first_non_finite(record.features.astype(dtype)) is None:
            return record
    if first_non_finite(record.features) is not None:
        why = ("the backbone gave non-finite features (NaN or infinity) for it: try --precision fp32, or check "
               "--weights")
    else:
        largest, limit = float(np.abs(record.features).max()), float(np.finfo(dtype).max)
        why = (f"its features overflow {dtype} (largest |value| {largest:.3g} > {limit:.0f}): extract with --dtype "
               "float32 (into a new --store: the dtype is one of a store's settings)")
    record.status, record.error = "failed", why
    record.features = record.frame_index = record.time_s = record.frame_end = record.time_end_s = None
    return record


def finite_only(sink: Callable[[VideoRecord], None], dtype: str) -> Callable[[VideoRecord], None]:
    """`sink`, handed every record through `fail_non_finite` first (the record is changed in place, so whoever
    counts the failures after the sink sees it failed)."""
    return lambda record: sink(fail_non_finite(record, dtype))


def finite_rows(store: Store, loaded: Loaded) -> Loaded:
    """`loaded`, after checking every row is finite; raises NonFiniteShard naming the shard and the video."""
    row = first_non_finite(loaded.features)
    if row is None:
        return loaded
    i = int(np.searchsorted(loaded.offsets, row, side="right")) - 1
    vid = loaded.ids[i]
    raise NonFiniteShard(store.shard_of(vid), f"non-finite values in features (video {vid}, its row "
                                              f"{row - int(loaded.offsets[i])})", store.path.is_file())
