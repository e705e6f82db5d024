"""Heads trained on a feature store: models, data, one training loop, metrics, plots and run directories."""
from heads.models import HEADS, HeadConfig, HeadError, build_head
from heads.run import evaluate_run, fit_head, list_runs, load_run, predict_features
from heads.train import TrainConfig

__all__ = ["HEADS", "HeadConfig", "HeadError", "TrainConfig", "build_head", "evaluate_run", "fit_head",
           "list_runs", "load_run", "predict_features"]
