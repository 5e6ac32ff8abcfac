"""ImageNet initialisation of :class:`ResNet18Encoder` from a LOCAL torchvision-layout file.

Nothing is downloaded: the file is a ``torch.save``-d state dict of torchvision's
``resnet18`` (keys ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
``fc.*``), possibly wrapped as ``{"state_dict": ...}`` / ``{"model": ...}`` or with a
``module.`` prefix from DataParallel. The classifier ``fc.*`` is dropped. When the encoder's
input has other than 3 channels the first convolution is adapted:

- 1 channel (spectrograms, grey images): the RGB kernels are summed, so a grey image gives
  the response the RGB network gives to that image replicated on three channels;
- C != 1, 3 (optical flow u/v, stacked flow): the RGB kernels are averaged and the average is
  replicated on the C channels (the cross-modality initialisation of TSN, Wang et al. 2016).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import torch
from torch import Tensor, nn

__all__ = ["load_imagenet_resnet18", "adapt_first_conv", "read_state_dict"]

_WRAPPERS = ("state_dict", "model")
_PREFIXES = ("module.",)


def read_state_dict(path: Union[str, Path]) -> dict[str, Tensor]:
    """Load a state dict from ``path``, unwrapping ``{"state_dict"|"model": ...}`` and
    stripping a ``module.`` prefix.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: the file holds no mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} not found; expected a "
                                f"torch.save'd torchvision resnet18 state dict (nothing is "
                                f"downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of every kind
        raise ValueError(f"{path}: cannot be read as a torch state dict ({err})") from None
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    out = {}
    for name, value in obj.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    return out


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Map RGB first-conv kernels (out, 3, k, k) to ``in_channels`` input channels.

    1 channel: sum over RGB; 3: unchanged; otherwise the RGB mean replicated on every channel.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB kernels (out, 3, k, k), got {tuple(weight.shape)}")
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)


def load_imagenet_resnet18(encoder: nn.Module, path: Union[str, Path]) -> None:
    """Copy torchvision-layout ResNet-18 weights from ``path`` into ``encoder`` (in place).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: keys missing or unexpected (listed), or a shape that does not fit (e.g. a
            width other than 64, or the 3x3 ``small_input`` stem), naming the key.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match a torchvision resnet18: missing "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"({len(missing)}), unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    conv = state["conv1.weight"]
    if conv.dim() == 4 and conv.shape[1] == 3:
        state["conv1.weight"] = adapt_first_conv(conv, own["conv1.weight"].shape[1])
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the encoder "
                             f"needs {tuple(own[key].shape)} (ImageNet weights need width 64 "
                             f"and the standard 7x7 stem, small_input false)")
    encoder.load_state_dict(state)
