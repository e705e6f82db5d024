"""The heads' names, settings and error, without torch: what configs and the CLI's choices need (TrainConfig
imports nothing heavy). heads/models.py maps each name to its module and checks it holds exactly these."""
from __future__ import annotations

from dataclasses import dataclass

from featstore.errors import FramecacheError

HEAD_KINDS = ("linear", "mlp", "rnn", "gru", "lstm", "attention", "transformer")  # trained by gradient steps
MEMORY_HEAD_KINDS = ("knn",)    # fit without gradient steps, from the train clips alone (finetune cannot train them)
MADE_HEAD_KINDS = ("zeroshot",)  # made from something else than the store's clips (cli.py zero-shot)


class HeadError(FramecacheError, ValueError):
    """A head, split or run that cannot be built as asked; the message names the flag and value."""


@dataclass
class HeadConfig:
    kind: str = "linear"         # a key of HEADS
    in_dim: int = 0              # D, the store's feature dimension
    n_classes: int = 2           # C, logits per clip
    hidden: int = 256            # MLP width, RNN hidden size, transformer width
    layers: int = 1              # MLP hidden layers, RNN layers, transformer encoder layers
    bidirectional: bool = False  # rnn / gru / lstm only
    dropout: float = 0.0         # before the classifier (and between layers where there are several)
    proj_dim: int = 0            # project frames to this many dims first (0: keep D)
    heads: int = 4               # transformer attention heads (must divide hidden)
    max_len: int = 64            # transformer learned positions: the most frames a clip may have
    pool: str = "mean"           # transformer pooling: masked "mean" or a learned "cls" token
