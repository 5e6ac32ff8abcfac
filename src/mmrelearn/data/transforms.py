"""Data degradations: additive white Gaussian noise at a chosen signal-to-noise ratio."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import MultimodalDataset
    from .lazy import LazyMultimodalDataset

__all__ = ["add_noise_snr", "apply_noise", "SampleNoise", "sample_generator", "NOISE_KEYS"]

#: keys of a ``noise`` mapping -> default (``None``: required).
NOISE_KEYS: dict[str, Any] = {"modality": None, "snr_db": None, "seed": 0}


def add_noise_snr(x: Tensor, snr_db: float, generator: torch.Generator) -> Tensor:
    """Add white Gaussian noise to each sample at signal-to-noise ratio ``snr_db``.

    Per sample i, P_s(i) = mean of x_i^2 over all non-batch dims and the noise std is
    sqrt(P_s(i) / 10^(snr_db / 10)), so 10 log10(P_s / P_n) = snr_db in expectation.

    Args:
        x: (N, ...) float samples.
        snr_db: the signal-to-noise ratio in decibels.
        generator: source of the N(0, 1) draws (same generator state -> same noise).

    Returns:
        A new tensor ``x + std * z``, z ~ N(0, I) of x's shape.
    """
    if x.dim() < 2:
        raise ValueError(f"add_noise_snr expects (N, ...) samples, got shape {tuple(x.shape)}")
    power = x.pow(2).flatten(1).mean(dim=1)  # (N,) signal power per sample
    std = torch.sqrt(power / 10.0 ** (snr_db / 10.0))  # (N,)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + std.view(-1, *([1] * (x.dim() - 1))) * z


def _noise_options(noise: Mapping[str, Any], modalities: list[str]) -> dict[str, Any]:
    unknown = sorted(set(noise) - set(NOISE_KEYS))
    if unknown:
        raise ValueError(f"noise: unknown key(s) {unknown}; valid keys: {sorted(NOISE_KEYS)}")
    opts = {k: noise.get(k, d) for k, d in NOISE_KEYS.items()}
    missing = sorted(k for k, v in opts.items() if v is None)
    if missing:
        raise ValueError(f"noise: missing key(s) {missing}; valid keys: {sorted(NOISE_KEYS)}")
    if opts["modality"] not in modalities:
        raise ValueError(f"noise.modality: {opts['modality']!r} is not one of {modalities}")
    if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int) or opts["seed"] < 0:
        raise ValueError(f"noise.seed: expected a non-negative int, got {opts['seed']!r}")
    snr = opts["snr_db"]
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr):
        raise ValueError(f"noise.snr_db: expected a finite number of decibels, got {snr!r}")
    return opts


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, index): the same draws for sample ``index`` everywhere."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class SampleNoise:
    """Per-sample transform: :func:`add_noise_snr` on one modality, seeded by sample index.

    Sample i of the whole dataset always gets the same noise, in every split, subset, DataLoader
    worker and method.
    """

    def __init__(self, modality: str, snr_db: float, seed: int) -> None:
        self.modality, self.snr_db, self.seed = modality, snr_db, seed

    def __call__(self, inputs: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        x = inputs[self.modality].float()
        noisy = add_noise_snr(x.unsqueeze(0), self.snr_db, sample_generator(self.seed, index))
        return {**inputs, self.modality: noisy[0]}


def apply_noise(whole: MultimodalDataset | LazyMultimodalDataset,
                noise: Mapping[str, Any]) -> MultimodalDataset | LazyMultimodalDataset:
    """Degrade ``noise['modality']`` of every sample of the WHOLE dataset (before splitting).

    Sample i gets :class:`SampleNoise`'s draw from ``sample_generator(seed, i)``, whether its
    tensors are held in memory or read from files, so the noise of a sample depends on
    nothing but (seed, i): not on its split, the other samples, or the method.

    Args:
        whole: the dataset before splitting.
        noise: ``{"modality": str, "snr_db": float, "seed": int (default 0)}``.
    """
    from .base import MultimodalDataset  # base imports this module

    opts = _noise_options(noise, whole.modalities)
    fn = SampleNoise(opts["modality"], float(opts["snr_db"]), opts["seed"])
    if not isinstance(whole, MultimodalDataset):  # read from files: noised at each access
        return whole.with_transform(fn)
    x = whole.inputs[opts["modality"]]
    noisy = torch.stack([fn({opts["modality"]: x[i]}, i)[opts["modality"]]
                         for i in range(len(x))])  # (N, ...)
    return MultimodalDataset({**whole.inputs, opts["modality"]: noisy}, whole.labels)
