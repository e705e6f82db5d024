"""Stage one as a library: load a backbone with its preprocessing, decode and sample a video (frames or clips),
embed a batch, run an extraction into a store, embed files without a store.

    from pipeline import load_backbone, ClipStream, ClipSampling, Embedder, extract, embed_files

Everything a notebook or another engine needs is here; the modules behind it may move.
"""
from pipeline.backbones import REGISTRY, Backbone, BackboneError, Preprocess, available_backbones, load_backbone
from pipeline.decode import (Clip, ClipSampling, ClipStream, DecodedVideo, DecodeError, Geometry, Sampling, VideoInfo,
                             clip_count, decode_image, decode_video)
from pipeline.embed import Embedder, resolve_device, resolve_precision
from pipeline.extract import (ExtractConfig, ExtractResult, config_from_store, decode_loader, embed_files, extract,
                              geometry_for, sampling_for)
from pipeline.sources import Item, SourceError, load_source

__all__ = ["REGISTRY", "Backbone", "BackboneError", "Preprocess", "available_backbones", "load_backbone",
           "Clip", "ClipSampling", "ClipStream", "DecodedVideo", "DecodeError", "Geometry", "Sampling", "VideoInfo",
           "clip_count", "decode_image", "decode_video", "Embedder", "resolve_device", "resolve_precision",
           "ExtractConfig", "ExtractResult", "config_from_store", "decode_loader", "embed_files", "extract",
           "geometry_for", "sampling_for", "Item", "SourceError", "load_source"]
