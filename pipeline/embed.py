"""Frames or clips in, embeddings out: the frozen backbone on its device, with on-device normalization and the memory
format and autocast chosen once per device."""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.accel import batches_of, compile_model, pad_to, quantize_int8
from pipeline.backbones import Backbone
from pipeline.fold import folded_bf16


class Embedder:
    """(B, H, W, 3) frames for an image backbone, or (B, T, H, W, 3) clips for a video one, uint8 -> (B, D) float32.

    Units travel as uint8 channels-last; `permute` of an NHWC (NTHWC) tensor *is* a channels_last (channels_last_3d)
    NCHW (NCTHW) tensor, so the model, converted once to that memory format, reads it with no copy, and
    normalization happens on the device.

    `compile` runs the model through torch.compile (inductor), compiled on the first call; precision 'int8' also
    needs `calibrate(units)` first (PT2E static quantization, then compiled). Both run `batch` units per call (the
    first call's size when None), padding shorter ones. `setup_s` is what that one-time work took.

    Eager bf16 on a CPU runs a copy with BatchNorm folded and bf16 weights where the model qualifies
    (pipeline.fold; `fold=False`: autocast, as before, for bench/backbone.py's comparison), autocast otherwise. It
    folds in place, holding no second copy, where `owns_model` says nothing else will run the backbone's model."""

    def __init__(self, backbone: Backbone, device: torch.device, precision: str, compile: bool = False,
                 batch: int | None = None, fold: bool = True, owns_model: bool = False):
        self.device, self.quantized, self.video = device, backbone.cpu_only, backbone.is_video
        self.model = backbone.model.to(device)
        self.int8 = precision == "int8"
        self.compile, self.batch, self.setup_s = compile or self.int8, batch, 0.0
        eager_bf16 = fold and device.type == "cpu" and precision == "bf16" and not (self.compile or self.quantized)
        folded = folded_bf16(self.model, in_place=owns_model) if eager_bf16 else None
        self.bf16_weights = folded is not None  # the model's own weights are bf16 (pipeline.fold): no autocast
        self.model = self.model if folded is None else folded
        if not self.quantized:
            self.model = self.model.to(memory_format=torch.channels_last_3d if self.video else torch.channels_last)
        shape = (1, 3, 1, 1, 1) if self.video else (1, 3, 1, 1)
        pre = backbone.preprocess
        self.mean = torch.tensor(pre.mean, device=device).view(shape) * 255
        self.std = torch.tensor(pre.std, device=device).view(shape) * 255
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.name = backbone.name
        self.fast: torch.nn.Module | None = None  # the compiled (int8) model, once built

    @property
    def needs_calibration(self) -> bool:
        return self.int8 and self.fast is None

    @torch.inference_mode()
    def calibrate(self, units: torch.Tensor) -> None:
        """Quantize to int8 with activation ranges observed on `units` (frames of the source itself), then compile."""
        x = self._normalized(units)
        self.batch = self.batch or len(x)
        start = time.perf_counter()
        int8 = quantize_int8(self.model, x, self.batch)
        self.fast, _ = compile_model(int8, pad_to(x[:self.batch], self.batch), self.amp)
        self.setup_s = time.perf_counter() - start

    @torch.inference_mode()
    def __call__(self, units: torch.Tensor) -> np.ndarray:
        x = self._normalized(units)
        if self.needs_calibration:
            raise ValueError("an int8 Embedder quantizes on the source's own frames: call calibrate(units) first")
        if self.bf16_weights:
            return self.model(x.to(torch.bfloat16)).float().numpy()
        if self.compile and self.fast is None:
            self.batch = self.batch or len(x)
            self.fast, self.setup_s = compile_model(self.model, pad_to(x[:self.batch], self.batch), self.amp)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            if self.fast is None:
                out = self.model(x)
            else:
                out = torch.cat([self.fast(pad_to(part, self.batch))[:len(part)] for part in batches_of(x, self.batch)])
        return out.float().cpu().numpy()

    def _normalized(self, units: torch.Tensor) -> torch.Tensor:
        want = 5 if self.video else 4
        if units.ndim != want or units.shape[-1] != 3:
            kind = "(B, T, H, W, 3) clips" if self.video else "(B, H, W, 3) frames"
            raise ValueError(f"{self.name} embeds {kind}, got a tensor of shape {tuple(units.shape)}")
        x = units.to(self.device, non_blocking=True)
        x = x.permute(0, 4, 1, 2, 3) if self.video else x.permute(0, 3, 1, 2)
        x = (x.float() - self.mean) / self.std
        return x.contiguous() if self.quantized else x
