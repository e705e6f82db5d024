"""Stage three: fine-tune a registry backbone end to end (supervised, TSN segments) or without labels (temporal
InfoNCE), writing a backbone.pt that `extract --weights` reads back."""
from finetune.data import FinetuneError
from finetune.run import finetune
from finetune.train import FinetuneConfig, NothingTrained

__all__ = ["FinetuneConfig", "FinetuneError", "NothingTrained", "finetune"]
