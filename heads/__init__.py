"""Heads trained on a feature store: models, data, one training loop, metrics, plots and run directories.

What each stage-two command calls: fit-head `fit`, evaluate `evaluate`, predict `predict_files`, cluster-eval
`cluster_eval` (with a `ClusterConfig`), sweep `sweep` (axes from `parse_grid`), fuse `fuse_runs`, runs `list_runs`.

The names below load on first use (PEP 562): `import heads.config` for the CLI's choice tables must not pull in
scikit-learn and matplotlib through heads.run.
"""
from featstore.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "heads.models": ("HEADS", "HeadConfig", "HeadError", "build_head"),
    "heads.config": ("TrainConfig", "ClusterConfig", "ClusterError"),
    "heads.run": ("evaluate_run", "fit_head", "list_runs", "load_run", "predict_features"),
    "heads.cluster": ("cluster_eval", "ClusterModel"),
    "heads.api": ("fit", "FitResult", "evaluate", "Evaluation", "predict_files", "Predictions"),
    "heads.experiments": ("sweep", "parse_grid"),
    "heads.fusion": ("fuse_runs",),
})
