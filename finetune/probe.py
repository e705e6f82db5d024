"""Linear probe, then fine-tune (LP-FT): what a supervised run without --init-head starts from.

Fine-tuning a backbone under a new, random head sends the head's large early gradients into the backbone and
wrecks the features before the head has learnt anything (on the real clips: test 0.43 after 3 epochs, against 0.68
for a frozen linear head). So the run first embeds its train and val clips with the frozen backbone (the frames it
evaluates on), fits `--head` on those features with fit-head's own training (heads.train.train_head: its defaults,
early stopping on val, refit on train + val), and fine-tunes from that head, which then competes as epoch 0.

The probe is saved in the run folder (PROBE_FILE) with the settings it was fit with, so that `--resume` (after a
kill at any point past the probe) continues from the very same head without embedding the clips again.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from finetune.config import FinetuneConfig, FinetuneError
from finetune.data import ClipFrames
from finetune.model import VideoNet
from finetune.train import RESUMABLE_CHANGES, NothingTrained, forward_all, save_atomic
from heads.config import TrainConfig
from heads.data import Cache
from heads.models import HeadConfig, build_head
from heads.train import TrainResult, cpu_state, train_head

PROBE_FILE = "probe.pt"


class Probe:
    """The probe's heads: `early` (best val epoch, what the fit phase starts from) and `final` (refit on
    train + val, what the refit phase starts from; the early one without refit)."""

    def __init__(self, head_config: HeadConfig, early: torch.nn.Module, final: torch.nn.Module, best_epoch: int):
        self.head_config, self.early, self.final, self.best_epoch = head_config, early, final, best_epoch

    @classmethod
    def from_result(cls, result: TrainResult) -> "Probe":
        return cls(result.head_config, result.early, result.model, result.best_epoch)

    def save(self, path: Path, cfg: FinetuneConfig) -> None:
        save_atomic({"head_config": asdict(self.head_config), "early": cpu_state(self.early.state_dict()),
                     "final": cpu_state(self.final.state_dict()), "best_epoch": self.best_epoch,
                     "config": asdict(cfg)}, path)

    @classmethod
    def load(cls, path: Path, cfg: FinetuneConfig) -> "Probe | None":
        """The probe saved at `path` by a run of `cfg` (settings that do not change the result aside); None when
        it was fit with other settings."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        now = asdict(cfg)
        if any(saved["config"].get(k) != v for k, v in now.items() if k not in RESUMABLE_CHANGES):
            return None
        hc = HeadConfig(**saved["head_config"])
        heads = []
        for key in ("early", "final"):
            head = build_head(hc)
            head.load_state_dict(saved[key])
            heads.append(head.eval())
        return cls(hc, *heads, saved["best_epoch"])


def fit_probe(net: VideoNet, clips: ClipFrames, n_train: int, targets: torch.Tensor, labels: list[str],
              cfg: FinetuneConfig, workers: int, device: torch.device, amp: torch.dtype | None,
              failures: dict[str, str]) -> Probe:
    """Fit cfg.head on the frozen features of `clips` (its first `n_train` clips train, the rest validate), as
    fit-head would on a store of them. Raises NothingTrained when no training clip decodes."""
    cache, rows = frozen_features(net, clips, cfg.batch_size, workers, device, amp, failures)
    train, val = np.flatnonzero(rows < n_train), np.flatnonzero(rows >= n_train)
    if not len(train):
        raise NothingTrained(failures)
    if not len(val):
        raise FinetuneError("no validation clip could be decoded, and the linear probe early-stops on them: "
                            "fix the clips listed, or pass --no-probe")
    frames = clips.sampler.segments
    tc = TrainConfig(head=cfg.head, hidden=cfg.hidden, max_frames=frames, seed=cfg.seed, device=str(device),
                     refit=cfg.refit)
    splits = {"train": train, "val": val, "test": np.zeros(0, dtype=np.int64)}
    chosen = torch.as_tensor(np.asarray(clips.chosen)[rows])
    return Probe.from_result(train_head(cache, targets[chosen], "multiclass", labels, splits, tc))


def frozen_features(net: VideoNet, clips: ClipFrames, batch_size: int, workers: int, device: torch.device,
                    amp: torch.dtype | None, failures: dict[str, str]) -> tuple[Cache, np.ndarray]:
    """The backbone's features of every frame of the clips that decode, as a Cache (one clip per entry), and the
    position in `clips` of each entry."""
    net.eval()
    where = {source: k for k, source in enumerate(clips.chosen)}
    feats, rows = [], []
    for out, batch in forward_all(lambda f: net.embed(f.flatten(0, 1)).unflatten(0, f.shape[:2]), clips,
                                  batch_size, workers, device, amp, failures):
        feats += list(out)  # (T, D) each
        rows += [where[int(i)] for i in batch.index]
    if not feats:
        return Cache(torch.zeros(0, 1), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                     [], [], [], []), np.zeros(0, dtype=np.int64)
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
    items = [clips.items[clips.chosen[k]] for k in rows]
    cache = Cache(torch.cat(feats), torch.cumsum(lengths, 0) - lengths, lengths, [it.id for it in items],
                  [list(it.labels) for it in items], [it.group for it in items], [it.split for it in items])
    return cache, np.asarray(rows, dtype=np.int64)
