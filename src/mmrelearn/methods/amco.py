"""AMCo: adaptive mask co-optimisation (Zhou, Liang, Zheng, Xuan, Kumada, "Adaptive Mask
Co-Optimization for Modal Dependence in Multimodal Learning", ICASSP 2023). No official code was
found; this follows BalanceBenchmark (GeWu-Lab/BalanceBenchmark @4c1482f, ``AMCo_trainer.py``,
``BaseClassifierAMCoModel``) with its defects named in the docstrings.

The modality on which the prediction depends (most of the softmax mass over the concatenated
split logits) gets its split logits masked at random classes in the next step, so it is harder
to learn from; an extra C x C layer L* maps the summed split logits to the prediction.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method

__all__ = ["AMCo", "mask_schedule", "dependence", "live_split_logits"]

log = logging.getLogger(__name__)


def mask_schedule(l: float, eps: float, num_classes: int) -> tuple[float, int]:
    """(p, N): p = sin(pi/2 * min(eps, l) / eps), N = int(p C) classes masked."""
    p = math.sin(math.pi / 2 * min(eps, l) / eps)
    return p, int(p * num_classes)


def dependence(logits: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """D_m = (1/B) sum_i sum_{c in block m} softmax([out_1; ...; out_K]_i)_c, one softmax over
    the K C concatenated logits of each sample; ``logits[m]`` (B, C), as used (masked)."""
    p = F.softmax(torch.cat([lg.detach() for lg in logits.values()], dim=1), dim=1)  # (B, KC)
    blocks = p.split([lg.shape[1] for lg in logits.values()], dim=1)
    return {m: float(b.sum(1).mean()) for m, b in zip(logits, blocks)}


def live_split_logits(model: nn.Module, features: Mapping[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """out_m = z_m W[:, cols_m]^T + b / K of the concatenation head, with gradients."""
    w, b, k = model.head.weight, model.head.bias, len(features)  # (C, D), (C,)
    return {m: z @ w[:, slice(*model.fusion.slices[m])].T + b / k for m, z in features.items()}


@register_method("amco")
class AMCo(Method):
    """AMCo (ICASSP 2023, as BalanceBenchmark): masked split logits for dependent modalities.

    Training: final = L*(sum_m M_m * out_m), loss CE(final, y) + sum_m CE(M_m * out_m, y), with
    M_m one (1, C) row of N = int(p C) zeros at uniformly random classes (the same for every
    sample and every dependent modality) and M_m = 1 for the others. After each step
    D_m (:func:`dependence`) sets which modalities are dependent in the next: D_m > sigma.
    p = sin(pi/2 min(eps, l) / eps), l reset to 0 at each epoch start and increased by
    ``increment * epoch`` after each batch (0-based epoch). Prediction: L*(sum_m out_m).

    Flagged, kept as published: the schedule saturates. With eps 0.3 and increment 0.1, epoch 0
    never masks, and from epoch 1, batch 3 on p = 1: every class is masked, so a dependent
    modality's split logits are all zero. Not copied: BalanceBenchmark builds the mask (2, C),
    which broadcasts only when DataParallel splits it over two GPUs; here it is one row.

    Args:
        sigma: dependence threshold (0.5).
        eps: the schedule's saturation level (0.3).
        increment: l grows by ``increment * epoch`` per batch (0.1, i.e. epoch / 10).
        seed: seed of the generator drawing the masked classes.
    """

    def __init__(self, sigma: float = 0.5, eps: float = 0.3, increment: float = 0.1,
                 seed: int = 0) -> None:
        check_number("method.sigma", sigma, low=0, high=1)
        check_number("method.eps", eps, low=0, low_open=True)
        check_number("method.increment", increment, low=0)
        check_number("method.seed", seed, low=0, high=2**64 - 1, integer=True)
        self.sigma, self.eps, self.increment, self.seed = sigma, eps, increment, seed
        self.l = 0.0
        self.dependent: dict[str, bool] = {}  # for the next step; none before the first
        self.gen = torch.Generator().manual_seed(seed)  # CPU: masks are drawn there
        self._pending: dict[str, float] = {}  # D_m of the current step
        self._used: tuple[dict[str, bool], int] = ({}, 0)  # flags and N of the current step
        self._sums: dict[str, dict[str, float]] = {}
        self._n = self._zeros = 0

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        if (getattr(model, "head", None) is None
                or getattr(model.fusion, "slices", None) is None):
            raise ValueError(f"amco masks each modality's split logits, which exist only for a "
                             f"concatenation head; {type(model).__name__} with "
                             f"{type(model.fusion).__name__} has no per-modality slice of the "
                             f"head weight: use model.fusion 'concat'")
        return {"linear_star": nn.Linear(num_classes, num_classes)}

    def on_fit_start(self, ctx: FitContext) -> None:
        mods = list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"amco needs at least 2 modalities, the model has {mods}")
        self.dependent = {m: self.dependent.get(m, False) for m in mods}
        start = self._saturation(ctx.epochs, len(ctx.train_loader))
        if start is not None:
            log.warning("amco: the published mask schedule saturates (eps=%s, increment=%s): "
                        "from epoch %d, batch %d on, p = 1 and every class of a dependent "
                        "modality is masked (its split logits are all zero)", self.eps,
                        self.increment, *start)

    def _saturation(self, epochs: int, batches: int) -> Optional[tuple[int, int]]:
        """The first (epoch, batch) with p = 1, or None if none within the run."""
        for epoch in range(1, epochs):
            l = 0.0
            for b in range(batches):
                if l >= self.eps:
                    return epoch, b
                l += self.increment * epoch
        return None

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self.l = 0.0
        self._sums, self._n, self._zeros = {}, 0, 0

    def _mask(self, num_classes: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """M (1, C) with N zeros at uniformly random classes, and N."""
        _, n = mask_schedule(self.l, self.eps, num_classes)
        mask = torch.ones(1, num_classes)
        if 0 < n < num_classes:
            mask[0, torch.randperm(num_classes, generator=self.gen)[:n]] = 0.0
        elif n == num_classes:
            mask.zero_()
        return mask.to(device), n

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        model = ctx.model
        features = model.encode(inputs)
        outs = live_split_logits(model, features)  # {m: (B, C)}
        mask, n = self._mask(ctx.num_classes, model.head.weight.device)
        used = {m: self.dependent.get(m, False) for m in outs}
        outs = {m: o * mask if used[m] else o for m, o in outs.items()}
        self._pending, self._used = dependence(outs), (used, n)
        final = model.method_modules["linear_star"](sum(outs.values()))
        return ModelOutput(logits=final, features=features, unimodal_logits=outs)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        for m, o in output.unimodal_logits.items():
            terms[f"ce_{m}"] = F.cross_entropy(o, labels)
        return terms

    def on_train_batch_end(self, ctx: FitContext, terms: Mapping[str, float]) -> None:
        used, n = self._used
        for m, d in self._pending.items():
            s = self._sums.setdefault(m, {"dependent": 0.0, "masked": 0.0, "D": 0.0})
            s["dependent"] += float(used[m])
            s["masked"] += float(used[m] and n > 0)
            s["D"] += d
        self._n += 1
        self._zeros += n
        self.dependent = {m: d > self.sigma for m, d in self._pending.items()}
        self.l += self.increment * ctx.epoch

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        outs = live_split_logits(model, model.encode(inputs))
        return model.method_modules["linear_star"](sum(outs.values()))

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        mean = {key: {m: s[key] / self._n for m, s in self._sums.items()}
                for key in ("dependent", "masked", "D")}
        return {"amco": {"masked_fraction": mean["masked"],
                         "dependent_fraction": mean["dependent"],
                         "dependence_mean": mean["D"],
                         "masked_class_share": self._zeros / (self._n * ctx.num_classes)}}

    def state_dict(self) -> dict[str, Any]:
        return {"l": self.l, "dependent": dict(self.dependent), "generator": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.l = float(state["l"])
        self.dependent = {m: bool(v) for m, v in state["dependent"].items()}
        self.gen.set_state(torch.as_tensor(state["generator"]).cpu())
