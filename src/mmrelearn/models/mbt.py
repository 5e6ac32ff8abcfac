"""MBT: the multimodal bottleneck Transformer (Nagrani, Yang, Arnab, Jansen, Schmid, Sun,
"Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021, Sec. 3.2).

One :class:`~mmrelearn.models.vit.ViTEncoder` stream per modality, separate weights. Layers
``0 .. fusion_layer - 1`` are uni-modal. From layer ``fusion_layer`` on, each modality's layer
runs on ``[its tokens; the B bottleneck tokens]``; the bottleneck passed to the next layer is
the mean over modalities of their updated bottleneck tokens, so the bottleneck is the only
path between modalities. Each stream's final norm and pooling (CLS output, or the mean of its
patch tokens) gives ``z_m``; one linear head per modality gives its logits, and the prediction
is their mean.

What D&R treats as ``encoders[m]``: the whole stream of m (patch embedding, CLS token,
positions, every block before and after the fusion layer, final norm). The bottleneck tokens
(``fusion.bottleneck``) and the heads belong to no single modality: they are fusion.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from .multimodal import ModelOutput, MultimodalModel
from .vit import ViTEncoder

__all__ = ["MBTFusion", "MBTModel"]


class MBTFusion(nn.Module):
    """The fusion of :class:`MBTModel`: the learned initial bottleneck ``(1, B, width)``.

    It acts inside the streams' layers, so it is not called on pooled features; ``dims`` and
    ``out_dim`` keep the model contract.
    """

    def __init__(self, dims: Mapping[str, int], width: int, bottlenecks: int,
                 fusion_layer: int) -> None:
        super().__init__()
        self.bottleneck = nn.Parameter(torch.empty(1, bottlenecks, width))
        nn.init.normal_(self.bottleneck, std=0.02)  # as MBT's release
        self.fusion_layer = fusion_layer
        self.dims = dict(dims)
        self.out_dim: int = width


class MBTModel(MultimodalModel):
    """Per-modality ViT streams joined by bottleneck tokens from ``fusion_layer`` on.

    Keeps the :class:`MultimodalModel` contract: ``encoders`` (the streams), ``fusion``
    (:class:`MBTFusion`), ``unimodal_heads`` (one linear head per modality, always present:
    they are the classifier) and ``head = None`` (no fused head: ``logits`` is the mean of the
    per-modality logits). ``features[m]`` is what head m reads: stream m's CLS output (or its
    mean-pooled tokens with ``pool: mean``).

    Args:
        encoders: :class:`ViTEncoder` streams, modality -> stream, all of one width and depth.
        num_classes: number of classes.
        bottlenecks: B, the number of bottleneck tokens (MBT: 4).
        fusion_layer: L_f, the first layer (0-based) that runs on the bottleneck (MBT's
            ViT-Base: 8 of 12); ``0`` fuses from the first layer, ``layers`` never fuses.
    """

    def __init__(self, encoders: nn.ModuleDict, num_classes: int, bottlenecks: int = 4,
                 fusion_layer: int = 8) -> None:
        if not isinstance(encoders, nn.ModuleDict) or len(encoders) == 0 or not all(
                isinstance(e, ViTEncoder) for e in encoders.values()):
            got = ({m: type(e).__name__ for m, e in encoders.items()}
                   if isinstance(encoders, nn.ModuleDict) else type(encoders).__name__)
            raise ValueError(f"MBT needs an nn.ModuleDict of ViTEncoder streams (encoder type "
                             f"vit); got {got}")
        shapes = {m: (e.out_dim, len(e.blocks)) for m, e in encoders.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"MBT streams share bottleneck tokens layer by layer, so they need "
                             f"one width and one number of layers; got (width, layers) {shapes}")
        width, depth = next(iter(shapes.values()))
        if isinstance(bottlenecks, bool) or not isinstance(bottlenecks, int) or bottlenecks < 1:
            raise ValueError(f"model.mbt.bottlenecks must be a positive int, got {bottlenecks!r}")
        if (isinstance(fusion_layer, bool) or not isinstance(fusion_layer, int)
                or not 0 <= fusion_layer <= depth):
            raise ValueError(f"model.mbt.fusion_layer must be an int in [0, {depth}] (the "
                             f"streams have {depth} layers), got {fusion_layer!r}")
        fusion = MBTFusion({m: e.out_dim for m, e in encoders.items()}, width, bottlenecks,
                           fusion_layer)
        super().__init__(encoders, fusion, num_classes, unimodal_heads=True)
        self.head = None  # no fused head: the prediction is the mean of the modality heads

    def _run(self, inputs: Mapping[str, Tensor], trace: Optional[list] = None
             ) -> dict[str, Tensor]:
        missing = [m for m in self.encoders if m not in inputs]
        if missing:
            raise ValueError(f"missing input for modality {missing}; inputs given: "
                             f"{sorted(inputs)}; model modalities: {self.modalities}")
        h = {m: enc.embed(inputs[m]) for m, enc in self.encoders.items()}  # (B, 1 + N_m, W)
        b = next(iter(h.values())).shape[0]
        z = self.fusion.bottleneck.expand(b, -1, -1)  # (B, n_bottlenecks, W)
        for i in range(len(next(iter(self.encoders.values())).blocks)):
            if i < self.fusion.fusion_layer:
                h = {m: enc.blocks[i](h[m]) for m, enc in self.encoders.items()}
            else:
                out = {m: enc.blocks[i](torch.cat([h[m], z], dim=1))
                       for m, enc in self.encoders.items()}  # (B, 1 + N_m + n_b, W)
                h = {m: o[:, :h[m].shape[1]] for m, o in out.items()}
                z = torch.stack([o[:, h[m].shape[1]:] for m, o in out.items()]).mean(dim=0)
            if trace is not None:
                trace.append({**h, "bottleneck": z})
        return {m: enc.pool_tokens(h[m]) for m, enc in self.encoders.items()}

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Features ``{m: (B, width)}``: each stream's pooled output after the fused layers."""
        return self._run(inputs)

    def layer_tokens(self, inputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        """After each layer i, ``{m: (B, 1 + N_m, W), "bottleneck": (B, n_b, W)}`` (the
        bottleneck as passed on; before ``fusion_layer`` it is the initial one)."""
        trace: list = []
        self._run(inputs, trace)
        return trace

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        """Per-modality logits from each head; ``logits`` = their mean (MBT's classifier)."""
        features = self.encode(inputs)
        uni = {m: head(features[m]) for m, head in self.unimodal_heads.items()}  # (B, C) each
        logits = torch.stack(list(uni.values())).mean(dim=0)  # (K, B, C) -> (B, C)
        return ModelOutput(logits=logits, features=features, unimodal_logits=uni)
