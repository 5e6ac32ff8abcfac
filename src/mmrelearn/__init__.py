"""mmrelearn: balanced multimodal learning with Diagnosing & Re-learning (ECCV 2024).

Library entry points: :class:`DiagnoseRelearn` for any training loop, the pure functions of
:mod:`mmrelearn.diagnose` and :mod:`mmrelearn.relearn`, and :func:`train` for config-driven runs.
"""
from .diagnose import cluster_purity, kmeans, purity, purity_gap, reinit_strength
from .relearn import DiagnoseRelearn, DiagnosisReport, snapshot, soft_reinit_

__version__ = "0.1.0"

__all__ = ["DiagnoseRelearn", "DiagnosisReport", "cluster_purity", "kmeans", "purity",
           "purity_gap", "reinit_strength", "snapshot", "soft_reinit_", "__version__"]
