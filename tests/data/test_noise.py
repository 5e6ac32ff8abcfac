"""add_noise_snr: exact values with a seeded generator and the measured SNR."""
from __future__ import annotations

import math

import pytest
import torch

from mmrelearn.data import add_noise_snr


def test_exact_values_with_generator():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 3.0, -3.0]])
    # P_s = (1 + 4 + 9 + 16) / 4 = 7.5 and (9 + 9) / 4 = 4.5; at 10 dB P_n = P_s / 10
    std = torch.tensor([math.sqrt(0.75), math.sqrt(0.45)])
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(7))
    expected = x + std[:, None] * z
    out = add_noise_snr(x, 10.0, torch.Generator().manual_seed(7))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(x[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))  # input untouched


def test_per_sample_power_over_all_non_batch_dims():
    x = torch.ones(3, 1, 4, 5) * torch.tensor([1.0, 2.0, 0.0]).view(3, 1, 1, 1)
    z = torch.randn(3, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    out = add_noise_snr(x, 0.0, torch.Generator().manual_seed(0))  # 0 dB: std = sqrt(P_s)
    expected = x + torch.tensor([1.0, 2.0, 0.0]).view(3, 1, 1, 1) * z
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.0])
def test_measured_snr_on_a_large_sample(snr_db):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 200_000, generator=gen) * torch.tensor([[0.5], [1.0], [3.0], [10.0]])
    y = add_noise_snr(x, snr_db, gen)
    measured = 10 * torch.log10(x.pow(2).mean(1) / (y - x).pow(2).mean(1))  # (4,)
    assert torch.all((measured - snr_db).abs() < 0.1), measured


def test_rejects_unbatched_input():
    with pytest.raises(ValueError, match="N, ..."):
        add_noise_snr(torch.ones(5), 0.0, torch.Generator())
