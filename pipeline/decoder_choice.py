"""`--decoder`: which library decodes a run's videos. `auto` continues a store with its own decoder; a new store gets
torchcodec only where it is installed, loads FFmpeg's libraries, the resize engine lets it convert (exact, torch)
and bench/extract.py measured it faster on this kind of CPU (DECODE_SPEED); else PyAV, with a one-line note where
torchcodec was the measured choice but cannot run here. The decoder is recorded in the store and fingerprinted
(its RGB conversion differs from PyAV's by a level or two), so a store resumes only with its own (docs/decoders.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from featstore import StoreConfig
from featstore.errors import FramecacheError
from pipeline.accel import cpu_kind
from pipeline.decode.torchcodec_frames import decoder_unavailable


class DecoderError(FramecacheError, ValueError):
    """A --decoder this store or this machine cannot use; the message says which to use."""


@dataclass(frozen=True)
class DecoderChoice:
    name: str                # pyav | torchcodec | torchcodec-cuda
    note: str | None = None  # why auto fell back to pyav, where torchcodec was the measured choice


@dataclass(frozen=True)
class DecodeMeasured:
    """bench/extract.py --parts decoders: sampled frames/s of decode alone (every 10th frame, the exact resize to
    224, one decode worker with one thread, the 142 UCF101 clips), PyAV and torchcodec in alternating runs."""
    pyav: float
    torchcodec: float


# Per CPU kind (pipeline.accel.cpu_kind), from bench/results/decoders.json; a kind not measured keeps PyAV. A gain
# under MIN_GAIN is within the run-to-run spread measured (1.00, 1.06 and 1.02 in three runs on the AMX machine,
# where the weights' exact resize costs as much as decoding): not worth a second fingerprint for the same features.
DECODE_SPEED: dict[str, DecodeMeasured] = {
    "amx": DecodeMeasured(pyav=261.7, torchcodec=267.1),  # all 142 clips
}
MIN_GAIN = 1.10


def decoder_for(asked: str, engine: str, device: torch.device, store: StoreConfig | None = None) -> DecoderChoice:
    """The decoder `--decoder` means for a run with this resize `engine` on `device`, continuing `store` (None: a
    new one). Raises DecoderError for a decoder the store was not made with, or one that cannot run here."""
    own = None if store is None else store.decoder or "pyav"  # stores without the key were decoded by PyAV
    if own is not None and asked not in ("auto", own):
        raise DecoderError(f"the store was made with --decoder {own}, this run asks for {asked}: drop --decoder "
                           "(auto continues with the store's own) or use another --store")
    chosen = own or asked
    if chosen == "auto":
        return _auto(engine, device)
    if why := decoder_unavailable(chosen):
        raise DecoderError(why)
    return DecoderChoice(chosen)


def _auto(engine: str, device: torch.device) -> DecoderChoice:
    measured = DECODE_SPEED.get(cpu_kind()) if device.type == "cpu" else None
    if engine not in ("exact", "torch") or measured is None or measured.torchcodec < MIN_GAIN * measured.pyav:
        return DecoderChoice("pyav")
    if why := decoder_unavailable("torchcodec"):
        return DecoderChoice("pyav", f"--decoder auto uses pyav: {why}")
    return DecoderChoice("torchcodec")
