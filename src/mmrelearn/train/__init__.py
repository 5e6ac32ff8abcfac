"""The training loop, checkpoints, metrics, plots and run assembly."""
from .loop import NonFiniteLossError, Trainer, evaluate
from .metrics import classification_metrics
from .run import RunExistsError, build_trainer, load_run_config, train

__all__ = ["Trainer", "NonFiniteLossError", "evaluate", "classification_metrics", "train",
           "build_trainer", "load_run_config", "RunExistsError"]
