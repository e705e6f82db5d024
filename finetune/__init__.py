"""Stage three: fine-tune a registry backbone end to end (supervised, TSN segments) or without labels (temporal
InfoNCE), writing a backbone.pt that `extract --weights` reads back.

The names below load on first use (PEP 562), as in heads/: `import finetune.config` for the CLI's choice tables
must not pull in the training code.
"""
from featstore.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "finetune.config": ("FinetuneConfig", "FinetuneError"),
    "finetune.train": ("NothingTrained",),
    "finetune.data": ("ClipsLost",),
    "finetune.run": ("finetune",),
    "finetune.source": ("finetune_source",),
})
