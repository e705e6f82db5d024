"""Heads trained on a feature store: models, data, one training loop, metrics, plots and run directories.

What each stage-two command calls: fit-head `fit`, evaluate `evaluate`, predict `predict_files`, cluster-eval
`cluster_eval` (with a `ClusterConfig`), sweep `sweep` (axes from `parse_grid`), fuse `fuse_runs`, runs `list_runs`.

The names below load on first use (PEP 562): `import heads.config` for the CLI's choice tables must not pull in
scikit-learn and matplotlib through heads.run.
"""
from importlib import import_module

_EXPORTS = {"HEADS": "heads.models", "HeadConfig": "heads.models", "HeadError": "heads.models",
            "build_head": "heads.models", "TrainConfig": "heads.config", "evaluate_run": "heads.run",
            "fit_head": "heads.run", "list_runs": "heads.run", "load_run": "heads.run",
            "predict_features": "heads.run", "ClusterConfig": "heads.config", "ClusterError": "heads.config",
            "cluster_eval": "heads.cluster", "ClusterModel": "heads.cluster", "fit": "heads.api",
            "FitResult": "heads.api", "evaluate": "heads.api", "Evaluation": "heads.api",
            "predict_files": "heads.api", "Predictions": "heads.api", "sweep": "heads.experiments",
            "parse_grid": "heads.experiments", "fuse_runs": "heads.fusion"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
