"""Stage one as a library: load a backbone with its preprocessing, decode and sample a video (frames or clips),
embed a batch, run an extraction into a store, embed files without a store.

    from pipeline import load_backbone, ClipStream, ClipSampling, Embedder, run_extraction, embed_files

`decode_loader` yields `Rows` (units of one video and their spans) and `Done` (a video's end) messages.
Everything a notebook or another engine needs is here; the modules behind it may move. Names load on first use,
so importing a light submodule (pipeline.launch, pipeline.sources) does not pay for torch and torchvision.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "pipeline.accel": ("AccelError", "COMPILE_MODES", "CPU_SPEED", "Measured", "compile_model", "compile_pays_back",
                       "default_batch", "quantize_int8"),
    "pipeline.backbones": ("REGISTRY", "Backbone", "BackboneError", "Preprocess", "available_backbones", "get_spec",
                           "load_backbone", "preprocess_for"),
    "pipeline.decode": ("RESIZE_ENGINES", "Clip", "ClipSampling", "ClipStream", "DecodedVideo", "DecodeError",
                        "FrameStream", "FrameWindow", "Geometry", "Sampling", "VideoInfo", "clip_count", "decode_image",
                        "decode_video"),
    "pipeline.seek": ("SEEK_MODES",),
    "pipeline.embed": ("Embedder", "resolve_device", "resolve_precision"),
    "pipeline.extract": ("EXTRACT_PRECISIONS", "ExtractConfig", "ExtractResult", "config_from_store", "decode_loader",
                         "embed_files", "geometry_for", "sampling_for", "store_backbone"),
    "pipeline.request": ("EngineFlags", "SamplingFlags", "default_store", "extract_source", "update_source_meta"),
    "pipeline.sources": ("Item", "SourceError", "load_source"),
    "pipeline.speed": ("Speed", "estimate_units", "speed_for"),
    "pipeline.stages": ("Done", "Rows"),
}
# `pipeline.extract` is the module; its function is exported as run_extraction.
_ALIASES = {"run_extraction": ("pipeline.extract", "extract")}
_WHERE = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _ALIASES
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module, attr = _WHERE[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return __all__
