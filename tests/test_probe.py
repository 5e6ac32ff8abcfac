"""Linear probes: C chosen on validation, test scored once, per-modality behaviour."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmrelearn.data import build_data
from mmrelearn.models import build_model
from mmrelearn.probe import linear_probe, probe_features


def _parts(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.stack([np.where(y == 1, 1.0, -1.0) + 0.1 * rng.standard_normal(n),
                  rng.standard_normal(n)], axis=1)  # column 0 separates the classes
    return x, y


def test_separable_features_give_perfect_probe():
    out = probe_features(_parts(0), _parts(1), _parts(2))
    assert out["train_acc"] == out["val_acc"] == out["test_acc"] == 1.0
    assert out["C"] == 0.01  # ties go to the strongest regularisation


def test_c_is_chosen_on_validation_not_test():
    train, val, test = _parts(0), _parts(1), _parts(2)
    # validation labels flipped: every C scores 0 on val, so the first C is kept whatever test
    flipped = (val[0], 1 - val[1])
    out = probe_features(train, flipped, test, cs=(10.0, 0.01))
    assert out["C"] == 10.0 and out["val_acc"] == 0.0 and out["test_acc"] == 1.0


def test_linear_probe_separates_informative_from_uninformative_modality():
    torch.manual_seed(0)
    data = build_data("synthetic", num_samples=300, num_classes=3, dims=[6, 6],
                      separations=[6.0, 0.0], val_fraction=0.2, test_fraction=0.2, split_seed=0)
    model = build_model({"m0": {"type": "mlp", "hidden": [16]},
                         "m1": {"type": "mlp", "hidden": [16]}}, data.input_shapes, 3)
    loaders = {s: DataLoader(getattr(data, s), batch_size=64) for s in ("train", "val", "test")}
    model.train()
    out = linear_probe(model, loaders, torch.device("cpu"))
    assert model.training  # mode restored
    assert out["m0"]["test_acc"] > 0.9  # class means far apart: a random MLP keeps them apart
    assert out["m1"]["test_acc"] < 0.6  # no class information at all (chance is 1/3)
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        linear_probe(model, {"train": loaders["train"], "val": loaders["val"]},
                     torch.device("cpu"))
