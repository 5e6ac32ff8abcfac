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


def _noisy_parts(seed: int, n: int = 40, d: int = 20):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.standard_normal((n, d))
    x[:, 0] += 0.8 * (2 * y - 1)  # one weakly informative column among 20
    return x, y


def test_c_is_the_validation_best_even_when_test_prefers_another():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, val, test = _noisy_parts(3), _noisy_parts(4), _noisy_parts(5)
    cs = (0.01, 0.1, 1.0, 10.0)
    scaler = StandardScaler().fit(train[0])
    fits = [LogisticRegression(C=c, max_iter=2000, random_state=0)
            .fit(scaler.transform(train[0]), train[1]) for c in cs]
    val_acc = [f.score(scaler.transform(val[0]), val[1]) for f in fits]
    test_acc = [f.score(scaler.transform(test[0]), test[1]) for f in fits]
    by_val, by_test = int(np.argmax(val_acc)), int(np.argmax(test_acc))
    assert test_acc[by_val] < test_acc[by_test]  # the data make a test leak visible
    out = probe_features(train, val, test, cs=cs)
    assert out["C"] == cs[by_val] and out["test_acc"] == test_acc[by_val]


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


def test_probe_run_caches_per_checkpoint_file(tiny_raw, tmp_path, monkeypatch):
    import os

    from mmrelearn import train as train_pkg
    from mmrelearn.config import config_from_dict
    from mmrelearn.probe import probe_run

    tiny_raw["train"]["epochs"] = 1
    train_pkg.train(config_from_dict(tiny_raw), run_dir=tmp_path / "run")
    first = probe_run(tmp_path / "run")
    assert set(first) == {"m0", "m1"}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached probe should have been used")

    monkeypatch.setattr(train_pkg, "build_trainer", no_rebuild)
    assert probe_run(tmp_path / "run") == first
    ckpt = tmp_path / "run/checkpoints/best.pt"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="cached probe"):  # a newer checkpoint file
        probe_run(tmp_path / "run")
