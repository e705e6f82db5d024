"""Heads trained on a feature store: models, data, one training loop, metrics, plots and run directories.

The names below load on first use (PEP 562): `import heads.config` for the CLI's choice tables must not pull in
scikit-learn and matplotlib through heads.run.
"""
from featstore.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "heads.models": ("HEADS", "HeadConfig", "HeadError", "build_head"),
    "heads.config": ("TrainConfig",),
    "heads.run": ("evaluate_run", "fit_head", "list_runs", "load_run", "predict_features"),
})
