"""AGM: adaptive gradient modulation (Li, Li, Hu, Yang, Wang, "Boosting Multi-modal Model
Performance with Adaptive Gradient Modulation", ICCV 2023).

The fused logits are split into Shapley contributions m_m of each modality (masked passes with
the other modalities' inputs zeroed); the gradient through each m_m is scaled by
k_m = exp(alpha * min(opt_m - ratio_m, cap)), pulling each modality's mono-modal
cross-entropy gap back to its running-mean value (Sec. 3.3-3.4).
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..distributed import reduce_floats
from ..models import ModelOutput
from .base import FitContext, Method, register_method

__all__ = ["AGM", "ScaleGrad", "shapley_values", "agm_ratios", "agm_coefficients"]

log = logging.getLogger(__name__)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``k``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, k: float) -> torch.Tensor:
        ctx.k = k
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.k, None


def shapley_values(values: Mapping[frozenset, torch.Tensor], modalities: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
    """phi_m = sum_{S not containing m} |S|!(K-|S|-1)!/K! (v(S + m) - v(S)), with v({}) = 0.

    ``values`` maps every non-empty coalition (a frozenset of modality names) to its logits.
    For K = 2: phi_a = (v(av) - v(v) + v(a)) / 2; for K = 3 the weights are 1/3, 1/6, 1/6, 1/3.
    """
    k = len(modalities)
    out = {}
    for m in modalities:
        others = [j for j in modalities if j != m]
        phi = 0
        for size in range(k):
            w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for s in itertools.combinations(others, size):
                s = frozenset(s)
                gain = values[s | {m}] - (values[s] if s else 0)
                phi = phi + w * gain
        out[m] = phi
    return out


def agm_ratios(scores: Mapping[str, float]) -> dict[str, float]:
    """ratio_m = exp(K/(K-1) (mean_j s_j - s_m)); for K = 2, ratio_a = exp(s_v - s_a)."""
    k = len(scores)
    mean = sum(scores.values()) / k
    return {m: math.exp(k / (k - 1) * (mean - s)) for m, s in scores.items()}


def agm_coefficients(scores: Mapping[str, float], running: Mapping[str, float],
                     alpha: float) -> dict[str, float]:
    """k_m = exp(alpha min(opt_m - ratio_m, cap)); opt_m is ratio_m of the running means.

    cap = 10 for two modalities, 7 for more (the release's K-modality version).
    """
    cap = 10.0 if len(scores) == 2 else 7.0
    ratio, opt = agm_ratios(scores), agm_ratios(running)
    return {m: math.exp(alpha * min(opt[m] - ratio[m], cap)) for m in scores}


def _head_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The classifier's weights: the fused head's, or with no fused head (MMTM, MBT: the
    prediction is the mean of the unimodal heads) every unimodal head's; [] if neither."""
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Linear):
        return [head.weight]
    heads = getattr(model, "unimodal_heads", None)
    if head is None and heads is not None:
        return [h.weight for h in heads.values()]
    return []


@register_method("agm")
class AGM(Method):
    """AGM (ICCV 2023): Shapley-split logits whose gradients are scaled by k_m.

    Per step: total = f(x) in train mode; the masked passes (every non-empty proper coalition,
    other inputs zeroed) run in eval mode with gradients, so BatchNorm uses and keeps its running
    statistics; loss = CE(sum_m m_m, y). s_m = mean CE of softmax(m_m) (p clipped at 1e-8);
    the running means S_m over all steps since the start are updated after use.

    Args:
        alpha: modulation strength (CREMA-D: 1.5).
        modulation_starts, modulation_ends: epochs (inclusive) with k_m != 1.
        clip: if any entry of the head's weight gradient is outside [-1, 1], clip the global
            gradient norm of all parameters to 1 (as released).
    """

    supports_ddp = True  # the per-modality mean losses are the global batch's (ranks reduced)

    def __init__(self, alpha: float = 1.5, modulation_starts: int = 0,
                 modulation_ends: int = 10**9, clip: bool = True) -> None:
        check_number("method.alpha", alpha, low=0)
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        check_choice("method.clip", clip, (True, False))
        self.alpha, self.clip = alpha, clip
        self.starts, self.ends = modulation_starts, modulation_ends
        self.running: dict[str, float] = {}  # S_m
        self.steps = 0
        self.parts: dict[str, torch.Tensor] = {}  # this batch's m_m, (B, C) each
        self.k: dict[str, float] = {}
        self._k_sum: dict[str, float] = {}
        self._n = self._n_clipped = 0

    def on_fit_start(self, ctx: FitContext) -> None:
        mods = list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"agm needs at least 2 modalities, the model has {mods}")
        if self.clip and not _head_weights(ctx.model):
            raise ValueError("agm.clip=True reads the gradient of model.head.weight; the model "
                             "has no linear head (set clip=False)")
        if len(mods) > 4:
            log.warning("agm: %d modalities need %d forward passes per step", len(mods),
                        2 ** len(mods) - 1)
        if not self.running:
            self.running = {m: 0.0 for m in mods}

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._k_sum, self._n, self._n_clipped = {}, 0, 0

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        model, mods = ctx.model, list(ctx.model.encoders)
        total = model(inputs)  # train mode
        values = {frozenset(mods): total.logits}
        was_training = model.training
        model.eval()  # masked passes: BatchNorm running stats used and left untouched
        for size in range(1, len(mods)):
            for s in itertools.combinations(mods, size):
                masked = {m: x if m in s else torch.zeros_like(x) for m, x in inputs.items()}
                values[frozenset(s)] = model(masked).logits
        model.train(was_training)
        self.parts = shapley_values(values, mods)  # m -> (B, C), summing to total.logits
        return ModelOutput(logits=sum(self.parts.values()), features=total.features,
                           unimodal_logits=total.unimodal_logits)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = {m: float(-F.softmax(p.detach(), 1).gather(1, labels[:, None])
                           .clamp_min(1e-8).log().mean()) for m, p in self.parts.items()}
        # the global batch's mean: every rank's mean weighted by its share (1.0 in one process)
        share = getattr(ctx, "batch_share", 1.0)  # (a bare context in unit tests has none)
        scores = reduce_floats({m: s * share for m, s in scores.items()})
        if self.starts <= ctx.epoch <= self.ends:
            self.k = agm_coefficients(scores, self.running, self.alpha)
        else:
            self.k = {m: 1.0 for m in scores}
        n = self.steps + 1  # running means updated after use
        self.running = {m: self.running.get(m, 0.0) * (n - 1) / n + s / n
                        for m, s in scores.items()}
        self.steps = n
        for m, k in self.k.items():
            self._k_sum[m] = self._k_sum.get(m, 0.0) + k
        self._n += 1
        logits = sum(ScaleGrad.apply(p, self.k[m]) for m, p in self.parts.items())
        return {"ce": F.cross_entropy(logits, labels)}

    @torch.no_grad()
    def on_before_optimizer_step(self, ctx: FitContext) -> None:
        grads = [w.grad for w in _head_weights(ctx.model) if w.grad is not None] if self.clip \
            else []
        if any(float(g.max()) > 1.0 or float(g.min()) < -1.0 for g in grads):
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=1.0)
            self._n_clipped += 1

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        return {"agm": {"k_mean": {m: s / self._n for m, s in self._k_sum.items()},
                        "running_score": dict(self.running), "clipped_steps": self._n_clipped}}

    def state_dict(self) -> dict[str, Any]:
        return {"running": dict(self.running), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.running = {m: float(v) for m, v in state["running"].items()}
        self.steps = int(state["steps"])
