"""Heads: small modules that map a padded batch of frame embeddings to class logits.

Every head has the same signature, `forward(x, lengths) -> logits`, with `x` (B, T, D) padded per
batch (padding rows are never read: masked pooling, packed RNNs, key padding masks) and `lengths`
(B,) int64. Each head starts with a `FrameInput`: per-dimension standardization with statistics of
the training frames (buffers, so a checkpoint carries them) and an optional linear projection.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from heads.kinds import HEAD_KINDS, MADE_HEAD_KINDS, MEMORY_HEAD_KINDS, HeadConfig, HeadError  # noqa: F401


def length_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) bool, True on real frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * mask).sum(1) / lengths.clamp_min(1).unsqueeze(-1).to(x.dtype)  # (B, D)


class FrameInput(nn.Module):
    """Standardize each feature dimension, then optionally project: (B, T, D) -> (B, T, out_dim)."""

    def __init__(self, in_dim: int, proj_dim: int = 0):
        super().__init__()
        # Identity until `set_stats`; buffers travel with the state_dict so predictions need no side file.
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, proj_dim) if proj_dim else nn.Identity()
        self.out_dim = proj_dim or in_dim

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj((x - self.mean) / self.std)


class LinearHead(nn.Module):
    """Masked mean over time, then one linear layer: order-blind, the frozen-feature baseline."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.input = FrameInput(cfg.in_dim, cfg.proj_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(self.input.out_dim, cfg.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(masked_mean(self.input(x), lengths)))  # (B, C)


class MLPHead(nn.Module):
    """Masked mean over time, then `layers` hidden layers with GELU and dropout."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.input = FrameInput(cfg.in_dim, cfg.proj_dim)
        blocks, width = [], self.input.out_dim
        for _ in range(max(1, cfg.layers)):
            blocks += [nn.Dropout(cfg.dropout), nn.Linear(width, cfg.hidden), nn.GELU()]
            width = cfg.hidden
        self.body = nn.Sequential(*blocks, nn.Dropout(cfg.dropout))
        self.fc = nn.Linear(width, cfg.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(masked_mean(self.input(x), lengths)))  # (B, C)


class RecurrentHead(nn.Module):
    """RNN / GRU / LSTM over the packed sequence; classifies the final hidden state(s) of the top layer."""

    cells = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.input = FrameInput(cfg.in_dim, cfg.proj_dim)
        self.rnn = self.cells[cfg.kind](
            self.input.out_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.directions = 2 if cfg.bidirectional else 1
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden * self.directions, cfg.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.input(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        h = h[0] if isinstance(h, tuple) else h  # LSTM returns (h_n, c_n)
        top = h[-self.directions:]  # (dirs, B, H): the last layer, forward (and backward)
        return self.fc(self.drop(torch.cat(list(top), dim=-1)))  # (B, C)


class AttentionHead(nn.Module):
    """Learned attention pooling: a tanh scorer weighs frames, padding gets zero weight."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.input = FrameInput(cfg.in_dim, cfg.proj_dim)
        d = self.input.out_dim
        self.score = nn.Sequential(nn.Linear(d, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(d, cfg.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.input(x)  # (B, T, d)
        s = self.score(h).squeeze(-1)  # (B, T)
        s = s.masked_fill(~length_mask(lengths, h.shape[1]), float("-inf"))
        w = torch.softmax(s, dim=1).unsqueeze(-1)  # (B, T, 1)
        return self.fc(self.drop((w * h).sum(1)))  # (B, C)


def sinusoid(n: int, d: int) -> torch.Tensor:
    """(n, d) sin/cos position table of "Attention is all you need"."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class TransformerHead(nn.Module):
    """A small pre-norm encoder with learned positions and a key padding mask; masked mean or CLS pooling."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise HeadError(f"--hidden {cfg.hidden} must be a multiple of --heads {cfg.heads} for the transformer")
        if cfg.pool not in ("mean", "cls"):
            raise HeadError(f"--pool {cfg.pool!r} is not a pooling; choose mean or cls")
        self.input = FrameInput(cfg.in_dim, cfg.proj_dim)
        self.embed = nn.Linear(self.input.out_dim, cfg.hidden)
        self.max_len, self.pool = cfg.max_len, cfg.pool
        extra = 1 if cfg.pool == "cls" else 0
        # Learned positions, started from the sinusoidal table: order is visible from the first step,
        # which tiny caches need (from a 0.02-std init, training often stops before positions matter).
        self.pos = nn.Parameter(sinusoid(cfg.max_len + extra, cfg.hidden).unsqueeze(0))  # (1, L, H)
        self.cls = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, cfg.hidden), std=0.02)) if extra else None
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=2 * cfg.hidden,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        # No nested-tensor fast path: results must not depend on how much padding a batch has.
        self.encoder = nn.TransformerEncoder(layer, max(1, cfg.layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden, cfg.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t > self.max_len:
            raise HeadError(f"a clip of {t} frames exceeds the transformer's max_len {self.max_len}: "
                            "sample fewer frames (--max-frames)")
        h = self.embed(self.input(x))  # (B, T, H)
        pad = ~length_mask(lengths, t)  # (B, T), True on padding
        if self.pool == "cls":
            h = torch.cat([self.cls.expand(b, -1, -1), h], dim=1)  # (B, T+1, H)
            pad = torch.cat([pad.new_zeros(b, 1), pad], dim=1)
        h = self.encoder(h + self.pos[:, :h.shape[1]], src_key_padding_mask=pad)
        h = self.norm(h)
        pooled = h[:, 0] if self.pool == "cls" else masked_mean(h, lengths)  # (B, H)
        return self.fc(self.drop(pooled))  # (B, C)


class KNNHead(nn.Module):
    """Cosine k-nearest-neighbour vote over remembered train clips, as in DINO's evaluation of frozen features: a
    clip's neighbours are the `k` train clips most similar to its masked-mean feature, each voting for its labels
    with weight exp(cosine / temperature). Logits are the log vote shares (softmax gives the shares back), or their
    log-odds for a multilabel run (sigmoid gives them back). No parameters: `remember` fills the buffers."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, cfg.in_dim))              # (N, D) unit-norm train clips
        self.register_buffer("bank_targets", torch.zeros(0, cfg.n_classes))   # (N, C) one-hot or multi-hot
        # set by `remember` or a checkpoint (TrainConfig's k and temperature, the run's task)
        self.register_buffer("k", torch.tensor(0))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("multilabel", torch.tensor(False))

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(masked_mean(x, lengths), dim=1)  # (B, D)

    def remember(self, feats: torch.Tensor, targets: torch.Tensor, k: int, temperature: float,
                 multilabel: bool) -> None:
        """Keep unit-norm clip features (N, D) and their targets (N, C) as the neighbours to vote."""
        self.bank, self.bank_targets = feats.float(), targets.float().to(feats.device)
        self.k.fill_(k)
        self.temperature.fill_(temperature)
        self.multilabel.fill_(multilabel)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("bank", "bank_targets"):  # the memory's size is the checkpoint's, not the config's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def neighbours(self, query: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine (B, k), bank row (B, k)) of each unit-norm query's k most similar clips, `chunk` bank rows at a
        time: a bank of millions of clips never needs a (B, N) similarity matrix."""
        k = min(int(self.k), len(self.bank))
        top = idx = None
        for start in range(0, len(self.bank), chunk):
            sim = query @ self.bank[start:start + chunk].T  # (B, chunk) cosine
            t, i = sim.topk(min(k, sim.shape[1]), dim=1)
            if top is not None:  # the best k of the best so far and this chunk's
                both = torch.cat([top, t], 1)
                t, pick = both.topk(min(k, both.shape[1]), dim=1)
                i = torch.cat([idx, i + start], 1).gather(1, pick)
            top, idx = t, i
        return top, idx

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        top, idx = self.neighbours(self.embed(x, lengths))  # (B, k)
        weight = torch.exp((top - top[:, :1]) / self.temperature)  # exp(sim/T), scaled by the best: no overflow
        votes = (weight.unsqueeze(-1) * self.bank_targets[idx]).sum(1)  # (B, C)
        share = (votes / weight.sum(1, keepdim=True)).clamp(1e-7, 1 - 1e-7)
        return share.log() - (1 - share).log() if self.multilabel else share.log()  # (B, C)


class ZeroShotHead(nn.Module):
    """A classifier made without training from a CLIP text tower (heads.zeroshot): each row, normalised, scores
    cosine x logit scale against every class's unit-norm text embedding, and a clip's logits are the mean of its
    rows' scores (the mean of the normalised rows, times the text embeddings: as a linear head pools). No
    parameters: the buffers come from `set_classes` or a checkpoint."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.register_buffer("text", torch.zeros(cfg.n_classes, cfg.in_dim))  # (C, D) unit-norm class embeddings
        self.register_buffer("scale", torch.tensor(1.0))                     # CLIP's exp(logit_scale)

    def set_classes(self, text: torch.Tensor, scale: float) -> None:
        self.text.copy_(text)
        self.scale.fill_(scale)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.normalize(x.float(), dim=-1)  # (B, T, D)
        return self.scale * masked_mean(rows, lengths) @ self.text.T  # (B, C)


HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "rnn": RecurrentHead,
    "gru": RecurrentHead,
    "lstm": RecurrentHead,
    "attention": AttentionHead,
    "transformer": TransformerHead,
}


# Heads fit without gradient steps, from the train clips alone (fit-head --head knn): finetune cannot train them.
MEMORY_HEADS: dict[str, type[nn.Module]] = {"knn": KNNHead}


# Heads made from something else than the store's clips (cli.py zero-shot): fit-head and finetune cannot train them.
MADE_HEADS: dict[str, type[nn.Module]] = {"zeroshot": ZeroShotHead}
assert (tuple(HEADS), tuple(MEMORY_HEADS), tuple(MADE_HEADS)) == (HEAD_KINDS, MEMORY_HEAD_KINDS, MADE_HEAD_KINDS)


# Heads that pool rows order-blind into one vector: each row alone is a valid input, so evaluate also scores rows
# (clips of a clip store) one by one.
POOLING_HEADS = ("linear", "mlp", "attention")


def build_head(cfg: HeadConfig) -> nn.Module:
    """The head `cfg.kind` built from `cfg`; unknown kinds fail with the list of valid ones."""
    kinds = {**HEADS, **MEMORY_HEADS, **MADE_HEADS}
    if cfg.kind not in kinds:
        raise HeadError(f"--head {cfg.kind!r} is not a head; choose one of: {', '.join(kinds)}")
    if cfg.in_dim < 1 or cfg.n_classes < 1:
        raise HeadError(f"a head needs in_dim >= 1 and n_classes >= 1 (got {cfg.in_dim}, {cfg.n_classes})")
    return kinds[cfg.kind](cfg)


def model_device(model: nn.Module) -> torch.device:
    """Where a head's weights live (a kNN head has buffers only)."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
