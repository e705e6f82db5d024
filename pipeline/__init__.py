"""Stage one as a library: load a backbone with its preprocessing, decode and sample a video (frames or clips),
embed a batch, run an extraction into a store, embed files without a store.

    from pipeline import load_backbone, ClipStream, ClipSampling, Embedder, run_extraction, embed_files

`decode_loader` yields `Rows` (units of one video and their spans) and `Done` (a video's end) messages.
Everything a notebook or another engine needs is here; the modules behind it may move. Names load on first use,
so importing a light submodule (pipeline.launch, pipeline.sources) does not pay for torch and torchvision.
"""
from __future__ import annotations

from featstore.lazy import lazy_exports

_EXPORTS = {
    "pipeline.accel": ("AccelError", "COMPILE_MODES", "CPU_SPEED", "CPU_TABLES", "Measured", "compile_model",
                       "compile_pays_back", "cpu_flags", "cpu_kind", "cpu_model", "default_batch", "quantize_int8"),
    "pipeline.backbones": ("FAMILIES", "REGISTRY", "Backbone", "BackboneError", "BackboneWeights", "Preprocess",
                           "available_backbones", "build_backbone", "family_of", "get_spec", "layers_of",
                           "load_backbone", "preprocess_for", "weights_for"),
    "pipeline.decode": ("DECODERS", "RESIZE_ENGINES", "Clip", "ClipSampling", "ClipStream", "DecodedVideo",
                        "DecodeError", "FrameStream", "FrameWindow", "Geometry", "Sampling", "VideoInfo", "clip_count",
                        "decode_image", "decode_video", "SEEK_MODES", "set_decoder_threads"),
    "pipeline.decode.torchcodec_frames": ("decoder_unavailable",),
    "pipeline.decoder_choice": ("DECODE_SPEED", "DecoderError", "decoder_for"),
    "pipeline.device": ("EXTRACT_PRECISIONS", "PRECISIONS", "DeviceError", "resolve_device", "resolve_precision"),
    "pipeline.embed": ("Embedder",),
    "pipeline.flow": ("FlowComputer", "FlowEmbedder", "flow_backbone", "flow_stack"),
    "pipeline.extract": ("ExtractConfig", "ExtractResult", "Resolved", "config_from_store", "decode_loader",
                         "embed_files", "geometry_for", "geometry_of", "resolve", "sampling_for", "store_backbone",
                         "store_geometry"),
    "pipeline.request": ("EngineFlags", "SamplingFlags", "default_store", "extract_source", "update_source_meta"),
    "pipeline.sources": ("Item", "SourceError", "load_source"),
    "pipeline.speed": ("Speed", "estimate_units", "speed_for"),
    "pipeline.stages": ("Done", "Rows"),
}
# `pipeline.extract` is the module; its function is exported as run_extraction.
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS,
                                             aliases={"run_extraction": ("pipeline.extract", "extract")})
