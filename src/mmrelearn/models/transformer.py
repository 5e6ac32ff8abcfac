"""A Transformer encoder for sequences of per-step features ``(T, F)`` (e.g. MOSI's audio,
vision and word vectors), trained from scratch.

Steps: a per-step projection ``F -> width`` (``linear``, or ``conv1``: a kernel-1 Conv1d, the
same linear map written as a convolution, as in MultiBench), a positional encoding, ``layers``
post-norm ``nn.TransformerEncoderLayer``s, then one pooled vector of size ``width``.

Padding rule (``padding: trailing_zeros``, the default): the all-zero time steps at the END of
a sequence are padding. A sample's valid length is 1 + the index of its last step holding any
non-zero value; all-zero steps before that step are valid. Padding is masked out of attention
(``src_key_padding_mask``) and out of pooling, so appending all-zero steps leaves the features
unchanged. A sample with no valid step (all zeros, e.g. an input zeroed by AGM) gets the zero
feature vector, never NaN. ``padding: none`` treats every step as valid.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .mlp import check_shape

__all__ = ["TransformerEncoder", "TRANSFORMER_PRESETS", "sinusoidal_encoding",
           "valid_lengths"]

PROJECTIONS = ("linear", "conv1")
POSITIONALS = ("sinusoidal", "learned", "none")
POOLS = ("last", "mean", "cls")
PADDINGS = ("trailing_zeros", "none")

#: options used when neither the config nor a preset sets them.
_DEFAULTS: dict[str, Any] = {"width": 64, "layers": 2, "heads": 4, "ff": None, "dropout": 0.1,
                             "projection": "linear", "bias": True, "positional": "sinusoidal",
                             "pool": "mean", "padding": "trailing_zeros"}

#: named settings; ``width_factor`` sets ``width = width_factor * F`` when width is not given.
#: ``multibench_mosi``: MultiBench's late-fusion Transformer for MOSI/MOSEI
#: (``unimodals/common_models.Transformer`` as built in ``examples/affect/affect_lf_transformer``:
#: bias-free kernel-1 Conv1d to 2F (20 -> 40, 5 -> 10, 300 -> 600), no positional encoding,
#: 5 layers of ``nn.TransformerEncoderLayer(d_model, nhead=5)`` with PyTorch's defaults
#: (feed-forward 2048, dropout 0.1, ReLU, post-norm), the output at the last step).
TRANSFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "multibench_mosi": {"width_factor": 2, "layers": 5, "heads": 5, "ff": 2048, "dropout": 0.1,
                        "projection": "conv1", "bias": False, "positional": "none",
                        "pool": "last"},
}


def sinusoidal_encoding(steps: int, width: int, device: Optional[torch.device] = None
                        ) -> Tensor:
    """Vaswani et al. (2017) Sec. 3.5: PE[t, 2i] = sin(t / 10000^(2i/w)), PE[t, 2i+1] = cos(.).

    Returns:
        float32 ``(steps, width)``; an odd width drops the last cosine column.
    """
    pos = torch.arange(steps, dtype=torch.float32, device=device).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device=device)
                     * (-math.log(10000.0) / width))  # (ceil(w/2),)
    pe = torch.zeros(steps, width + width % 2, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe[:, :width]


def valid_lengths(x: Tensor) -> Tensor:
    """Valid steps of each sequence of ``x`` (B, T >= 1, F) under the trailing-zeros rule.

    Returns:
        int64 (B,): 1 + the index of the last step with a non-zero value, 0 for all zeros.
    """
    nonzero = (x != 0).any(dim=-1)  # (B, T); NaN counts as non-zero
    steps = torch.arange(1, x.shape[1] + 1, device=x.device)  # (T,) 1..T
    return (nonzero * steps).amax(dim=1)


def _choice(key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ValueError(f"{key} must be one of {list(valid)}, got {value!r}")


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive int, got {value!r}")


def _resolve(features: int, preset: Optional[str], given: dict[str, Any]) -> dict[str, Any]:
    """Explicit options over the preset's over the defaults; check every one."""
    if preset is not None and preset not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; valid presets: "
                         f"{sorted(TRANSFORMER_PRESETS)}")
    opts = {**_DEFAULTS, **TRANSFORMER_PRESETS.get(preset, {})}
    factor = opts.pop("width_factor", None)
    if factor is not None:
        opts["width"] = factor * features
    opts.update({k: v for k, v in given.items() if v is not None})
    for key in ("width", "layers", "heads"):
        _positive_int(key, opts[key])
    if opts["ff"] is None:
        opts["ff"] = 4 * opts["width"]
    _positive_int("ff", opts["ff"])
    if opts["width"] % opts["heads"]:
        raise ValueError(f"width {opts['width']} must be divisible by heads {opts['heads']}")
    d = opts["dropout"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {d!r}")
    if not isinstance(opts["bias"], bool):
        raise ValueError(f"bias must be a bool, got {opts['bias']!r}")
    for key, valid in (("projection", PROJECTIONS), ("positional", POSITIONALS),
                       ("pool", POOLS), ("padding", PADDINGS)):
        _choice(key, opts[key], valid)
    return opts


class _Conv1Projection(nn.Module):
    """A kernel-1 ``Conv1d`` over time: ``(B, T, F) -> (B, T, width)``, a per-step linear map."""

    def __init__(self, features: int, width: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, width, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, F, T) -> (B, W, T) -> back


class TransformerEncoder(nn.Module):
    """Projection, positional encoding, Transformer layers and pooling for ``(T, F)`` inputs.

    Options left at ``None`` come from ``preset`` if given, else from the defaults shown.

    Args:
        input_shape: ``(T, F)``: steps and features per step. Inputs may have any number of
            steps (up to ``max_len`` with learned positions); F is fixed.
        width: model width and feature size ``out_dim`` (default 64).
        layers: number of ``nn.TransformerEncoderLayer`` (default 2).
        heads: attention heads; must divide width (default 4).
        ff: feed-forward size (default ``4 * width``).
        dropout: dropout inside every layer, in ``[0, 1)`` (default 0.1).
        projection: ``linear`` or ``conv1`` (a kernel-1 Conv1d; the same map) (default linear).
        bias: whether the projection has a bias (default true).
        positional: ``sinusoidal``, ``learned`` (one trained vector per step, ``max_len``
            of them) or ``none`` (default sinusoidal).
        pool: ``last`` (the last VALID step), ``mean`` (over valid steps) or ``cls`` (a learned
            token prepended to the sequence) (default mean).
        padding: ``trailing_zeros`` (see the module docstring) or ``none``.
        max_len: number of learned positions (default T); only with ``positional: learned``.
        preset: a key of :data:`TRANSFORMER_PRESETS` (e.g. ``multibench_mosi``).
    """

    def __init__(self, input_shape: tuple[int, ...], width: Optional[int] = None,
                 layers: Optional[int] = None, heads: Optional[int] = None,
                 ff: Optional[int] = None, dropout: Optional[float] = None,
                 projection: Optional[str] = None, bias: Optional[bool] = None,
                 positional: Optional[str] = None, pool: Optional[str] = None,
                 padding: Optional[str] = None, max_len: Optional[int] = None,
                 preset: Optional[str] = None) -> None:
        super().__init__()
        shape = check_shape(input_shape)
        if len(shape) != 2:
            raise ValueError(f"input_shape must be (T, F) (steps, features), got {input_shape!r}")
        self.input_shape = shape
        o = _resolve(shape[1], preset, dict(
            width=width, layers=layers, heads=heads, ff=ff, dropout=dropout,
            projection=projection, bias=bias, positional=positional, pool=pool, padding=padding))
        if max_len is not None and o["positional"] != "learned":
            raise ValueError(f"max_len is only used with positional: learned, not "
                             f"{o['positional']!r}")
        self.options = o
        w = o["width"]
        self.proj = (nn.Linear(shape[1], w, bias=o["bias"]) if o["projection"] == "linear"
                     else _Conv1Projection(shape[1], w, o["bias"]))
        self.pos: Optional[nn.Parameter] = None
        if o["positional"] == "learned":
            _positive_int("max_len", shape[0] if max_len is None else max_len)
            self.pos = nn.Parameter(torch.randn(shape[0] if max_len is None else max_len, w) * 0.02)
        self.cls: Optional[nn.Parameter] = (nn.Parameter(torch.randn(1, 1, w) * 0.02)
                                            if o["pool"] == "cls" else None)
        layer = nn.TransformerEncoderLayer(w, o["heads"], dim_feedforward=o["ff"],
                                           dropout=o["dropout"], batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, o["layers"], enable_nested_tensor=False)
        self.out_dim: int = w

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[2] != self.input_shape[1] or x.shape[1] < 1:
            raise ValueError(f"TransformerEncoder expects input (B, T, {self.input_shape[1]}) "
                             f"with T >= 1, got {tuple(x.shape)}")
        if self.pos is not None and x.shape[1] > self.pos.shape[0]:
            raise ValueError(f"input has {x.shape[1]} steps but only {self.pos.shape[0]} "
                             f"learned positions (max_len)")

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, T, F)`` to features ``(B, width)``; padding per the module docstring."""
        self._check(x)
        b, t = x.shape[:2]
        lengths = (valid_lengths(x) if self.options["padding"] == "trailing_zeros"
                   else torch.full((b,), t, device=x.device))  # (B,)
        h = self.proj(x)  # (B, T, W)
        if self.options["positional"] == "sinusoidal":
            h = h + sinusoidal_encoding(t, self.out_dim, x.device).to(h.dtype)
        elif self.pos is not None:
            h = h + self.pos[:t]
        # clamp: a sample with no valid step keeps step 0 visible, so no attention row is all
        # -inf (NaN); its features are zeroed below
        pad = torch.arange(t, device=x.device) >= lengths.clamp(min=1).unsqueeze(1)  # (B, T)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(b, 1, -1), h], dim=1)  # (B, 1 + T, W)
            pad = torch.cat([pad.new_zeros(b, 1), pad], dim=1)
        h = self.encoder(h, src_key_padding_mask=pad)
        z = self._pool(h, pad, lengths)  # (B, W)
        return torch.where((lengths > 0).unsqueeze(1), z, torch.zeros_like(z))

    def _pool(self, h: Tensor, pad: Tensor, lengths: Tensor) -> Tensor:
        pool = self.options["pool"]
        if pool == "cls":
            return h[:, 0]
        if pool == "last":
            rows = torch.arange(h.shape[0], device=h.device)
            return h[rows, lengths.clamp(min=1) - 1]
        keep = (~pad).unsqueeze(2).to(h.dtype)  # (B, T, 1)
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
