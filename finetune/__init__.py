"""Stage three: fine-tune a registry backbone end to end (supervised, TSN segments) or without labels (temporal
InfoNCE), writing a backbone.pt that `extract --weights` reads back.

The names below load on first use (PEP 562), as in heads/: `import finetune.config` for the CLI's choice tables
must not pull in the training code.
"""
from importlib import import_module

_EXPORTS = {"FinetuneConfig": "finetune.config", "FinetuneError": "finetune.config",
            "NothingTrained": "finetune.train", "finetune": "finetune.run",
            "finetune_source": "finetune.source"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
