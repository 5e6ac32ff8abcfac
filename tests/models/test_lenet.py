"""The LeNet-style encoder: layer shapes, feature size, input checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrelearn.models import LeNetEncoder, build_model


def test_feature_size_and_layers():
    enc = LeNetEncoder((1, 28, 28), channels=6, layers=3)
    assert enc.out_dim == 48
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    # one 5x5 convolution with 6 maps, then three 3x3 ones doubling them: 6 -> 12 -> 24 -> 48
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 6, (5, 5)), (6, 12, (3, 3)), (12, 24, (3, 3)), (24, 48, (3, 3))]
    assert sum(isinstance(m, nn.MaxPool2d) for m in enc.modules()) == 3
    assert enc(torch.randn(5, 1, 28, 28)).shape == (5, 48)


def test_spectrogram_input_and_dropout():
    enc = LeNetEncoder((40, 63), channels=4, layers=2, dropout=0.5)
    assert enc(torch.randn(3, 40, 63)).shape == (3, 16)
    enc.eval()
    x = torch.randn(2, 40, 63)
    assert torch.equal(enc(x), enc(x))  # no dropout in eval mode


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match="layers=6 halves the input"):
        LeNetEncoder((28, 28), layers=6)
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        LeNetEncoder((28, 28), channels=0)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 28, 28\)"):
        LeNetEncoder((1, 28, 28))(torch.randn(2, 3, 28, 28))


def test_built_from_a_spec():
    model = build_model({"audio": {"type": "lenet", "layers": 2}, "image": {"type": "lenet"}},
                        {"audio": (40, 63), "image": (1, 28, 28)}, num_classes=10)
    out = model({"audio": torch.randn(2, 40, 63), "image": torch.randn(2, 1, 28, 28)})
    assert out.logits.shape == (2, 10)
    assert {m: z.shape[1] for m, z in out.features.items()} == {"audio": 24, "image": 48}
