"""The multimodal classifier: one encoder per modality, a fusion module and a linear head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn

__all__ = ["ModelOutput", "MultimodalModel"]


@dataclass
class ModelOutput:
    """What one forward pass returns.

    Attributes:
        logits: fused prediction ``(B, num_classes)``.
        features: modality -> encoder output ``z_m`` of shape ``(B, d_m)``.
        unimodal_logits: modality -> ``(B, num_classes)`` from that modality's own head, when
            the model has unimodal heads; otherwise None.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    unimodal_logits: Optional[dict[str, torch.Tensor]] = None


class MultimodalModel(nn.Module):
    """``logits = head(fusion({m: encoders[m](x_m)}))`` (late fusion).

    A modality's parameters are exactly ``model.encoders[m].parameters()``; methods select
    them that way, never by parameter-name substrings.

    Args:
        encoders: modality -> encoder; each must expose ``out_dim``.
        fusion: module mapping ``{m: (B, d_m)}`` to ``(B, fusion.out_dim)``.
        num_classes: number of classes of the linear head.
        unimodal_heads: also give every modality its own linear head on ``z_m`` (used by
            methods with unimodal losses, e.g. G-Blending, MLA).
    """

    def __init__(self, encoders: nn.ModuleDict, fusion: nn.Module, num_classes: int,
                 unimodal_heads: bool = False) -> None:
        super().__init__()
        if not isinstance(encoders, nn.ModuleDict) or len(encoders) == 0:
            raise ValueError("encoders must be a non-empty nn.ModuleDict modality -> encoder")
        no_dim = [m for m, e in encoders.items()
                  if not isinstance(getattr(e, "out_dim", None), int)]
        if no_dim:
            raise ValueError(f"encoders {no_dim} have no int attribute out_dim")
        if not isinstance(getattr(fusion, "out_dim", None), int):
            raise ValueError("fusion has no int attribute out_dim")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        dims = getattr(fusion, "dims", None)  # ConcatFusion/SumFusion know their input sizes
        if isinstance(dims, Mapping):
            want = {m: e.out_dim for m, e in encoders.items()}
            if dict(dims) != want:
                raise ValueError(f"fusion dims {dict(dims)} do not match encoder out_dims {want}")
        self.encoders = encoders
        self.fusion = fusion
        self.head = nn.Linear(fusion.out_dim, num_classes)
        self.unimodal_heads: Optional[nn.ModuleDict] = None
        if unimodal_heads:
            self.unimodal_heads = nn.ModuleDict(
                {m: nn.Linear(e.out_dim, num_classes) for m, e in encoders.items()})

    @property
    def modalities(self) -> list[str]:
        """Modality names, in the order of ``encoders``."""
        return list(self.encoders.keys())

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Features only: ``{m: (B, *shape_m)}`` -> ``{m: (B, d_m)}``; extra keys are ignored."""
        missing = [m for m in self.encoders if m not in inputs]
        if missing:
            raise ValueError(f"missing input for modality {missing}; "
                             f"inputs given: {sorted(inputs)}; model modalities: {self.modalities}")
        return {m: enc(inputs[m]) for m, enc in self.encoders.items()}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        """Encode every modality, fuse, classify; see :class:`ModelOutput`."""
        features = self.encode(inputs)
        logits = self.head(self.fusion(features))  # (B, fusion.out_dim) -> (B, num_classes)
        uni = None
        if self.unimodal_heads is not None:
            uni = {m: head(features[m]) for m, head in self.unimodal_heads.items()}
        return ModelOutput(logits=logits, features=features, unimodal_logits=uni)
