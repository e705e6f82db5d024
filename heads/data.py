"""A store in memory as tensors, its labels and splits, and batches padded to each batch's longest clip.

One `load_all` reads every frame into one (N, D) tensor; a clip is a slice given by `offsets` and
`lengths`. Batching picks frame indices for a whole batch at once with tensor ops and gathers rows,
so there is no per-clip Python work per batch. A store larger as loaded than the memory budget is not read
into memory: `load_cache` returns a heads.stream.StreamedCache instead, which has the same per-clip columns and
the same two row readers (`clip_batches`, `row_blocks`) that `batches` and `feature_stats` go through.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Union

import numpy as np
import torch
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from featstore import Store, open_store
from featstore.finite import finite_rows
from heads.config import SAMPLINGS, SPLITS, TASKS  # noqa: F401  (re-exported: the choice tables live in config)
from heads.models import HeadError

if TYPE_CHECKING:
    from heads.stream import StreamedCache

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
STATS_BYTES = 8 * 2**20  # feature_stats widens rows to float64 this many bytes at a time
FLOAT32_LIMIT = 512 * 2**20  # caches of float16 stores smaller than this (as float32) stay float32; larger ones float16


@dataclass
class Cache:
    """Every frame of every chosen clip, in memory, plus per-clip columns."""
    features: torch.Tensor   # (N, D) float32, or float16 for large caches (the store keeps float16 anyway)
    offsets: torch.Tensor    # (V,) int64, first row of each clip
    lengths: torch.Tensor    # (V,) int64, frames per clip (>= 1)
    ids: list[str]
    labels: list[list[str]]  # per clip, possibly several
    groups: list[str]        # per clip, '' when unknown
    splits: list[str]        # per clip, the store's split column as written
    source: ClassVar[str] = "memory"  # where batches read rows from (metrics.json's data_source)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def clip_batches(self, idx: torch.Tensor, batch_size: int,
                     gen: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(clips (B,), rows holding them, first row of each clip (B,)) per batch; shuffled with `gen`."""
        if gen is not None:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        for chunk in idx.split(batch_size):
            yield chunk, self.features, self.offsets[chunk]

    def row_blocks(self, idx: torch.Tensor, chunk_rows: int = 65536) -> Iterator[torch.Tensor]:
        """Every row of the clips idx, in that order, `chunk_rows` at a time."""
        rows = torch.repeat_interleave(self.offsets[idx], self.lengths[idx])
        rows += torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(self.lengths[idx], 0)
                                                                   - self.lengths[idx], self.lengths[idx])
        for part in rows.split(chunk_rows):
            yield self.features[part.to(self.features.device)]


Source = Union[Cache, "StreamedCache"]  # what the loops read clips from: in memory, or streamed from the shards


def load_cache(store: Store | str | Path, ids: list[str] | None = None, features: bool = True,
               budget: int | None = None) -> Source:
    """Read the chosen ok clips (all by default) of a store into memory; clips with no frames are skipped.

    `features=False` reads the per-clip columns only (features is then an empty (0, D) tensor). With a `budget`
    (bytes, heads.budget) smaller than the rows as loaded, the rows stay in the shards: a StreamedCache.
    """
    store = store if isinstance(store, Store) else open_store(store)
    metas = [store.meta(v) for v in (store.ids() if ids is None else ids)]
    metas = [m for m in metas if m.status == "ok" and m.length > 0]
    columns = {"ids": [m.id for m in metas], "labels": [m.labels for m in metas],
               "groups": [m.group for m in metas], "splits": [m.split for m in metas]}
    lengths = torch.tensor([m.length for m in metas], dtype=torch.int64)
    if not features:
        return Cache(torch.zeros(0, store.dim), torch.cumsum(lengths, 0) - lengths, lengths, **columns)
    # a float32 store stays float32: its values may lie beyond float16's range (the reason to store float32)
    small = int(lengths.sum()) * store.dim * 4 <= FLOAT32_LIMIT
    dtype = np.float32 if small or store.config.dtype == "float32" else np.float16
    if budget is not None and int(lengths.sum()) * store.dim * np.dtype(dtype).itemsize > budget:
        from heads.stream import StreamedCache

        wide = np.float32 if store.config.dtype == "float32" else np.float16  # as stored: float16 holds it exactly
        return StreamedCache(store, lengths, **columns, dtype=wide, budget=budget)
    loaded = finite_rows(store, store.load_all(columns["ids"], dtype=dtype))
    return Cache(torch.from_numpy(loaded.features), torch.from_numpy(loaded.offsets),
                 torch.from_numpy(loaded.lengths), **columns)


def cache_from_arrays(feats_list: list[np.ndarray]) -> Cache:
    """A label-less Cache of in-memory clips, each (T, D): what `predict` feeds the eval batcher."""
    if not feats_list or any(len(f) == 0 for f in feats_list):
        raise HeadError("every clip to predict needs at least one frame of features")
    lengths = torch.tensor([len(f) for f in feats_list], dtype=torch.int64)
    offsets = torch.cumsum(lengths, 0) - lengths
    feats = torch.from_numpy(np.concatenate([np.asarray(f, np.float32) for f in feats_list]))
    n = len(feats_list)
    return Cache(feats, offsets, lengths, [str(i) for i in range(n)], [[]] * n, [""] * n, [""] * n)


# -- labels and task -------------------------------------------------------------------------------
def detect_task(labels: list[list[str]], task: str = "auto") -> str:
    """'multilabel' if any clip has more than one label (for task='auto'); checks an explicit task."""
    if task not in TASKS:
        raise HeadError(f"--task {task!r} is not a task; choose one of: {', '.join(TASKS)}")
    multi = [i for i, ls in enumerate(labels) if len(ls) > 1]
    if task == "auto":
        return "multilabel" if multi else "multiclass"
    if task == "multiclass" and multi:
        raise HeadError(f"--task multiclass, but {len(multi)} clips have several labels "
                        f"(e.g. {'|'.join(labels[multi[0]])!r}): use --task multilabel")
    return task


def build_vocab(labels: list[list[str]]) -> list[str]:
    return sorted({x for ls in labels for x in ls})


def encode_targets(labels: list[list[str]], vocab: list[str], task: str) -> torch.Tensor:
    """(V,) int64 class indices for multiclass, (V, C) float32 multi-hot for multilabel."""
    index = {x: i for i, x in enumerate(vocab)}
    if task == "multiclass":
        missing = [i for i, ls in enumerate(labels) if not ls]
        if missing:
            raise HeadError(f"{len(missing)} clips have no label; fit-head needs a label per clip "
                            "(give the manifest a label column)")
        return torch.tensor([index[ls[0]] for ls in labels], dtype=torch.int64)
    y = torch.zeros(len(labels), len(vocab))
    for i, ls in enumerate(labels):
        y[i, [index[x] for x in ls]] = 1.0
    return y


# -- splits ----------------------------------------------------------------------------------------
def make_splits(cache: Cache, split: str, val_frac: float, test_frac: float, seed: int,
                val_seed: int | None = None) -> dict[str, np.ndarray]:
    """Clip indices for 'train', 'val' and 'test' (test may be empty), seeded, every class in train.

    official: the store's split column (train/val/test); without val clips, val is carved from train.
    stratified and group carve alike: stratified by label, group-aware when groups are known (a clip without
    a group is its own), one fold of round(1/frac), so fractions are rounded to 1/k; group refuses a store
    without groups, stratified does not.
    `val_seed` (default: seed) carves val alone, so repeated runs can vary val and keep test.
    """
    if split not in SPLITS:
        raise HeadError(f"--split {split!r} is not a split; choose one of: {', '.join(SPLITS)}")
    strata = np.array(["|".join(ls) for ls in cache.labels], dtype=object)
    groups = _groups(cache, required=split == "group")
    everything = np.arange(len(cache))
    if split == "official":
        column = np.array([SPLIT_NAMES.get(s.strip().lower(), "") for s in cache.splits], dtype=object)
        train, val, test = (everything[column == name] for name in ("train", "val", "test"))
        if len(train) == 0:
            found = sorted({s for s in cache.splits}) or ["(none)"]
            raise HeadError(f"--split official: no clip has split 'train' (split column values: {found}); "
                            "use --split group or --split stratified")
    else:
        train, test = _carve(everything, test_frac, strata, groups, seed, "--test-frac")
        val = np.zeros(0, dtype=np.int64)
    _require_train_coverage(cache.labels, train, split)
    if len(val) == 0:
        train, val = _carve_val(train, val_frac, strata, groups, (seed if val_seed is None else val_seed) + 1)
    if len(val) == 0:
        raise HeadError(f"too few clips ({len(train)} in train) to hold out a validation set with "
                        f"--val-frac {val_frac}: add clips")
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def carve_val(cache: Cache, train: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) carved from `train` as make_splits does it (group-aware, stratified, every class kept)."""
    strata = np.array(["|".join(ls) for ls in cache.labels], dtype=object)
    kept, held = _carve_val(train, val_frac, strata, _groups(cache, required=False), seed + 1)
    if len(held) == 0:
        raise HeadError(f"too few clips ({len(train)}) to hold out a validation set with --val-frac {val_frac}")
    return np.sort(kept), np.sort(held)


def cv_folds(cache: Cache, idx: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, held) pairs over `idx`: stratified, no group on both sides (single clips when there are
    fewer groups than folds); refuses folds whose train side lacks a class."""
    strata = np.array(["|".join(ls) for ls in cache.labels], dtype=object)
    groups = _groups(cache, required=False)
    if len(set(groups[idx])) < k:
        groups = np.arange(len(groups)).astype(str).astype(object)
    if len(set(groups[idx])) < k:
        raise HeadError(f"--folds {k}: only {len(idx)} training clips; use fewer folds")
    largest = max(Counter(strata[idx]).values())
    cv = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if largest >= k
          else GroupKFold(k, shuffle=True, random_state=seed))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        folds = [(np.sort(idx[a]), np.sort(idx[b])) for a, b in cv.split(idx, strata[idx], groups[idx])]
    every = {x for j in idx for x in cache.labels[j]}
    for i, (train, _) in enumerate(folds):
        missing = sorted(every - {x for j in train for x in cache.labels[j]})
        if missing:
            raise HeadError(f"--folds {k}: fold {i} leaves class {missing[0]!r} without training clips "
                            "(too few groups of it): use fewer folds")
    return folds


def _groups(cache: Cache, required: bool) -> np.ndarray:
    """Group per clip; a clip without one is its own group. Raises if --split group has no groups at all."""
    if required and not any(g for g in cache.groups):
        raise HeadError("--split group: the store has no group column (every group is empty); "
                        "use --split stratified or give the manifest a group column")
    return np.array([g or f"\0{vid}" for g, vid in zip(cache.groups, cache.ids)], dtype=object)


def _carve_val(train: np.ndarray, frac: float, strata: np.ndarray, groups: np.ndarray,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out val from train, group-aware; where no group can leave without taking a class with it
    (one group per class), fall back to single clips: val then shares groups with train, which only
    makes early stopping a little optimistic (test stays as the split column says)."""
    for by in (groups, np.arange(len(groups)).astype(str).astype(object)):
        kept, held = _carve(train, frac, strata, by, seed, "--val-frac")
        kept, held = _keep_classes_in_train(kept, held, strata, by)
        if len(held):
            return kept, held
    return train, np.zeros(0, dtype=np.int64)


def _carve(idx: np.ndarray, frac: float, strata: np.ndarray, groups: np.ndarray, seed: int,
           flag: str) -> tuple[np.ndarray, np.ndarray]:
    """Split idx into (kept, held) with held ~ frac of idx, stratified by label and group-aware."""
    n_groups = len(set(groups[idx]))
    largest = max(Counter(strata[idx]).values(), default=0)
    # sklearn needs k <= groups, and some class with k members to stratify; tiny sets get fewer folds
    k = min(max(2, round(1 / frac)), n_groups, max(largest, 2))
    if k < 2:
        raise HeadError(f"cannot hold out {flag} {frac} from {len(idx)} clips in {n_groups} group(s): "
                        "add clips or groups")
    cv = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if largest >= k
          else GroupKFold(k, shuffle=True, random_state=seed))
    with warnings.catch_warnings():  # rare classes are handled by the caller, the warning would only repeat it
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        kept, held = next(cv.split(idx, strata[idx], groups[idx]))
    return idx[kept], idx[held]


def _keep_classes_in_train(train: np.ndarray, val: np.ndarray, strata: np.ndarray,
                           groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move back to train the val groups holding a class that train would otherwise lack."""
    in_train = {x for s in strata[train] for x in s.split("|")}
    back = {groups[i] for i in val if any(x and x not in in_train for x in strata[i].split("|"))}
    moved = np.array([groups[i] in back for i in val], dtype=bool)
    return np.concatenate([train, val[moved]]), val[~moved]


def _require_train_coverage(labels: list[list[str]], train: np.ndarray, split: str) -> None:
    seen = {x for i in train for x in labels[i]}
    missing = sorted({x for ls in labels for x in ls} - seen)
    if missing:
        names = ", ".join(repr(x) for x in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise HeadError(f"--split {split} leaves class {names} without training clips "
                        f"({len(missing)} class(es) only in val/test): add clips of that class, "
                        "lower --test-frac, or use another --split")


# -- batching --------------------------------------------------------------------------------------
@dataclass
class Augment:
    frame_dropout: float = 0.0         # drop each frame with this probability (at least one stays)
    noise: torch.Tensor | None = None  # (D,) std of gaussian noise added per dimension, or None
    sampling: str = "random"           # "random": sorted random subset, "contiguous": a random window


def eval_frames(lengths: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to max_frames uniformly spaced frame positions per clip: (idx (B, T), n (B,))."""
    n = lengths.clamp(max=max_frames)  # (B,)
    j = torch.arange(int(n.max()))[None, :]  # (1, T)
    idx = ((j + 0.5) * lengths[:, None] / n[:, None]).long()  # (B, T)
    return torch.minimum(idx, lengths[:, None] - 1), n


def train_frames(lengths: torch.Tensor, max_frames: int, gen: torch.Generator,
                 aug: Augment) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frame positions in temporal order, up to max_frames per clip: (idx (B, T), n (B,))."""
    b, t = len(lengths), int(lengths.max())
    pos = torch.arange(t).expand(b, t)  # (B, T)
    valid = pos < lengths[:, None]
    if aug.sampling == "contiguous":
        n = lengths.clamp(max=max_frames)
        start = (torch.rand(b, generator=gen) * (lengths - n + 1)).long()
        valid &= (pos >= start[:, None]) & (pos < (start + n)[:, None])
    if aug.frame_dropout > 0:
        keep = torch.rand(b, t, generator=gen) >= aug.frame_dropout
        spared = torch.rand(b, t, generator=gen).masked_fill(~valid, -1.0).argmax(1)  # one random frame stays
        keep[torch.arange(b), spared] = True
        valid &= keep
    n = valid.sum(1).clamp(max=max_frames)
    keys = torch.rand(b, t, generator=gen).masked_fill(~valid, 2.0)
    rank = keys.argsort(1).argsort(1)  # valid frames rank 0..count-1 in random order
    chosen = valid & (rank < n[:, None])
    order = torch.where(chosen, pos, pos + t).argsort(1)[:, :int(n.max())]  # chosen positions, ascending
    return order, n


def batches(cache: Source, targets: torch.Tensor | None, idx: np.ndarray, batch_size: int, max_frames: int,
            device: torch.device | str = "cpu", train: bool = False, gen: torch.Generator | None = None,
            aug: Augment | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(x (B, T, D) float32, lengths (B,), y) per batch; shuffled with random frames when `train`."""
    aug = aug or Augment()
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
    for chunk, features, first in cache.clip_batches(idx, batch_size, gen if train else None):
        lengths = cache.lengths[chunk]
        if train:
            pos, n = train_frames(lengths, max_frames, gen, aug)
        else:
            pos, n = eval_frames(lengths, max_frames)
        mask = torch.arange(pos.shape[1])[None, :] < n[:, None]  # (B, T)
        rows = (first[:, None] + pos).masked_fill(~mask, 0)
        x = features[rows.to(features.device)].to(device, torch.float32)  # (B, T, D)
        mask = mask.to(device)
        if train and aug.noise is not None:
            x = x + torch.randn(x.shape, generator=gen).to(device) * aug.noise.to(device)
        x = x * mask.unsqueeze(-1)
        y = None if targets is None else targets[chunk].to(device)
        yield x, n.to(device), y


def feature_stats(cache: Source, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over every frame of the chosen clips (float64 sums, a block at a time)."""
    s = torch.zeros(cache.dim, dtype=torch.float64)
    ss = torch.zeros(cache.dim, dtype=torch.float64)
    count = 0
    for block in cache.row_blocks(torch.as_tensor(np.asarray(idx), dtype=torch.int64)):
        # widened STATS_BYTES at a time: a float64 copy of a whole block is 4x a float16 one (64 MB of a 128 MB
        # budget's block), and sums of pieces differ from one sum by float64 rounding only
        for part in block.split(max(1, STATS_BYTES // (8 * cache.dim))):
            f = part.to("cpu", torch.float64, copy=True)
            s += f.sum(0)
            ss += f.mul_(f).sum(0)  # squared in place: one float64 copy of the piece at a time, not two
            count += len(f)
    mean = s / count
    std = (ss / count - mean**2).clamp_min(0).sqrt()
    # Dimensions that barely vary on train would blow up on test: floor the std at 1% of the typical one.
    std = std.clamp_min(max(1e-2 * float(std.mean()), 1e-6))
    return mean.float(), std.float()
