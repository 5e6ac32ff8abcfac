"""Shared fixtures: a tiny synthetic configuration that trains in about a second."""
from __future__ import annotations

import copy

import pytest

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "num_samples": 240, "num_classes": 3, "dims": [6, 6],
             "separations": [3.0, 1.0], "val_fraction": 0.25, "test_fraction": 0.25,
             "split_seed": 0},
    "model": {"encoders": {"m0": {"type": "mlp", "hidden": [16]},
                           "m1": {"type": "mlp", "hidden": [16], "dropout": 0.1}}},
    "method": {"name": "dnr", "lam": 3.0, "every": 2},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 5, "batch_size": 32, "progress": False, "monitor_purity": True},
}


@pytest.fixture
def tiny_raw():
    """A fresh copy of the tiny raw config mapping (tests may edit it)."""
    return copy.deepcopy(TINY)
