"""CML: Calibrating Multimodal Learning (Ma, Zhang et al., ICML 2023).

A calibrated model is not more confident with fewer modalities. Along nested subsets
S_0 = all, S_k = S_{k-1} minus one modality (a random removal order per sample), the
regulariser penalises conf(S_k) > conf(S_{k-1}), conf = max_c softmax(out_S)[c]. The partial
predictions zero the removed modalities' features before the fusion and the head, so they cost
K - 1 extra head evaluations and no extra encoder pass.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method

__all__ = ["CML", "confidence_penalty", "removal_ranks", "partial_logits"]


def confidence_penalty(logits_big: torch.Tensor, logits_small: torch.Tensor,
                       labels: torch.Tensor, form: str = "cpm", eps: float = 0.0
                       ) -> torch.Tensor:
    """The penalty of one removal step, S_{k-1} (``logits_big``) -> S_k (``logits_small``).

    Both ``(B, C)``; conf and pred are the max and argmax of the softmax; both confidences
    carry gradients. ``cpm`` (release CPM-Nets, "trick 1"):
    sum_i relu((conf_k - conf_{k-1}) sign_i - eps), sign_i = 0 iff the smaller set predicts y
    and the larger one does not. ``miwae``: sign_i = 1[pred_{k-1} = y], plus "trick 2"
    relu((conf_k - conf_{k-1}.detach()) 1[both wrong] - eps). ``bb`` (BalanceBenchmark):
    relu(sum_i (conf_k - conf_{k-1}) - eps), no sign.
    """
    conf_b, pred_b = F.softmax(logits_big, 1).max(1)  # (B,), (B,)
    conf_s, pred_s = F.softmax(logits_small, 1).max(1)
    diff = conf_s - conf_b  # (B,)
    if form == "bb":
        return F.relu(diff.sum() - eps)
    right_b, right_s = pred_b == labels, pred_s == labels
    if form == "cpm":
        sign = (~(right_s & ~right_b)).to(diff.dtype)
        return F.relu(diff * sign - eps).sum()
    both_wrong = (~right_b & ~right_s).to(diff.dtype)
    trick2 = F.relu((conf_s - conf_b.detach()) * both_wrong - eps).sum()
    return F.relu(diff * right_b.to(diff.dtype) - eps).sum() + trick2


def removal_ranks(seed: int, n: int, k: int) -> torch.Tensor:
    """``(n, k)``: rank[i, m] = the step at which sample i loses modality m (0 = first),
    from one seeded random permutation per sample."""
    order = np.random.default_rng(seed).random((n, k)).argsort(1)  # order[i] = pi_i
    return torch.from_numpy(order.argsort(1))


def partial_logits(model: torch.nn.Module, features: Mapping[str, torch.Tensor],
                   keep: torch.Tensor) -> torch.Tensor:
    """head(fusion(z with z_m := 0 where keep[i, m] is False)); ``keep`` is ``(B, K)`` in the
    order of ``features``. For the concat head: sum_{m kept} z_m W_m^T + b (full bias)."""
    masked = {m: z * keep[:, j, None].to(z.dtype) for j, (m, z) in enumerate(features.items())}
    return model.head(model.fusion(masked))


@register_method("cml")
class CML(Method):
    """CML (ICML 2023): (1/K) sum_k CE(out_{S_k}) + lam R, R summed over the batch.

    Args:
        lam: weight of the regulariser (BalanceBenchmark ``lam``; the MIWAE script's
            ``--beta 10`` used as beta / 100).
        form: ``cpm`` (release CPM-Nets, the default), ``miwae`` (its sign plus "trick 2") or
            ``bb`` (BalanceBenchmark: relu of the batch sum, no sign).
        order: ``sample`` (one removal order per sample, drawn once for the run from ``seed``
            and the sample's index, as released) or ``epoch`` (one order per epoch for all
            samples, as in BalanceBenchmark).
        eps: the tolerance margin (release 0).
        modulation_starts, modulation_ends: epochs (inclusive) with the partial predictions
            and R; other epochs train CE on the full prediction only (BalanceBenchmark: 0-80).
        seed: seed of the removal orders.
    """

    def __init__(self, lam: float = 0.1, form: str = "cpm", order: str = "sample",
                 eps: float = 0.0, modulation_starts: int = 0, modulation_ends: int = 10**9,
                 seed: int = 0) -> None:
        check_number("method.lam", lam, low=0)
        check_choice("method.form", form, ("cpm", "miwae", "bb"))
        check_choice("method.order", order, ("sample", "epoch"))
        check_number("method.eps", eps, low=0)
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        check_number("method.seed", seed, low=0, high=2**32 - 1, integer=True)
        self.lam, self.form, self.order, self.eps, self.seed = lam, form, order, eps, seed
        self.starts, self.ends = modulation_starts, modulation_ends
        self.wants_sample_index = order == "sample"
        self.ranks: Optional[torch.Tensor] = None  # (N, K), order "sample"
        self._epoch_ranks: Optional[torch.Tensor] = None  # (K,), order "epoch"
        self._violations, self._pairs = 0, 0

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"cml needs at least 2 modalities, the model has {mods}")
        if getattr(model, "head", None) is None or not hasattr(model, "fusion"):
            raise ValueError(
                f"cml predicts from subsets of modalities by zeroing features before a fusion "
                f"module and a fused head; {type(model).__name__} has no fused head (use a "
                f"late fusion: model.fusion concat or sum)")
        if self.order == "sample":
            # the orders are a function of the seed and the sample index: no state to save
            self.ranks = removal_ranks(self.seed, len(ctx.train_loader.dataset), len(mods))

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._violations, self._pairs = 0, 0
        if self.order == "epoch":
            k = len(ctx.model.encoders)
            order = np.random.default_rng([self.seed, ctx.epoch]).permutation(k)
            self._epoch_ranks = torch.from_numpy(order.argsort())

    def _ranks(self, ctx: FitContext, n: int) -> torch.Tensor:
        if self.order == "epoch":
            return self._epoch_ranks.expand(n, -1)
        if ctx.batch_index is None:
            raise ValueError("cml with order 'sample' needs each sample's index in the "
                             "training batches (the runner gives it: wants_sample_index)")
        return self.ranks[ctx.batch_index.cpu()]

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.starts <= ctx.epoch <= self.ends:
            zero = output.logits.new_zeros(())
            return {"ce": F.cross_entropy(output.logits, labels), "cml": zero}
        k = len(output.features)
        ranks = self._ranks(ctx, len(labels)).to(labels.device)  # (B, K)
        big = output.logits  # S_0: every modality
        ce, penalty = F.cross_entropy(big, labels), big.new_zeros(())
        for step in range(1, k):
            small = partial_logits(ctx.model, output.features, ranks >= step)  # S_step
            ce = ce + F.cross_entropy(small, labels)
            penalty = penalty + confidence_penalty(big, small, labels, self.form, self.eps)
            with torch.no_grad():
                rise = F.softmax(small, 1).amax(1) > F.softmax(big, 1).amax(1)
                self._violations += int(rise.sum())
                self._pairs += rise.numel()
            big = small
        return {"ce": ce / k, "cml": self.lam * penalty}

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._pairs == 0:
            return None
        # share of (sample, removal step) pairs whose smaller subset was MORE confident
        return {"cml": {"violation_rate": self._violations / self._pairs}}
