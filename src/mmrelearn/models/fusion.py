"""Fusion modules: per-modality features ``{m: (B, d_m)}`` -> one fused vector ``(B, out_dim)``.

Both keep the modalities in the order of the ``dims`` mapping they are built with.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

__all__ = ["ConcatFusion", "SumFusion", "FUSIONS"]


def _check_dims(dims: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(dims, Mapping) or not dims:
        raise ValueError(f"dims must be a non-empty mapping modality -> feature size, got {dims!r}")
    bad = {m: d for m, d in dims.items() if isinstance(d, bool) or not isinstance(d, int) or d < 1}
    if bad:
        raise ValueError(f"dims: feature sizes must be positive ints, got {bad}")
    return dict(dims)


def _pick(features: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> list[torch.Tensor]:
    missing = [m for m in dims if m not in features]
    if missing:
        raise ValueError(f"fusion: missing features for modality {missing}; "
                         f"got {sorted(features)}")
    return [features[m] for m in dims]


class ConcatFusion(nn.Module):
    """Concatenation ``[z_1; ...; z_M]`` of the modalities' features (no parameters).

    Attributes:
        out_dim: ``sum(dims.values())``.
        slices: modality -> ``(start, end)`` columns of its block in the fused vector; a linear
            head's weight ``W[:, start:end]`` is that modality's share of the logits.
    """

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.dims = _check_dims(dims)
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for m, d in self.dims.items():
            self.slices[m] = (start, start + d)
            start += d
        self.out_dim: int = start

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{m: (B, d_m)}`` -> ``(B, sum_m d_m)`` in the order of ``dims``."""
        return torch.cat(_pick(features, self.dims), dim=1)


class SumFusion(nn.Module):
    """Sum of per-modality linear projections ``sum_m (W_m z_m + b_m)``.

    Args:
        dims: modality -> feature size ``d_m``.
        dim: size of the common space; defaults to ``max(d_m)``.
    """

    def __init__(self, dims: Mapping[str, int], dim: Optional[int] = None) -> None:
        super().__init__()
        self.dims = _check_dims(dims)
        if dim is None:
            dim = max(self.dims.values())
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.dims.items()})
        self.out_dim: int = dim

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{m: (B, d_m)}`` -> ``(B, dim)``."""
        zs = _pick(features, self.dims)
        out = self.proj[next(iter(self.dims))](zs[0])
        for m, z in zip(list(self.dims)[1:], zs[1:]):
            out = out + self.proj[m](z)
        return out


FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "sum": SumFusion}
