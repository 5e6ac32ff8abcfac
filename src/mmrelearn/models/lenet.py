"""Small LeNet-style CNN encoder, as used for AV-MNIST (CentralNet; MultiBench's ``LeNet``).

A 5x5 convolution with ``channels`` maps, then ``layers`` blocks of (2x2 max-pool, 3x3
convolution doubling the maps), each convolution followed by BatchNorm and ReLU, and global
average pooling: features of size ``channels * 2**layers``. MultiBench's AV-MNIST setting is
``channels=6`` with 3 blocks on the 28x28 image (48-d) and 5 on the 112x112 spectrogram.
"""
from __future__ import annotations

import torch
from torch import nn

from .mlp import check_shape

__all__ = ["LeNetEncoder"]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class LeNetEncoder(nn.Module):
    """LeNet-style CNN with global average pooling; features of size ``channels * 2**layers``.

    Args:
        input_shape: ``(H, W)`` (one channel, e.g. a spectrogram) or ``(C, H, W)``.
        channels: maps of the first convolution (MultiBench: 6).
        layers: number of (max-pool, 3x3 conv) blocks after it; each halves the spatial size,
            so ``2**layers`` may not exceed the smaller input side.
        dropout: dropout probability on the pooled features (0 disables it).
    """

    def __init__(self, input_shape: tuple[int, ...], channels: int = 6, layers: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        shape = check_shape(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"input_shape must be (H, W) or (C, H, W), got {input_shape!r}")
        for key, value, low in (("channels", channels, 1), ("layers", layers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        if 2 ** layers > min(shape[-2:]):
            raise ValueError(f"layers={layers} halves the input {shape[-2:]} below 1x1; "
                             f"use at most {min(shape[-2:]).bit_length() - 1}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.input_shape = shape
        in_channels = 1 if len(shape) == 2 else shape[0]
        mods = _conv_bn_relu(in_channels, channels, 5)
        for i in range(layers):
            mods += [nn.MaxPool2d(2), *_conv_bn_relu(channels * 2 ** i, channels * 2 ** (i + 1), 3)]
        self.features = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim: int = channels * 2 ** layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, *input_shape)`` to features ``(B, out_dim)``."""
        if x.dim() != len(self.input_shape) + 1 or (
                x.dim() == 4 and x.shape[1] != self.input_shape[0]):
            raise ValueError(f"LeNetEncoder expects input (B, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        return self.dropout(self.pool(self.features(x)).flatten(1))
