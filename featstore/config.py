"""What a store records about how its features were made: `StoreConfig`, kept as the JSON attribute `config` of the
header and of every shard, and the fingerprint over the settings that change the features (docs/store.md).

Extract fills every field; stores written before a setting existed, and test stores written by hand, lack some keys.
`from_attrs` notes which, so `to_attrs` gives back exactly what was read (a compacted copy or a checkpoint records the
same attributes), and a missing key counts as unset (None) in the fingerprint, as it always has.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Settings that change the features: a store refuses appends that differ in any of them. (The row layout is the
# store's own business: `format`.)
FINGERPRINT_KEYS = ("backbone", "weights", "every", "frames", "fps", "max_frames",
                    "size", "resize", "crop", "mean", "std", "dtype")
# Settings added after stores existed: they count only where set, so an older store keeps its fingerprint.
OPTIONAL_KEYS = ("clip_len", "clip_stride", "clips", "quantization", "resize_engine", "recipe", "layer",
                 "token_pool", "decoder", "modality", "flow", "flow_stack", "flow_weights")
# The settings that decide which timestamps a store's rows have: two stores hold rows of the same moments only where
# these agree (stores fused side by side must; heads.fusion refuses them otherwise).
SAMPLING_KEYS = ("every", "frames", "fps", "max_frames", "clip_len", "clip_stride", "clips")
# Fingerprinted by format-1 stores, but a property of the file layout, not of the features in it.
LAYOUT_KEYS = frozenset({"format"})
# How `cli.py pool` reduces a video's rows to one, and the keys a pooled store records (and fingerprints) beside its
# source's: the pooling and the source's fingerprint, so a pooled store never passes for its source nor another's.
POOLS = ("mean", "max")
POOL_KEYS = ("pool", "pooled_from")


@dataclass(frozen=True)
class StoreGeometry:
    """How the store's frames were resized and cropped, as recorded: pipeline turns it into its decode Geometry
    (pipeline.extract.store_geometry), adding the weights' resampling recipe."""
    size: int                          # model input side
    resize: int | tuple[int, int]      # shorter side before the crop, or an exact (height, width)
    crop: str                          # center | square | none
    engine: str                        # who resized: exact (the preset's recipe) or a faster engine


@dataclass(frozen=True)
class StoreConfig:
    """The settings a store was extracted with, as its `config` attribute records them (JSON values: lists, not
    tuples). Every field is None where unset or, in an older store, absent."""
    backbone: str | None = None
    weights: str | None = None          # identity: enum member, none(seed=0) or file:sha256:<16 hex>
    weights_arg: str | None = None      # --weights as given
    weights_file: str | None = None     # absolute path of a weights file, where extract found it
    weights_sha256: str | None = None   # its whole sha256
    every: int | None = None            # frame sampling (image backbones)
    frames: int | None = None
    fps: float | None = None            # frames and clips alike
    max_frames: int | None = None
    clip_len: int | None = None         # clip sampling (video backbones)
    clip_stride: int | None = None      # the stride used (None with --clips)
    clips: int | None = None
    size: int | None = None
    crop: str | None = None
    resize: int | list[int] | None = None
    resize_engine: str | None = None    # None: the exact recipe (stores made before engines existed have no key)
    decoder: str | None = None          # None: PyAV (stores made before --decoder existed have no key)
    mean: list[float] | None = None
    std: list[float] | None = None
    dtype: str | None = None            # storage dtype of features
    dim: int | None = None
    subset: dict | None = None          # sources.Subset.record(): recorded, not fingerprinted
    autorotate: bool | None = None
    device: str | None = None           # recorded for information: device, precision, compile, batch size, versions
    precision: str | None = None
    quantization: str | None = None     # int8 recipe: fingerprinted (an optional key)
    compile: bool | None = None
    batch_size: int | None = None
    versions: dict | None = None
    layer: str | None = None            # --layer: rows are this block's pooled output (fingerprinted where set)
    token_pool: str | None = None       # --pool cls|mean: a token model's CLS token or its patch tokens' mean
    #                                     (fingerprinted where set; `pool` is a pooled store's key)
    recipe: dict | None = None          # a family backbone's library, version, model and data config: fingerprinted
    #                                     (torchvision stores have no key: their weights enum names all of it)
    modality: str | None = None         # "flow": rows embed optical-flow stacks (None: RGB frames or clips)
    flow: str | None = None             # --flow method (farneback, tvl1, raft_small, raft_large)
    flow_stack: int | None = None       # --flow-stack L: flows per row (2L input channels)
    flow_weights: str | None = None     # RAFT's weights: enum member, none(seed=0) or file:sha256:<16 hex>
    format: int | None = None           # the store's row layout (featstore.FORMAT_VERSION); set by the writer
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this code does not know (fused or multitask runs)
    absent: frozenset[str] = frozenset()  # known keys the recorded attributes lack: to_attrs leaves them out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoreConfig:
        """The config of a store's `config` attribute (decoded JSON), or of a checkpoint's `store_config`."""
        return cls(**{k: v for k, v in attrs.items() if k in _KNOWN},
                   extra={k: v for k, v in attrs.items() if k not in _KNOWN},
                   absent=frozenset(_KNOWN - set(attrs)))

    def to_attrs(self) -> dict[str, Any]:
        """The attribute dict, exactly as `from_attrs` read it (or every field, for a config built here), in key
        order as a store's JSON holds it."""
        attrs = {**{k: getattr(self, k) for k in _KNOWN if k not in self.absent}, **self.extra}
        return dict(sorted(attrs.items()))

    def value(self, key: str) -> Any:
        """One recorded setting by its attribute name (None where unset): for comparisons over fingerprint keys."""
        if key in _KNOWN:
            return getattr(self, key)
        return self.extra.get(key)

    def with_extra(self, **values: Any) -> StoreConfig:
        """The same config with `values` recorded beside it (known fields replaced, other keys added)."""
        known = {k: v for k, v in values.items() if k in _KNOWN}
        return replace(self, **known, extra={**self.extra, **{k: v for k, v in values.items() if k not in known}},
                       absent=self.absent - set(known))

    @property
    def pooled(self) -> str | None:
        """How a pooled store (one row per video, `cli.py pool`) reduced each video's rows; None for any other."""
        return self.value("pool")

    @property
    def is_flow(self) -> bool:
        """Rows embed optical-flow stacks (extract --modality flow)."""
        return self.modality == "flow"

    @property
    def is_clip(self) -> bool:
        """Rows are clips of a video backbone (format-1 stores have no clip keys: frame rows)."""
        return self.clip_len is not None

    def geometry(self) -> StoreGeometry:
        """The recorded resize and crop (a store without an engine key was made by the exact recipe)."""
        resize = tuple(self.resize) if isinstance(self.resize, (list, tuple)) else self.resize
        return StoreGeometry(self.size, resize, self.crop, self.resize_engine or "exact")

    def sampling_diffs(self, other: StoreConfig) -> list[str]:
        """How two stores' sampling differs, one "every: 5 vs 10" per setting (SAMPLING_KEYS); empty if alike."""
        return [f"{k}: {self.value(k)!r} vs {other.value(k)!r}" for k in SAMPLING_KEYS
                if self.value(k) != other.value(k)]

    def fingerprint_keys(self) -> tuple[str, ...]:
        """The keys whose values identify the features: the base set, plus the newer ones that are set."""
        return FINGERPRINT_KEYS + tuple(k for k in OPTIONAL_KEYS if self.value(k) is not None)

    def fingerprint(self, keys: Iterable[str]) -> str:
        """Hash of the settings `keys` name; the same settings always give the same hash."""
        subset = {k: self.value(k) for k in sorted(keys)}
        return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]

    def diff(self, other: StoreConfig, keys: Iterable[str], theirs: str = "this run") -> list[str]:
        """Readable differences over `keys`: "every: store has 10, this run has 5"."""
        return [f"{k}: store has {self.value(k)!r}, {theirs} has {other.value(k)!r}"
                for k in sorted(keys) if self.value(k) != other.value(k)]

    def feature_diffs(self, keys: Iterable[str], other: StoreConfig, other_keys: Iterable[str],
                      theirs: str = "this run") -> list[str]:
        """Differences in the settings that change features, over the keys both fingerprints cover (layout keys
        aside): empty when two stores of different format versions, or of older and newer key sets, hold the same
        features."""
        return self.diff(other, sorted((set(keys) | set(other_keys)) - LAYOUT_KEYS), theirs)


_KNOWN = frozenset(f.name for f in fields(StoreConfig)) - {"extra", "absent"}


def fingerprint(config: StoreConfig, keys: Iterable[str]) -> str:
    """Hash of the settings that change the features; the same settings always give the same hash."""
    return config.fingerprint(keys)


def diff_configs(old: StoreConfig, new: StoreConfig, keys: Iterable[str], theirs: str = "this run") -> list[str]:
    """Human-readable differences between two configs over the fingerprinted keys."""
    return old.diff(new, keys, theirs)


def feature_diffs(old: StoreConfig, old_keys: Iterable[str], new: StoreConfig, new_keys: Iterable[str],
                  theirs: str = "this run") -> list[str]:
    """Differences in the settings that change features over the keys both fingerprints cover (StoreConfig.
    feature_diffs)."""
    return old.feature_diffs(old_keys, new, new_keys, theirs)
