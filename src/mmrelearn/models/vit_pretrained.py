"""ImageNet initialisation of :class:`~mmrelearn.models.vit.ViTEncoder` from a LOCAL file.

Nothing is downloaded. The file is a ``torch.save``-d state dict of a ViT (ViT-B/16 for the
``vit_base`` preset), possibly wrapped as ``{"state_dict" | "model": ...}`` or with a
``module.`` prefix, in one of two layouts:

- timm (``VisionTransformer``): ``patch_embed.proj.{weight,bias}``, ``cls_token``,
  ``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*``,
  ``norm.*``; the classifier ``head.*`` (and an older model's ``pre_logits.*``) is dropped.
- torchvision (``vit_b_16``): ``conv_proj.*``, ``class_token``, ``encoder.pos_embedding``,
  ``encoder.layers.encoder_layer_N.{ln_1, self_attention.in_proj_weight / in_proj_bias,
  self_attention.out_proj, ln_2, mlp.0, mlp.3}.*`` (``mlp.linear_1`` / ``mlp.linear_2`` in
  files saved before torchvision 0.14), ``encoder.ln.*``; the classifier ``heads.*`` is dropped.
  ``in_proj_weight`` stacks the q, k and v projections by rows, as timm's ``qkv`` does.

Adaptations to the stream: the positional grid (square in the file, CLS entry first) is resized
to the stream's token grid by bicubic or bilinear interpolation, the CLS entry kept as it is;
the RGB patch-embedding kernels are summed for a one-channel spectrogram (see
:func:`~mmrelearn.models.pretrained.adapt_first_conv`). Everything else must match exactly.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pretrained import adapt_first_conv, read_state_dict

__all__ = ["load_imagenet_vit", "vit_state_from_file", "resize_pos_embed", "from_torchvision"]

_TV_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
_TV_PARTS = {"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
             "self_attention.in_proj_weight": "attn.qkv.weight",
             "self_attention.in_proj_bias": "attn.qkv.bias",
             "self_attention.out_proj.weight": "attn.proj.weight",
             "self_attention.out_proj.bias": "attn.proj.bias",
             "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
             "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
             "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
             "mlp.linear_1.weight": "mlp.fc1.weight", "mlp.linear_1.bias": "mlp.fc1.bias",
             "mlp.linear_2.weight": "mlp.fc2.weight", "mlp.linear_2.bias": "mlp.fc2.bias"}
_TV_TOP = {"class_token": "cls_token", "conv_proj.weight": "patch_embed.proj.weight",
           "conv_proj.bias": "patch_embed.proj.bias", "encoder.pos_embedding": "pos_embed",
           "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias"}


def _listed(keys: list[str]) -> str:
    return f"{keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)})"


def from_torchvision(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision keys -> timm keys; returns the renamed dict and the keys it does not know."""
    out, unknown = {}, []
    for key, value in state.items():
        block = _TV_BLOCK.fullmatch(key)
        if key in _TV_TOP:
            out[_TV_TOP[key]] = value
        elif block and block.group(2) in _TV_PARTS:
            out[f"blocks.{block.group(1)}.{_TV_PARTS[block.group(2)]}"] = value
        else:
            unknown.append(key)
    return out, unknown


def vit_state_from_file(path: Union[str, Path]) -> tuple[str, dict[str, Tensor]]:
    """Read ``path`` and return ``(layout, state)``: ``"timm"`` or ``"torchvision"``, and the
    weights under timm's key names without the classifier.

    Raises:
        FileNotFoundError: naming the path.
        ValueError: a file in neither layout, or keys the layout does not have (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained ViT weights file {path} not found; expected a "
                                f"torch.save'd timm or torchvision ViT state dict (nothing is "
                                f"downloaded)")
    state = read_state_dict(path)
    if "cls_token" in state or "patch_embed.proj.weight" in state:
        layout = "timm"
        state = {k: v for k, v in state.items()
                 if not k.startswith(("head.", "pre_logits."))}
        unknown = sorted(k for k in state if not (k in ("cls_token", "pos_embed")
                                                  or k.startswith(("patch_embed.proj.", "norm.",
                                                                   "blocks."))))
    elif "class_token" in state or "conv_proj.weight" in state:
        layout = "torchvision"
        state, unknown = from_torchvision({k: v for k, v in state.items()
                                           if not k.startswith("heads.")})
    else:
        raise ValueError(f"{path}: neither a timm ViT (cls_token, patch_embed.proj.weight, ...) "
                         f"nor a torchvision ViT (class_token, conv_proj.weight, ...); its keys "
                         f"start {_listed(sorted(state))}")
    if unknown:
        raise ValueError(f"{path}: keys unknown to the {layout} ViT layout: "
                         f"{_listed(sorted(unknown))}")
    return layout, state


def resize_pos_embed(pos: Tensor, grid: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """``(1, 1 + g*g, W)`` (CLS first, a square g x g grid) -> ``(1, 1 + gh*gw, W)``.

    The CLS entry is kept; the grid is resized by ``F.interpolate`` (``align_corners=False``).
    """
    n = pos.shape[1] - 1
    g = math.isqrt(n)
    if pos.dim() != 3 or pos.shape[0] != 1 or g * g != n:
        raise ValueError(f"the pretrained positional embedding {tuple(pos.shape)} is not "
                         f"(1, 1 + g*g, width): a CLS entry and a square grid")
    if (g, g) == tuple(grid):
        return pos
    patches = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
    patches = F.interpolate(patches.float(), size=tuple(grid), mode=mode, align_corners=False)
    patches = patches.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos[:, :1], patches], dim=1)


def load_imagenet_vit(encoder: nn.Module, path: Union[str, Path], mode: str = "bicubic") -> None:
    """Copy a timm- or torchvision-layout ViT from ``path`` into ``encoder`` (in place).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: keys missing or unexpected (listed; a different number of blocks is
            named as such), or a shape that does not fit, naming the key and both shapes.
    """
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"pos_interpolation must be 'bicubic' or 'bilinear', got {mode!r}")
    layout, state = vit_state_from_file(path)
    own = encoder.state_dict()
    n_file = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if n_file != len(encoder.blocks):
        raise ValueError(f"{path}: the {layout} file has {n_file} blocks, the stream has "
                         f"{len(encoder.blocks)} (set layers: {n_file})")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match the stream ({layout} layout): missing "
                         f"{_listed(missing)}, unexpected {_listed(unexpected)}")
    conv = state["patch_embed.proj.weight"]
    if conv.dim() == 4 and conv.shape[1] == 3:  # RGB kernels -> the stream's channels
        state["patch_embed.proj.weight"] = adapt_first_conv(conv, encoder.channels)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], encoder.grid, mode)
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)} in the {layout} "
                             f"file, the stream needs {tuple(own[key].shape)} (width, "
                             f"mlp_ratio and patch_size must match the file's; ViT-B/16: "
                             f"preset vit_base)")
    encoder.load_state_dict(state)
