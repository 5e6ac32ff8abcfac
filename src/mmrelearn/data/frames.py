"""Video frames: which frames to take, the resize-and-crop, and ImageNet normalisation.

Shared by the decoded-video datasets (CREMA-D, Kinetics-Sounds) and the extracted-frame one
(UCF-101), so every dataset samples and crops frames the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "segment_centres", "center_square",
           "imagenet_normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def segment_centres(num_frames: int, segments: int) -> list[int]:
    """0-based index of the centre frame of each of T = ``segments`` equal parts of n frames:
    floor((k + 1/2) * n / T), k = 0..T-1 (TSN's test-time sampling, Wang et al., ECCV 2016).

    Raises:
        ValueError: T < 1 or n < T.
    """
    if segments < 1 or num_frames < segments:
        raise ValueError(f"cannot pick {segments} of {num_frames} frames")
    return [(2 * k + 1) * num_frames // (2 * segments) for k in range(segments)]


def center_square(image: Any, size: int, mode: str = "RGB") -> np.ndarray:
    """A PIL image in ``mode`` with its shorter side resized to ``size`` (bilinear), centre
    square cropped: uint8 (size, size) for "L", (size, size, 3) for "RGB"."""
    from PIL import Image

    image = image.convert(mode)
    w, h = image.size
    if min(w, h) != size:
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.Resampling.BILINEAR)
        w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def imagenet_normalize(x: Tensor) -> Tensor:
    """(..., 3, H, W) floats in [0, 1] -> (x - mean) / std per RGB channel."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
