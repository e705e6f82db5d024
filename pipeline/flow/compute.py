"""Optical flow between consecutive RGB frames: OpenCV's Farneback and TV-L1 (no weights), torchvision's RAFT small
and large (their weights enum's own `transforms()`). Every method gives float32 flow in pixels, (H, W, 2): x then y,
as cv2 and RAFT both order it.

    compute = FlowComputer("farneback")
    flows = compute(frames)          # (B, L + 1, H, W, 3) uint8 -> (B, L, H, W, 2) float32: L flows per unit

cv2 is imported only by the classical methods (extra `flow`); RAFT needs torchvision alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featstore.errors import FramecacheError

FLOW_METHODS = ("farneback", "tvl1", "raft_small", "raft_large")
CLASSICAL = ("farneback", "tvl1")
INSTALL_HINT = 'pip install "framecache[flow]"'
# Farneback as TSN's and most two-stream baselines' scripts call it: a 3-level pyramid halving each level, 15-pixel
# windows, 3 iterations, 5-pixel polynomial neighbourhoods (sigma 1.2). Fixed: --flow farneback names these.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
# RAFT works at 1/8 of the input and its correlation pyramid halves that 3 times more: 8 x 16 pixels at least.
RAFT_MIN_SIDE = 128
SEED_FOR_RANDOM_INIT = 0  # --flow-weights none: always the same RAFT, as --weights none is the same backbone


class FlowError(FramecacheError, ValueError):
    """A flow method or its weights that cannot be used here; the message names the flag and what to do."""


@dataclass(frozen=True)
class RaftWeights:
    """RAFT's weights as chosen, before the model is built: `id` is what the store records and fingerprints."""
    method: str               # raft_small | raft_large
    arg: str                  # --flow-weights as given: DEFAULT, an enum name, none, or a file
    id: str                   # Raft_Small_Weights.C_T_V2, none(seed=0) or file:sha256:<16 hex>
    file: str | None = None   # a weights file's absolute path (recorded, so the store's RAFT can be found again)


def raft_weights(method: str, weights: str = "DEFAULT") -> RaftWeights:
    """The RAFT weights `--flow-weights` names for `method` (a file is hashed here, once)."""
    from pipeline.backbones import file_sha256, is_weights_file

    enum = _raft(method)[1]
    if weights.lower() == "none":
        return RaftWeights(method, weights, f"none(seed={SEED_FOR_RANDOM_INIT})")
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FlowError(f"--flow-weights {path} does not exist")
        return RaftWeights(method, weights, f"file:sha256:{file_sha256(path)[:16]}", str(path.resolve()))
    if weights.upper() not in enum.__members__:
        raise FlowError(f"--flow-weights {weights!r} is not a {method} weight: use one of "
                        f"{', '.join(enum.__members__)}, none, or a file")
    member = enum[weights.upper()]
    return RaftWeights(method, weights, f"{enum.__name__}.{member.name}")


def recorded_raft(method: str, weights_id: str, file: str | None) -> RaftWeights:
    """The RAFT weights a store recorded (its id, and the file where it was one), found again: a file must still
    hold the same content."""
    if weights_id.startswith("none"):
        return raft_weights(method, "none")
    if not weights_id.startswith("file:"):
        return raft_weights(method, weights_id.rpartition(".")[2])
    again = raft_weights(method, file) if file and Path(file).is_file() else None
    if again is None or again.id != weights_id:
        raise FlowError(f"the RAFT weights file the store was made with is gone or changed ({file}, {weights_id}): "
                        "put it back to re-embed files as the store did")
    return again


def _raft(method: str):
    """(builder, weights enum) of a RAFT method."""
    from torchvision.models import optical_flow

    builders = {"raft_small": (optical_flow.raft_small, optical_flow.Raft_Small_Weights),
                "raft_large": (optical_flow.raft_large, optical_flow.Raft_Large_Weights)}
    if method not in builders:
        raise FlowError(f"--flow {method!r} is not valid; choose one of: {', '.join(FLOW_METHODS)}")
    return builders[method]


def cv2_module():
    """OpenCV, or a one-line FlowError saying how to install it."""
    try:
        import cv2
    except ModuleNotFoundError:
        raise FlowError(f"--flow farneback and tvl1 need OpenCV, which is not installed: {INSTALL_HINT}, "
                        "or use --flow raft_small") from None
    return cv2


class FlowComputer:
    """Flow between consecutive frames by one method, built once: RAFT on `device` (fp32), the classical methods on
    the CPU, one pair at a time (OpenCV uses its own threads inside each)."""

    def __init__(self, method: str, weights: str | RaftWeights | None = "DEFAULT",
                 device: torch.device | str = "cpu"):
        self.method, self.device = method, torch.device(device)
        if method in CLASSICAL:
            self._cv2 = cv2_module()
            self._tvl1 = _tvl1(self._cv2) if method == "tvl1" else None
        else:
            self.weights = weights if isinstance(weights, RaftWeights) else raft_weights(method, weights or "DEFAULT")
            self.model, self.transforms = _build_raft(self.weights)
            self.model = self.model.to(self.device)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, L + 1, H, W, 3) uint8 consecutive frames -> (B, L, H, W, 2) float32 flow, on the CPU."""
        b, n, h, w, _ = frames.shape
        first = frames[:, :-1].reshape(b * (n - 1), h, w, 3)
        second = frames[:, 1:].reshape(b * (n - 1), h, w, 3)
        return self.pairs(first, second).reshape(b, n - 1, h, w, 2)

    def pairs(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames and the frames after them -> (N, H, W, 2) float32 flow from first to second."""
        if self.method in CLASSICAL:
            flows = [self._classical(a, b) for a, b in zip(np.asarray(first), np.asarray(second))]
            return torch.from_numpy(np.stack(flows)) if flows else torch.zeros((0, *first.shape[1:3], 2))
        return self._raft(first, second)

    def _classical(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        a, b = (cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in (first, second))
        if self.method == "tvl1":
            return self._tvl1.calc(a, b, None).astype(np.float32)
        return cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK).astype(np.float32)

    @torch.inference_mode()
    def _raft(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        check_flow_size(self.method, *first.shape[1:3])
        a, b = (x.to(self.device).permute(0, 3, 1, 2) for x in (first, second))  # (N, 3, H, W) uint8
        a, b = self.transforms(a, b)
        return self.model(a, b)[-1].permute(0, 2, 3, 1).float().cpu()  # the last of RAFT's refinements


def check_flow_size(method: str, height: int, width: int | None = None) -> None:
    """Refuse frames RAFT cannot take (sides multiples of 8, at least RAFT_MIN_SIDE); any size suits the others."""
    width = height if width is None else width
    if method not in CLASSICAL and (height % 8 or width % 8 or min(height, width) < RAFT_MIN_SIDE):
        raise FlowError(f"--flow {method} takes frames whose sides are multiples of 8 and at least {RAFT_MIN_SIDE}, "
                        f"got {width}x{height}: use --size 224 (or 128, 160, ...)")


def flow_between(first: np.ndarray, second: np.ndarray, method: str = "farneback",
                 weights: str = "DEFAULT") -> np.ndarray:
    """Flow from one (H, W, 3) uint8 RGB frame to the next, float32 (H, W, 2) in pixels (builds `method` each call:
    for many pairs use FlowComputer)."""
    computer = FlowComputer(method, weights)
    return computer.pairs(torch.from_numpy(first[None]), torch.from_numpy(second[None]))[0].numpy()


def _tvl1(cv2):
    if not hasattr(cv2, "optflow"):
        raise FlowError("--flow tvl1 needs OpenCV's contrib module (cv2.optflow), which this OpenCV lacks: "
                        "pip install opencv-contrib-python-headless, or use --flow farneback")
    return cv2.optflow.DualTVL1OpticalFlow_create()


def _build_raft(chosen: RaftWeights) -> tuple[torch.nn.Module, object]:
    """(frozen RAFT in eval mode, its weights' transforms()) for the chosen weights."""
    from pipeline.backbones import _state_dict_from_file, seeded

    builder, enum = _raft(chosen.method)
    transforms = enum.DEFAULT.transforms()  # the same preset for every RAFT weight (and for random init)
    if chosen.arg.lower() == "none":
        model = seeded(lambda: builder(weights=None))
    elif chosen.id.startswith("file:"):
        model, path = builder(weights=None), Path(chosen.arg).expanduser()
        try:
            model.load_state_dict(_state_dict_from_file(path, chosen.method))
        except RuntimeError as e:  # missing, unexpected or misshapen keys
            raise FlowError(f"--flow-weights {path} does not fit {chosen.method}: "
                            f"{str(e).splitlines()[-1].strip()[:160]}") from None
    else:
        member = enum[chosen.arg.upper()]
        try:
            model = builder(weights=member)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; hub raises RuntimeError on bad downloads
            raise FlowError(f"cannot get {chosen.method} {member.name} weights offline "
                            f"({str(e).splitlines()[0][:80]}): download {member.url} on a connected machine and "
                            f"pass --flow-weights /path/to/{Path(member.url).name}") from None
    return model.eval().requires_grad_(False), transforms
