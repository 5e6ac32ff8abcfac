"""MBSD (Liu et al., 2023), as implemented in BalanceBenchmark (``MBSD_trainer.py``; neither the
paper nor official code was found, so this is the only source).

Besides CE on the fused and on every modality's split logits, each pair of modalities gets two
terms weighted per sample by the gap of their true-class probabilities, w_i = |P_a,i - P_v,i|
when at least one of them predicts y_i: a squared distance between their logits (RS) and
BalanceBenchmark's ``F.kl_div(ps, pw)`` (KLt). The intent (distil the stronger modality's
prediction into the weaker one) is inferred from the names and is unverified.
"""
from __future__ import annotations

import itertools
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method

__all__ = ["MBSD", "pair_terms", "modality_logits"]


def pair_terms(out_a: torch.Tensor, out_b: torch.Tensor, labels: torch.Tensor,
               rs_on: str = "logits", kl: str = "bb", detach_weights: bool = False
               ) -> dict[str, torch.Tensor]:
    """Per-sample ``w``, ``rs`` and ``klt`` of one pair of ``(B, C)`` logits, each ``(B,)``.

    P_m = softmax(out_m)[y]; w = |P_a - P_b| if argmax out_a = y or argmax out_b = y, else 0;
    ps, pw = max and min of (P_a, P_b); rs = (1/C) sum_c (x_a - x_b)^2 with x the logits
    (``rs_on='logits'``) or the probabilities (``probs``, BalanceBenchmark's K = 3 form);
    ``kl='bb'``: klt = pw (ln pw - ps), what ``F.kl_div(ps, pw)`` gives (kl_div expects
    log-probabilities: not a divergence, it can be negative); ``kl='log_input'``:
    pw (ln pw - ln ps). w, ps and pw carry gradients unless ``detach_weights`` (w only).
    """
    p_a, p_b = F.softmax(out_a, 1), F.softmax(out_b, 1)  # (B, C)
    t_a, t_b = (p.gather(1, labels[:, None]).squeeze(1) for p in (p_a, p_b))  # (B,)
    hit = (out_a.argmax(1) == labels) | (out_b.argmax(1) == labels)
    w = (t_a - t_b).abs() * hit.to(t_a.dtype)
    if detach_weights:
        w = w.detach()
    ps, pw = torch.maximum(t_a, t_b), torch.minimum(t_a, t_b)
    x_a, x_b = (out_a, out_b) if rs_on == "logits" else (p_a, p_b)
    rs = ((x_a - x_b) ** 2).mean(1)
    tiny = torch.finfo(pw.dtype).tiny  # an underflowed probability: 0 ln 0 = 0, finite grads
    klt = pw * (pw.clamp_min(tiny).log() - (ps if kl == "bb" else ps.clamp_min(tiny).log()))
    return {"w": w, "rs": rs, "klt": klt}


def modality_logits(model: nn.Module, output: ModelOutput) -> dict[str, torch.Tensor]:
    """Per-modality logits with gradients: split logits z_m W_m^T + b / K of a concat head,
    else the model's unimodal heads; ``{m: (B, C)}``."""
    slices = getattr(getattr(model, "fusion", None), "slices", None)
    if getattr(model, "head", None) is not None and slices is not None:
        w, b = model.head.weight, model.head.bias  # (C, D), (C,)
        k = len(output.features)
        return {m: z @ w[:, slice(*slices[m])].T + b / k for m, z in output.features.items()}
    return output.unimodal_logits


@register_method("mbsd")
class MBSD(Method):
    """MBSD: CE(out) + sum_m CE(out_m) + mean over pairs of (1/B) sum_i w_i (RS_i + KLt_i).

    Args:
        rs_on: ``logits`` (BalanceBenchmark's K = 2 form, used for every K) or ``probs``
            (its K = 3 form).
        kl: ``bb`` (pw (ln pw - ps), as BalanceBenchmark computes it) or ``log_input``
            (pw (ln pw - ln ps)).
        detach_weights: stop gradients through w (BalanceBenchmark lets them flow).
        modulation_starts, modulation_ends: epochs (inclusive) with the unimodal CEs, RS and
            KLt (BalanceBenchmark: 0-80); other epochs train CE(out) only.
    """

    def __init__(self, rs_on: str = "logits", kl: str = "bb", detach_weights: bool = False,
                 modulation_starts: int = 0, modulation_ends: int = 80) -> None:
        check_choice("method.rs_on", rs_on, ("logits", "probs"))
        check_choice("method.kl", kl, ("bb", "log_input"))
        check_choice("method.detach_weights", detach_weights, (True, False))
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        self.rs_on, self.kl, self.detach_weights = rs_on, kl, detach_weights
        self.starts, self.ends = modulation_starts, modulation_ends
        self._w_sum: dict[str, float] = {}
        self._n = 0

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"mbsd needs at least 2 modalities, the model has {mods}")
        split = (getattr(model, "head", None) is not None
                 and getattr(model.fusion, "slices", None) is not None)
        if not split and getattr(model, "unimodal_heads", None) is None:
            raise ValueError(
                f"mbsd needs per-modality logits: split logits exist only for concatenation "
                f"fusion, and {type(model.fusion).__name__} has no per-modality slice of the head "
                f"weight; use fusion 'concat' or build the model with unimodal_heads=True")

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._w_sum, self._n = {}, 0

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        zero = output.logits.new_zeros(())
        if not self.starts <= ctx.epoch <= self.ends:
            return {**terms, "ce_uni": zero, "rs": zero, "kl": zero}
        uni = modality_logits(ctx.model, output)
        terms["ce_uni"] = sum(F.cross_entropy(lg, labels) for lg in uni.values())
        pairs = list(itertools.combinations(uni, 2))
        rs, kl = zero, zero
        for a, b in pairs:
            t = pair_terms(uni[a], uni[b], labels, self.rs_on, self.kl, self.detach_weights)
            rs = rs + (t["w"] * t["rs"]).mean()  # (1/B) sum_i w_i RS_i
            kl = kl + (t["w"] * t["klt"]).mean()
            key = f"{a}-{b}"
            self._w_sum[key] = self._w_sum.get(key, 0.0) + float(t["w"].detach().mean())
        self._n += 1
        terms["rs"], terms["kl"] = rs / len(pairs), kl / len(pairs)
        return terms

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        return {"mbsd": {"w_mean": {k: v / self._n for k, v in self._w_sum.items()},
                         "rs_on": self.rs_on, "kl": self.kl,
                         "detach_weights": self.detach_weights}}
