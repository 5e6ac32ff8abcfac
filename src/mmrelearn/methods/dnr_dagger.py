"""D&R-dagger (Wei et al., ECCV 2024, Table 2): D&R plus unimodal classifiers.

Every modality gets its own linear head on z_m and its own cross-entropy in the loss (the
extra heads G-Blending uses); the diagnosis and re-learning are D&R's, unchanged, and the
re-initialisation touches the encoders only, never these heads.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..models import ModelOutput
from .base import FitContext, register_method, require_unimodal_heads
from .dnr import DnR

__all__ = ["DnRDagger"]


@register_method("dnr_dagger")
class DnRDagger(DnR):
    """D&R-dagger: loss = CE(fused) + sum_m CE(head_m(z_m)); same arguments as :class:`DnR`."""

    def model_overrides(self) -> dict[str, Any]:
        return {"unimodal_heads": True}

    def on_fit_start(self, ctx: FitContext) -> None:
        require_unimodal_heads(ctx.model, "dnr_dagger")
        super().on_fit_start(ctx)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        for m, logits in output.unimodal_logits.items():  # (B, C) each
            terms[f"ce_{m}"] = F.cross_entropy(logits, labels)
        return terms
