"""Classification metrics: accuracy, macro F1 and weighted F1 from a confusion matrix."""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "classification_metrics"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of samples of true class t predicted as p, shape (C, C)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    idx = y_true * num_classes + y_pred
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> dict[str, float]:
    """Accuracy, macro F1 (mean over classes) and weighted F1 (weighted by class support).

    A class with no true and no predicted samples has F1 = 0 and, in the macro mean, is only
    counted if it occurs in ``y_true`` or ``y_pred`` (as scikit-learn does with its labels).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)  # true count per class
    predicted = cm.sum(0)
    denom = support + predicted  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    n = cm.sum()
    return {
        "acc": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
    }
