"""ResNet-18 (He et al., CVPR 2016) as a feature encoder for spectrograms, images and video.

Module names follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ...) so torchvision-layout state dicts can be loaded; there is no
``fc``. Video clips ``(B, T, C, H, W)`` go through the 2-D network frame by frame and the
pooled frame features are averaged over T, as in the audio-visual setups of OGM-GE and D&R.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .mlp import check_shape
from .pretrained import load_imagenet_resnet18

__all__ = ["BasicBlock", "ResNet18Encoder"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's ``BasicBlock``)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            # 1x1 projection so the shortcut matches the block's output shape
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` -> ``(N, planes, H/stride, W/stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Encoder(nn.Module):
    """ResNet-18 trunk with global average pooling; features of size ``8 * width``.

    Args:
        input_shape: ``(H, W)`` for one-channel inputs such as spectrograms, ``(C, H, W)`` for
            images, or ``(T, C, H, W)`` for clips of T frames (features averaged over frames).
        width: channels of the first stage; stages have ``width, 2w, 4w, 8w`` channels
            (64 gives the standard ResNet-18).
        small_input: use a 3x3 stride-1 stem without max-pooling, for tiny inputs
            (e.g. 16x15 digit images) that the standard 4x-downsampling stem would erase.
        pretrained: path of a local torchvision-layout ImageNet ResNet-18 state dict to start
            from (first convolution adapted to 1 or C channels; see
            :func:`mmrelearn.models.pretrained.load_imagenet_resnet18`). Needs width 64 and
            the standard stem.
    """

    def __init__(self, input_shape: tuple[int, ...], width: int = 64,
                 small_input: bool = False, pretrained: Optional[str] = None) -> None:
        super().__init__()
        shape = check_shape(input_shape)
        if len(shape) not in (2, 3, 4):
            raise ValueError(f"input_shape must be (H, W), (C, H, W) or (T, C, H, W), "
                             f"got {input_shape!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if not isinstance(small_input, bool):
            raise ValueError(f"small_input must be a bool, got {small_input!r}")
        self.input_shape = shape
        in_channels = 1 if len(shape) == 2 else shape[-3]
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(width, width, stride=1)
        self.layer2 = self._stage(width, 2 * width, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, stride=2)
        self.layer4 = self._stage(4 * width, 8 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim: int = 8 * width
        self._init_weights()
        if pretrained is not None:
            if not isinstance(pretrained, (str, Path)):
                raise ValueError(f"pretrained must be a file path, got {pretrained!r}")
            load_imagenet_resnet18(self, pretrained)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))

    def _init_weights(self) -> None:
        # torchvision's initialisation: He-normal convs (fan_out), BatchNorm as identity
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The 2-D network on ``(N, C, H, W)`` -> pooled features ``(N, 8 * width)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, *input_shape)`` to features ``(B, out_dim)``."""
        # spatial sizes (and T) may differ from input_shape: pooling makes them free
        ok = x.dim() == len(self.input_shape) + 1
        if ok and x.dim() > 3:
            ok = x.shape[-3] == self.input_shape[-3]  # channel count fixed by conv1
        if not ok:
            raise ValueError(f"ResNet18Encoder expects input (B, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if x.dim() == 3:
            return self.forward_frames(x.unsqueeze(1))  # (B, H, W) -> (B, 1, H, W)
        if x.dim() == 4:
            return self.forward_frames(x)
        b, t = x.shape[:2]
        feats = self.forward_frames(x.flatten(0, 1))  # (B*T, C, H, W) -> (B*T, D)
        return feats.view(b, t, -1).mean(dim=1)  # frame pooling: (B, T, D) -> (B, D)
