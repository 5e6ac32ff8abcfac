"""A controllable synthetic multimodal set: Gaussian classes, one separation per modality.

Modality k places the class means at distance ``separations[k]`` from the origin (random
directions), so a higher separation makes a more informative modality; this lets tests and
benchmarks build a dominant and a weak modality on purpose.
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import RawData, register_dataset

__all__ = ["make_synthetic"]


def _check(num_samples: int, num_classes: int, dims: list[int], separations: list[float],
           noise_std: list[float]) -> None:
    if num_classes < 2 or num_samples < num_classes:
        raise ValueError(f"synthetic: need num_classes >= 2 and num_samples >= num_classes, "
                         f"got num_classes={num_classes}, num_samples={num_samples}")
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"synthetic.dims: expected positive sizes, got {dims}")
    for key, values in (("separations", separations), ("noise_std", noise_std)):
        if len(values) != len(dims):
            raise ValueError(f"synthetic.{key}: {len(values)} values for {len(dims)} modalities "
                             f"(dims={dims}); give one per modality")
    for key, values in (("separations", separations), ("noise_std", noise_std)):
        if any(not s >= 0 for s in values):  # a distance and a standard deviation; no NaN
            raise ValueError(f"synthetic.{key}: expected non-negative values, got {values}")


@register_dataset("synthetic")
def make_synthetic(num_samples: int = 600, num_classes: int = 4, dims: list[int] = (16, 16),
                   separations: list[float] = (3.0, 1.0), noise_std: Optional[list[float]] = None,
                   seed: int = 0, modalities: Optional[list[str]] = None) -> RawData:
    """Gaussian class clusters seen through K modalities "m0", "m1", ...

    Labels are balanced (i mod C, then shuffled). For modality k the C class means are drawn
    N(0, I) in ``dims[k]`` dimensions, normalised to unit norm and scaled by
    ``separations[k]``; a sample is ``mean[label] + noise_std[k] * N(0, I)``.

    Args:
        num_samples: N.
        num_classes: C.
        dims: feature size of each modality (K = len(dims)).
        separations: distance of the class means from the origin, per modality.
        noise_std: within-class standard deviation per modality (default 1.0 each).
        seed: seed of the labels, means and noise.
        modalities: keep only these of "m0", "m1", ... (in this order); the data of a kept
            modality do not depend on this choice. Default: all.

    Returns:
        :class:`RawData` with inputs ``m<k>`` float32 (N, dims[k]) and labels int64 (N,).
    """
    dims, separations = list(dims), [float(s) for s in separations]
    noise_std = [1.0] * len(dims) if noise_std is None else [float(s) for s in noise_std]
    _check(num_samples, num_classes, dims, separations, noise_std)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes  # (N,) balanced
    labels = labels[torch.randperm(num_samples, generator=gen)]
    inputs = {}
    for k, (d, sep, std) in enumerate(zip(dims, separations, noise_std)):
        means = torch.randn(num_classes, d, generator=gen)  # (C, d)
        means = means / means.norm(dim=1, keepdim=True).clamp_min(1e-12) * sep
        noise = torch.randn(num_samples, d, generator=gen)  # (N, d)
        inputs[f"m{k}"] = means[labels] + std * noise
    if modalities is not None:
        unknown = [m for m in modalities if m not in inputs]
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"synthetic.modalities {modalities!r}: expected distinct names "
                             f"among {list(inputs)}")
        inputs = {m: inputs[m] for m in modalities}
    names = [str(c) for c in range(num_classes)]
    return RawData(inputs, labels, num_classes, names)
