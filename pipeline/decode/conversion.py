"""Conversion: a sampled frame becomes a size x size RGB image, upright, resized by the chosen engine (the weights'
own recipe by default) and center-cropped, as `Geometry` says."""
from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

from pipeline.decode.container import DecodeError
from pipeline.decode.sampling import SamplingError, _check_positive_int, _normalize

CROPS = ("center", "square", "none")  # the --crop choices (cli.py reads them here)
# PIL resampling filters: 'pil' is bilinear (torchvision's image presets); the others are named by a family's recipe
# (timm's eval transform resizes PIL images with its `interpolation`, most often bicubic).
_PIL_FILTERS = {"pil": Image.BILINEAR, "pil-bicubic": Image.BICUBIC, "pil-nearest": Image.NEAREST,
                "pil-lanczos": Image.LANCZOS, "pil-box": Image.BOX, "pil-hamming": Image.HAMMING}
# 'tensor': torch bilinear without antialias (torchvision's video presets); 'tensor-antialias': with it (transformers'
# torchvision-backend processors, as V-JEPA 2's video processor)
_RESAMPLES = (*_PIL_FILTERS, "tensor", "tensor-antialias")
# The --resize-engine choices (cli.py reads them here). 'exact' is the weights' own recipe; the others resize in the
# decode worker, trading exactness for speed (numbers and the default in docs/extract.md, "Decoding cost").
RESIZE_ENGINES = ("exact", "swscale", "torch", "swscale-yuv")


@dataclass(frozen=True)
class Geometry:
    """How a frame becomes a size x size RGB image (torchvision's resize-then-center-crop recipe by default)."""

    size: int = 224        # output is size x size RGB
    resize: int | tuple[int, int] = 256  # crop='center': the shorter side is resized to this (or the frame to this
    #                                       exact (height, width)), then the center size x size is cut
    crop: str = "center"   # 'center' | 'square' (shorter side -> size, center square) | 'none' (squash to size x size)
    resample: str = "pil"  # 'pil': PIL bilinear (image presets), 'pil-bicubic' etc. (a family's recipe) | 'tensor':
    #                        torch bilinear, no antialias (video preset) | 'tensor-antialias' (transformers' tensors)
    engine: str = "exact"  # who resizes: 'exact' (the `resample` recipe above) or one of RESIZE_ENGINES' others
    crop_floor: bool = False  # center crop offset floor((side - size) / 2) (transformers' processors), else round()

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise SamplingError(f"--crop must be one of {', '.join(CROPS)}; got {self.crop!r}")
        if self.engine not in RESIZE_ENGINES:
            raise SamplingError(f"--resize-engine must be one of {', '.join(RESIZE_ENGINES)}; got {self.engine!r}")
        if self.resample not in _RESAMPLES:
            raise SamplingError(f"resample must be one of {', '.join(_RESAMPLES)}; got {self.resample!r}")
        _check_positive_int("--size", self.size)
        sides = self.resize if isinstance(self.resize, (tuple, list)) else (self.resize,)
        for side in sides:
            _check_positive_int("resize", side)
        _normalize(self, int, "size")
        object.__setattr__(self, "resize", tuple(int(x) for x in sides) if len(sides) == 2 else int(sides[0]))
        if self.crop == "center" and min(sides) < self.size:
            raise SamplingError(f"with --crop center the resize ({self.resize}) must be at least --size ({self.size}); "
                             "lower --size or use --crop square")


def _resized_size(width: int, height: int, geometry: Geometry) -> tuple[int, int]:
    """(width, height) to scale to before the center crop; int() truncation matches torchvision's Resize."""
    if geometry.crop == "none":
        return geometry.size, geometry.size
    if geometry.crop == "center" and isinstance(geometry.resize, tuple):  # an exact (height, width), as (128, 171)
        return geometry.resize[1], geometry.resize[0]
    short = geometry.resize if geometry.crop == "center" else geometry.size
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _offset(extra: int, floor: bool) -> int:
    """Where a center crop starts: torchvision's CenterCrop rounds half the extra pixels, transformers floors it."""
    return extra // 2 if floor else int(round(extra / 2.0))


def _center_crop(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:  # (H, W, 3) -> (size, size, 3), a view
    if geometry.crop == "none":
        return rgb
    height, width, size = rgb.shape[0], rgb.shape[1], geometry.size
    top, left = _offset(height - size, geometry.crop_floor), _offset(width - size, geometry.crop_floor)
    return rgb[top:top + size, left:left + size]


class _Converter:
    """Sampled frame -> (size, size, 3) uint8, upright, resized by the geometry's engine, cropped by slicing.

    All engines first convert to RGB at source size in swscale except 'swscale-yuv', which converts and resizes in
    one swscale call (the cheapest, but its chroma is interpolated differently: cosine 0.996 to exact). Then
    'exact' does the weights' own resize (PIL bilinear for image presets, so our pixels equal torchvision's recipe
    bit for bit; torch bilinear for video presets), 'swscale' swscale's bilinear on the RGB frame and 'torch'
    torch's antialiased bilinear (the image presets' recipe on tensors), both within one level of PIL's. One
    reformatter per step and video keeps swscale's contexts between frames; threads=1 because the decoder's
    threads already use the cores."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        self.to_rgb, self.resizer = VideoReformatter(), VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        turns = quarter_turns(frame)  # upright first: the crop must see the frame as it is shown
        engine = self.geometry.engine
        if engine in ("exact", "torch"):
            rgb = self.to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
            return _scale(np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb, self.geometry)
        shown = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        width, height = _resized_size(*shown, self.geometry)
        if turns % 2:
            width, height = height, width  # swscale scales the frame as stored; it is turned afterwards
        if engine == "swscale":
            frame = self.to_rgb.reformat(frame, format="rgb24", threads=1)
        rgb = self.resizer.reformat(frame, width=width, height=height, format="rgb24", threads=1,
                                    interpolation=Interpolation.BILINEAR).to_ndarray()
        return np.ascontiguousarray(_center_crop(np.rot90(rgb, turns) if turns else rgb, self.geometry))


def _scale(rgb: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(H, W, 3) uint8 at source size -> (size, size, 3) uint8, resized the way the weights' preset does."""
    width, height = _resized_size(rgb.shape[1], rgb.shape[0], geometry)
    if geometry.resample in _PIL_FILTERS and geometry.engine != "torch":
        scaled = np.asarray(Image.fromarray(rgb).resize((width, height), _PIL_FILTERS[geometry.resample]))
        return np.ascontiguousarray(_center_crop(scaled, geometry))
    # The VideoClassification preset resizes uint8 frame tensors with torch's bilinear and antialias=False (kept by
    # torchvision to preserve the released accuracies); the same call on the same pixels gives the same pixels.
    # The 'torch' engine is the image presets' recipe on tensors: antialiased. transformers' torchvision-backend
    # processors ('tensor-antialias') resize with transforms.v2, whose uint8 kernel rounds differently from v1's.
    import torch
    from torchvision.transforms import functional as tvf
    from torchvision.transforms.v2 import functional as tvf2

    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    resize = tvf2.resize if geometry.resample == "tensor-antialias" else tvf.resize
    scaled = resize(chw, [height, width], interpolation=tvf.InterpolationMode.BILINEAR,
                    antialias=geometry.engine == "torch" or geometry.resample == "tensor-antialias")
    return np.ascontiguousarray(_center_crop(scaled.permute(1, 2, 0).numpy(), geometry))


# PIL's modes of 16-bit grey: I;16* as stored, and I, as which PIL opens 16-bit PGM (and older Pillows 16-bit PNG).
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_rgb(img: Image.Image, path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image, writable (torch.from_numpy wants that). PIL's convert('RGB') clips 16-bit
    grey at 255 instead of scaling it, so those modes are scaled here; float pixels have no white level to scale
    from. Alpha is dropped, as torchvision's image loader does."""
    if img.mode == "F":
        raise DecodeError(f"failed to decode {path}: floating-point pixels (PIL mode F) have no white level; "
                          "save the image with 8- or 16-bit pixels")
    if img.mode not in _GREY_16:
        return np.array(img.convert("RGB"))
    grey = np.asarray(img, dtype=np.int64)
    if grey.size and (grey.min() < 0 or grey.max() > 65535):
        raise DecodeError(f"failed to decode {path}: 32-bit integer pixels outside 0..65535 (PIL mode I) have no "
                          "white level; save the image with 8- or 16-bit pixels")
    return np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show `frame` upright, from its display matrix (PyAV's `rotation` is
    counter-clockwise degrees, as FFmpeg's av_display_rotation_get). Angles between quarter turns are rounded to the
    nearest; a mirroring display matrix is not undone (phones record rotation only)."""
    return round((frame.rotation or 0) / 90) % 4
