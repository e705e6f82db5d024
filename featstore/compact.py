"""`compact`: a store's current records copied into one portable `.h5` file, item by item."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.atomic import OutputLock, remove_stale_temps
from featstore.format import OPTIONAL_COLUMNS, VIDEO_COLUMNS, VideoRecord, write_shard
from featstore.integrity import read_shard_index
from featstore.ownership import check_out_file, is_compaction_of
from featstore.reader import open_store


def compact(src: str | Path, out: str | Path, compression: str | None = "gzip", force: bool = False) -> Path:
    """Write every current record of `src` into one portable `.h5` file (superseded records dropped).

    Streams item by item: memory stays at one item's features, whatever the store's size. `out` may be absent
    or a compaction of the same store; anything else is replaced only with `force`, a store's own file never."""
    out = Path(out)
    check_out_file(out, "compact", lambda old: is_compaction_of(old, Path(src)), force)
    with open_store(src) as store:
        def records():
            for vid in store.ids(status=None):
                m = store.meta(vid)
                ok = m.status == "ok" and m.length > 0
                # raw rows (no float32 round trip) so the copy is bit-identical
                yield VideoRecord(vid, **{k: getattr(m, k) for k in ("path", "label", "group", "split", "status", "error",
                                                            "fps", "n_frames", "width", "height",
                                                            "rotation")},
                                  features=store.raw_features(vid) if ok else None,
                                  frame_index=store.frame_index(vid) if ok else None,
                                  time_s=store.time_s(vid) if ok else None,
                                  frame_end=store.frame_end(vid) if ok else None,
                                  time_end_s=store.time_end_s(vid) if ok else None)

        dtype = "float32" if store.config.dtype == "float32" else "float16"
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = sum(store.meta(v).length for v in store.ids(status=None))
        hint = frames * (store.dim * np.dtype(dtype).itemsize + 16) + 512 * len(store) + 64_000  # uncompressed
        # One compact per OUT at a time: a second is refused rather than both writing and one reporting a file
        # the other replaced. The result is read back before "wrote" is claimed.
        with OutputLock(out, "compact"):
            remove_stale_temps(out)
            write_shard(out, records(), store.config, store.fingerprint, store.fingerprint_keys, store.dim, dtype,
                        compression, size_hint=hint, fmt=store.format)
            read_shard_index(out, store.header, VIDEO_COLUMNS, compacted=True, optional=OPTIONAL_COLUMNS)
    return out
