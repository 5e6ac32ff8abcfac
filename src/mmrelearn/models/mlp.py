"""A fully connected encoder for vector (or any fixed-shape) inputs."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["MLPEncoder"]


def check_shape(input_shape: Sequence[int], name: str = "input_shape") -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints or raise a ValueError naming it."""
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, "
                         f"got {input_shape!r}")
    return shape


class MLPEncoder(nn.Module):
    """Flatten, then ``Linear -> BatchNorm1d -> ReLU -> Dropout`` once per hidden width.

    Args:
        input_shape: shape of one sample without the batch dimension; it is flattened.
        hidden: widths of the hidden layers (a tuple or list); the last one is the feature
            size ``out_dim``.
        dropout: dropout probability after each ReLU (0 disables it), in ``[0, 1)``.
        batchnorm: whether to put a ``BatchNorm1d`` after each linear layer.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.0,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.input_shape = check_shape(input_shape)
        widths = list(hidden) if isinstance(hidden, (list, tuple)) else None
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                             for w in widths):
            raise ValueError(f"hidden must be a non-empty list of positive ints, got {hidden!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if not isinstance(batchnorm, bool):
            raise ValueError(f"batchnorm must be a bool, got {batchnorm!r}")
        layers: list[nn.Module] = []
        d_in = math.prod(self.input_shape)
        for width in widths:
            layers.append(nn.Linear(d_in, width))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d_in = width
        self.net = nn.Sequential(*layers)
        self.out_dim: int = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, *input_shape)`` to features ``(B, out_dim)``."""
        if tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ValueError(f"MLPEncoder expects input (B, {want}), got {tuple(x.shape)}")
        return self.net(x.flatten(1))  # (B, prod(input_shape)) -> (B, out_dim)
