"""The synthetic set: shapes, balance, determinism, and separation = informativeness."""
from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mmrelearn.data import build_data
from mmrelearn.data.synthetic import make_synthetic


def test_shapes_balance_and_seed():
    raw = make_synthetic(num_samples=90, num_classes=3, dims=[4, 7, 2],
                         separations=[1.0, 2.0, 3.0], seed=5)
    assert {m: tuple(x.shape) for m, x in raw.inputs.items()} == \
        {"m0": (90, 4), "m1": (90, 7), "m2": (90, 2)}
    assert torch.bincount(raw.labels).tolist() == [30, 30, 30] and raw.labels.dtype == torch.int64
    assert raw.num_classes == 3 and raw.class_names == ["0", "1", "2"]
    again = make_synthetic(num_samples=90, num_classes=3, dims=[4, 7, 2],
                           separations=[1.0, 2.0, 3.0], seed=5)
    assert torch.equal(raw.inputs["m1"], again.inputs["m1"])
    assert not torch.equal(raw.labels, make_synthetic(90, 3, [4, 7, 2], [1.0, 2.0, 3.0],
                                                      seed=6).labels)


def test_class_means_have_the_given_norm_without_noise():
    raw = make_synthetic(num_samples=40, num_classes=4, dims=[5, 3], separations=[2.5, 0.5],
                         noise_std=[0.0, 0.0])
    assert torch.allclose(raw.inputs["m0"].norm(dim=1), torch.full((40,), 2.5), atol=1e-5)
    assert torch.allclose(raw.inputs["m1"].norm(dim=1), torch.full((40,), 0.5), atol=1e-5)


def test_higher_separation_gives_higher_probe_accuracy():
    data = build_data("synthetic", num_samples=800, num_classes=4, dims=[8, 8],
                      separations=[4.0, 0.5], val_fraction=0.0, test_fraction=0.5,
                      split_seed=0, seed=0)
    acc = {}
    for m in data.modalities:
        probe = LogisticRegression(max_iter=500).fit(data.train.inputs[m].numpy(),
                                                     data.train.labels.numpy())
        acc[m] = probe.score(data.test.inputs[m].numpy(), data.test.labels.numpy())
    assert acc["m0"] > 0.9 and acc["m0"] > acc["m1"] + 0.3, acc


@pytest.mark.parametrize("key, kwargs", [
    ("separations", {"separations": [1.0]}),
    ("noise_std", {"noise_std": [1.0, 1.0, 1.0]}),
])
def test_list_length_mismatch_names_the_key(key, kwargs):
    with pytest.raises(ValueError, match=key):
        make_synthetic(dims=[3, 3], **kwargs)
