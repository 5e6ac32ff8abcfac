"""InfoReg: adaptive unimodal regulation for balanced multimodal information acquisition (Huang,
Wei, Yang, Hu, CVPR 2025), as in the authors' release (GeWu-Lab/InfoReg_CVPR2025 @939b2ed,
``main.py``).

Early training (the "prime learning window", detected from the trend of a Fisher-information
trace) is when the information-sufficient modality dominates. Inside the window, the modality
ahead on the batch is slowed by a proximal pull toward its encoder at the epoch start, the
gradient of (beta / 2) ||theta_m - theta0_m||^2, stronger for a larger score gap.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method, true_class_scores

__all__ = ["InfoReg", "window_change", "regulation_coefficients", "split_logits_with_grad"]

log = logging.getLogger(__name__)


def split_logits_with_grad(model: nn.Module, features: Mapping[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
    """Concat fusion: out_m = z_m W[:, cols_m]^T + b / K with gradients; ``{m: (B, C)}``."""
    w, b = model.head.weight, model.head.bias  # (C, D), (C,)
    k = len(features)
    return {m: z @ w[:, slice(*model.fusion.slices[m])].T + b / k for m, z in features.items()}


def window_change(traces: Sequence[float], window: int = 10) -> float:
    """k_t from the traces F_0 .. F_{t-1} of the epochs before t (F_j = 0 for j < 0).

    k_0 = 1; k_t = (F_{t-1} - F_{t-1-window}) / (F_{t-window} + ... + F_{t-1}), the relative
    change of a ``window``-epoch moving sum (release: 10); a zero sum gives 0.
    """
    if not traces:
        return 1.0
    oldest = traces[-1 - window] if len(traces) > window else 0.0
    total = sum(traces[-window:])
    return (traces[-1] - oldest) / total if total != 0 else 0.0


def regulation_coefficients(scores: Mapping[str, float], k: float,
                            coefficients: Mapping[str, float], threshold: float
                            ) -> dict[str, float]:
    """beta_m: nonzero only for the modality strictly ahead, m* = argmax s_m, inside the window.

    If k > threshold and s_{m*} > max_{j != m*} s_j: beta_{m*} = c_{m*} exp(tanh(s_{m*} -
    max_{j != m*} s_j)); every other beta (and all of them on a tie or outside) is 0. With two
    modalities and c = (0.95, 0.10) this is the release's rule. ``k`` is the window value
    that applies (the caller picks whose trace it comes from).
    """
    beta = {m: 0.0 for m in scores}
    lead = max(scores, key=scores.get)
    second = max(s for m, s in scores.items() if m != lead)
    if k > threshold and scores[lead] > second:
        beta[lead] = coefficients[lead] * math.exp(math.tanh(scores[lead] - second))
    return beta


def _trace_weights(encoder: nn.Module) -> list[nn.Parameter]:
    """The weights whose squared gradients make the Fisher trace: Conv2d and Linear, as released."""
    return [mod.weight for mod in encoder.modules()
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.requires_grad]


@register_method("inforeg")
class InfoReg(Method):
    """InfoReg (CVPR 2025, release at HEAD): a proximal term on the leading encoder in-window.

    Loss CE(fused) + sum_m CE(out_m) on split logits (one backward). Per step, s_m (batch sums
    of softmax(out_m)[y]) give beta_m by :func:`regulation_coefficients`; before the optimizer
    step every parameter of E_m gets ``grad += beta_m (p - theta0_p)`` (theta0: the encoder at
    the epoch start; heads untouched); then the squared gradients of E_m's Conv2d/Linear
    weights are accumulated, and at the epoch end F_t = sum_W mean_elements(sum_steps
    grad_W^2). The window value k_t (:func:`window_change`) is taken at each epoch start.
    Prediction: the fused head.

    Args:
        coefficients: c_m in model order; default (0.95, 0.10) for two modalities (the first
            plays the release's audio), 0.95 each for more.
        threshold: the window is open while k_t > threshold (0.05; the first upload 0.04).
        window: epochs of the moving sum of traces (10).
        window_from: whose trace opens the window: ``first`` (the first modality's, as released
            for audio), ``own`` (the leading modality's own, the K > 2 extension) or ``auto``
            (first for two modalities, own for more).
    """

    def __init__(self, coefficients: Optional[list[float]] = None, threshold: float = 0.05,
                 window: int = 10, window_from: str = "auto") -> None:
        if coefficients is not None:
            for i, c in enumerate(coefficients):
                check_number(f"method.coefficients[{i}]", c, low=0)
        check_number("method.threshold", threshold, low=0)
        check_number("method.window", window, low=1, integer=True)
        check_choice("method.window_from", window_from, ("auto", "first", "own"))
        self.coefficients = None if coefficients is None else [float(c) for c in coefficients]
        self.threshold, self.window, self.window_from = threshold, window, window_from
        self.traces: dict[str, list[float]] = {}  # m -> F_0 .. F_{t-1}
        self.k: dict[str, float] = {}  # m -> k_t of its own trace (this epoch)
        self.beta: dict[str, float] = {}  # current batch
        self._c: dict[str, float] = {}
        self._theta0: dict[str, list[torch.Tensor]] = {}
        self._acc: dict[str, torch.Tensor] = {}  # m -> sum over steps and W of mean(grad_W^2)
        self._beta_sum: dict[str, float] = {}
        self._regulated: dict[str, int] = {}
        self._n = 0

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"inforeg needs at least 2 modalities, the model has {mods}")
        if getattr(model, "head", None) is None or getattr(model.fusion, "slices", None) is None:
            raise ValueError(f"inforeg needs split logits of a concatenation head; "
                             f"{type(model).__name__} with {type(model.fusion).__name__} has no "
                             f"per-modality slice of a fused head weight: use fusion 'concat'")
        coefs = self.coefficients
        if coefs is None:
            coefs = [0.95, 0.10] if len(mods) == 2 else [0.95] * len(mods)
        if len(coefs) != len(mods):
            raise ValueError(f"inforeg.coefficients has {len(coefs)} values for "
                             f"{len(mods)} modalities {mods} (one per modality, in model order)")
        self._c = dict(zip(mods, coefs))  # model order: the first is the release's audio
        silent = [m for m in mods if not _trace_weights(model.encoders[m])]
        if silent:
            log.warning("inforeg: encoders %s have no Conv2d/Linear weight: their traces stay 0 "
                        "and a window opened by them closes after epoch 0", silent)
        for m in mods:
            self.traces.setdefault(m, [])

    def _source(self, lead: str) -> str:
        """Modality whose trace opens the window when ``lead`` is ahead."""
        rule = self.window_from
        if rule == "auto":
            rule = "first" if len(self._c) == 2 else "own"
        return next(iter(self._c)) if rule == "first" else lead

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        encs = ctx.model.encoders
        self.k = {m: window_change(self.traces[m], self.window) for m in encs}
        self._theta0 = {m: [p.detach().clone() for p in e.parameters() if p.requires_grad]
                        for m, e in encs.items()}
        self._acc = {m: torch.zeros((), device=ctx.device) for m in encs}
        self._beta_sum, self._regulated = dict.fromkeys(encs, 0.0), dict.fromkeys(encs, 0)
        self._n = 0

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        split = split_logits_with_grad(ctx.model, output.features)
        terms = {"ce": F.cross_entropy(output.logits, labels),
                 **{f"ce_{m}": F.cross_entropy(lg, labels) for m, lg in split.items()}}
        scores = true_class_scores(split, labels)  # batch sums, as released
        lead = max(scores, key=scores.get)
        self.beta = regulation_coefficients(scores, self.k[self._source(lead)], self._c,
                                            self.threshold)
        return terms

    @torch.no_grad()
    def on_before_optimizer_step(self, ctx: FitContext) -> None:
        for m, enc in ctx.model.encoders.items():
            beta = self.beta.get(m, 0.0)
            if beta > 0:
                params = [p for p in enc.parameters() if p.requires_grad]
                for p, p0 in zip(params, self._theta0[m]):
                    if p.grad is None:
                        p.grad = beta * (p - p0)
                    else:
                        p.grad.add_(p - p0, alpha=beta)
                self._regulated[m] += 1
            self._beta_sum[m] += beta
            for w in _trace_weights(enc):  # after the edit, as released
                if w.grad is not None:
                    self._acc[m] += w.grad.square().mean()
        self._n += 1

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        fisher = {m: float(a) for m, a in self._acc.items()}
        for m, f in fisher.items():
            self.traces[m].append(f)
        n = max(self._n, 1)
        return {"inforeg": {"k": dict(self.k), "fisher_trace": fisher,
                            "beta_mean": {m: s / n for m, s in self._beta_sum.items()},
                            "regulated_rate": {m: r / n for m, r in self._regulated.items()}}}

    def state_dict(self) -> dict[str, Any]:
        # theta0 and the accumulators are rebuilt at every epoch start: the traces suffice
        return {"traces": {m: list(t) for m, t in self.traces.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.traces = {m: [float(f) for f in t] for m, t in state["traces"].items()}
