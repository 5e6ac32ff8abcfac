"""A ViT-style stream for one image or spectrogram (Dosovitskiy et al., ICLR 2021), the
per-modality stream of MBT (:mod:`mmrelearn.models.mbt`); on its own, a uni-modal encoder.

Steps: a Conv2d patch embedding (kernel = stride = patch size) of a ``(C, H, W)`` image or an
``(H, W)`` spectrogram (one channel), a CLS token in front, learned positional embeddings,
``layers`` pre-norm Transformer blocks, a final LayerNorm, then the CLS output (``pool: cls``)
or the mean of the patch-token outputs (``pool: mean``) as the feature of size ``width``.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm``)
so that ImageNet weights load (:mod:`mmrelearn.models.vit_pretrained`). LayerNorm eps is 1e-6
and the MLP uses exact GELU, as in timm's and torchvision's ViT-B/16.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import check_shape

__all__ = ["ViTEncoder", "ViTBlock", "VIT_PRESETS"]

log = logging.getLogger(__name__)

POOLS = ("cls", "mean")
INTERPOLATIONS = ("bicubic", "bilinear")

#: options used when neither the config nor a preset sets them.
_DEFAULTS: dict[str, Any] = {"width": 64, "layers": 4, "heads": 4, "mlp_ratio": 4.0,
                             "patch_size": 16, "dropout": 0.0, "attention_dropout": 0.0,
                             "pool": "cls"}

#: ``vit_base``: ViT-B/16, the streams of MBT's ViT-Base setting (Nagrani et al. 2021).
VIT_PRESETS: dict[str, dict[str, Any]] = {
    "vit_base": {"width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4.0, "patch_size": 16},
}


def _pair(key: str, value: Any) -> tuple[int, int]:
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)):
        raise ValueError(f"{key} must be a positive int or a pair [h, w] of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _resolve(preset: Optional[str], given: dict[str, Any]) -> dict[str, Any]:
    """Explicit options over the preset's over the defaults; check every one."""
    if preset is not None and preset not in VIT_PRESETS:
        raise ValueError(f"unknown vit preset {preset!r}; valid presets: {sorted(VIT_PRESETS)}")
    o = {**_DEFAULTS, **VIT_PRESETS.get(preset, {})}
    o.update({k: v for k, v in given.items() if v is not None})
    for key in ("width", "layers", "heads"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive int, got {v!r}")
    if o["width"] % o["heads"]:
        raise ValueError(f"width {o['width']} must be divisible by heads {o['heads']}")
    r = o["mlp_ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or int(r * o["width"]) < 1:
        raise ValueError(f"mlp_ratio must be a positive number, got {r!r}")
    for key in ("dropout", "attention_dropout"):
        d = o[key]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"{key} must be a float in [0, 1), got {d!r}")
    if o["pool"] not in POOLS:
        raise ValueError(f"pool must be one of {list(POOLS)}, got {o['pool']!r}")
    o["patch_size"] = _pair("patch_size", o["patch_size"])
    return o


class _Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (rows: q, k, v)."""

    def __init__(self, width: int, heads: int, attention_dropout: float, dropout: float) -> None:
        super().__init__()
        self.heads, self.attention_dropout = heads, attention_dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=p)  # (B, h, N, d)
        return self.drop(self.proj(h.transpose(1, 2).reshape(b, n, w)))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float,
                 attention_dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _Attention(width, heads, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _MLP(width, int(width * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, width)`` -> ``(B, N, width)``; every token attends to every token."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, gh * gw, width)


class ViTEncoder(nn.Module):
    """Patch embedding, CLS token, positions, Transformer blocks, final norm, pooling.

    Options left at ``None`` come from ``preset`` if given, else from the defaults shown.

    Args:
        input_shape: ``(H, W)`` (a spectrogram: one channel) or ``(C, H, W)`` (an image).
        width: token width and feature size ``out_dim`` (default 64).
        layers: number of Transformer blocks (default 4).
        heads: attention heads; must divide width (default 4).
        mlp_ratio: MLP hidden size / width (default 4).
        patch_size: int or ``[h, w]`` (default 16). The token grid is ``(H // h, W // w)``;
            rows/columns left over at the bottom/right are not seen (logged).
        dropout: dropout after the positional embedding, in the MLP and after attention.
        attention_dropout: dropout on the attention weights (default 0).
        pool: ``cls`` (the CLS output, default) or ``mean`` (mean of the patch-token outputs).
        pretrained: a LOCAL ViT state-dict file in timm's or torchvision's layout (see
            :func:`mmrelearn.models.vit_pretrained.load_imagenet_vit`); nothing is downloaded.
        pos_interpolation: ``bicubic`` (default) or ``bilinear`` resizing of the pretrained
            positional grid to this stream's grid; only with ``pretrained``.
        preset: a key of :data:`VIT_PRESETS` (``vit_base``: ViT-B/16).
    """

    def __init__(self, input_shape: tuple[int, ...], width: Optional[int] = None,
                 layers: Optional[int] = None, heads: Optional[int] = None,
                 mlp_ratio: Optional[float] = None,
                 patch_size: Union[int, Sequence[int], None] = None,
                 dropout: Optional[float] = None, attention_dropout: Optional[float] = None,
                 pool: Optional[str] = None, pretrained: Optional[str] = None,
                 pos_interpolation: Optional[str] = None, preset: Optional[str] = None) -> None:
        super().__init__()
        shape = check_shape(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"input_shape must be (H, W) (a spectrogram) or (C, H, W) (an image), "
                             f"got {input_shape!r}; clips of frames are not supported")
        o = _resolve(preset, dict(width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio,
                                  patch_size=patch_size, dropout=dropout,
                                  attention_dropout=attention_dropout, pool=pool))
        self.input_shape, self.options = shape, o
        (h, w), (ph, pw) = shape[-2:], o["patch_size"]
        self.grid = (h // ph, w // pw)
        if min(self.grid) < 1:
            raise ValueError(f"patch_size {[ph, pw]} is larger than the input {[h, w]}")
        if h % ph or w % pw:
            log.warning("vit: input %s is not a multiple of patch %s; the last %d rows and %d "
                        "columns are not seen", [h, w], [ph, pw], h % ph, w % pw)
        self.channels = 1 if len(shape) == 2 else shape[0]
        wd = o["width"]
        self.patch_embed = _PatchEmbed(self.channels, wd, (ph, pw))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, wd))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], wd))
        self.pos_drop = nn.Dropout(o["dropout"])
        self.blocks = nn.ModuleList([ViTBlock(wd, o["heads"], o["mlp_ratio"], o["dropout"],
                                              o["attention_dropout"]) for _ in range(o["layers"])])
        self.norm = nn.LayerNorm(wd, eps=1e-6)
        self.out_dim: int = wd
        self._init_weights()
        if pos_interpolation is not None and pretrained is None:
            raise ValueError("pos_interpolation is only used with pretrained weights")
        if pretrained is not None:
            from .vit_pretrained import load_imagenet_vit

            if not isinstance(pretrained, (str, Path)):
                raise ValueError(f"pretrained must be a file path, got {pretrained!r}")
            load_imagenet_vit(self, pretrained, pos_interpolation or "bicubic")

    def _init_weights(self) -> None:
        # timm's ViT initialisation: truncated normal (std 0.02) for linear layers and
        # positions, zero biases, LayerNorm as identity; patch embedding as a Linear
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_tokens(self) -> int:
        """Tokens of one sample: CLS plus the patch grid."""
        return self.pos_embed.shape[1]

    def embed(self, x: Tensor) -> Tensor:
        """``(B, *input_shape)`` -> tokens ``(B, 1 + gh * gw, width)``: CLS + patches + positions."""
        if x.dim() == len(self.input_shape) + 1 and x.dim() == 3:
            x = x.unsqueeze(1)  # a spectrogram (B, H, W) -> (B, 1, H, W)
        ph, pw = self.options["patch_size"]
        if (x.dim() != 4 or x.shape[1] != self.channels
                or (x.shape[2] // ph, x.shape[3] // pw) != self.grid):
            raise ValueError(f"ViTEncoder expects input (B, {', '.join(map(str, self.input_shape))})"
                             f" (token grid {list(self.grid)}), got {tuple(x.shape)}")
        t = self.patch_embed(x)  # (B, N, W)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        return self.pos_drop(t + self.pos_embed)

    def pool_tokens(self, tokens: Tensor) -> Tensor:
        """Final norm and pooling of this stream's tokens ``(B, 1 + N, W)`` -> ``(B, W)``."""
        h = self.norm(tokens)
        return h[:, 0] if self.options["pool"] == "cls" else h[:, 1:].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """The stream alone (no other modality, no bottleneck): ``(B, *input_shape)`` -> ``(B, W)``."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.pool_tokens(h)
