"""Accuracy, macro F1 and weighted F1 against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mmrelearn.train.metrics import classification_metrics, confusion_matrix


def test_hand_computed_values():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2, support 3, predicted 2 -> F1 = 4/5
    # class 1: tp 1, support 2, predicted 2 -> F1 = 2/4
    # class 2: tp 1, support 1, predicted 2 -> F1 = 2/3
    m = classification_metrics(np.array(y_true), np.array(y_pred), 3)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 4 / 5 + 2 * 1 / 2 + 1 * 2 / 3) / 6)


def test_confusion_matrix():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0]), 2)
    assert cm.tolist() == [[0, 1], [1, 1]]


def test_absent_class_is_not_averaged_and_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)  # class 4 of 5 never occurs
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    m = classification_metrics(y_true, y_pred, 5)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
