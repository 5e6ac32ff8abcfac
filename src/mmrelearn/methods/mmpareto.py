"""MMPareto: boosting multimodal learning with innocent unimodal assistance (Wei & Hu, ICML 2024),
as in the authors' release (GeWu-Lab/MMPareto_ICML2024 @a339db3, ``code/MMPareto.py``).

Loss ``CE(fused) + sum_m CE(u_m)``. Each encoder gets two gradients, g_f from the fused loss and
g_u from its own unimodal loss. If they agree (cos > 0) they are summed; if not, the min-norm
point of their convex hull (MGDA) is taken, which decreases both; the result is given at least
the magnitude of the plain sum and enlarged by gamma.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method, require_unimodal_heads

__all__ = ["MMPareto", "pareto_weights", "pareto_combine", "unimodal_logits"]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def pareto_weights(g_f: Sequence[torch.Tensor], g_u: Sequence[torch.Tensor]
                   ) -> tuple[float, float, float]:
    """``(cos, a_f, a_u)`` for one encoder from its per-tensor gradients of both losses.

    cos > 0: a_f = a_u = 0.5. Otherwise the two-vector min-norm solution of the release's
    solver, a_f = (|g_u|^2 - g_f.g_u) / |g_f - g_u|^2, with its guards (a_f = 0.999 if
    g_f.g_u >= |g_f|^2, else 0.001 if g_f.g_u >= |g_u|^2: only zero gradients reach them).
    Dot products are over the whole encoder.
    """
    ff, fu, uu = _dot(g_f, g_f), _dot(g_f, g_u), _dot(g_u, g_u)
    norms = math.sqrt(ff * uu)
    cos = fu / norms if norms > 0 else 0.0
    if cos > 0:
        return cos, 0.5, 0.5
    if fu >= ff:
        a_f = 0.999
    elif fu >= uu:
        a_f = 0.001
    else:
        a_f = (uu - fu) / (ff + uu - 2 * fu)
    return cos, a_f, 1.0 - a_f


def pareto_combine(g_f: Sequence[torch.Tensor], g_u: Sequence[torch.Tensor], gamma: float,
                   magnitude: str = "per_tensor") -> tuple[list[torch.Tensor], dict[str, float]]:
    """The encoder's new gradients (one per tensor) and ``{"cos", "a_f"}``.

    h = 2 a_f g_f + 2 a_u g_u; ratio = |g_f + g_u| / |h| per tensor (``per_tensor``, the
    release) or over the whole encoder (``per_encoder``); grad = gamma * max(ratio, 1) * h;
    |h| = 0 gives a zero gradient (the release divides 0 by 0).
    """
    cos, a_f, a_u = pareto_weights(g_f, g_u)
    h = [2 * a_f * f + 2 * a_u * u for f, u in zip(g_f, g_u)]
    if magnitude == "per_tensor":
        n_sum = [torch.linalg.vector_norm(f + u) for f, u in zip(g_f, g_u)]
        n_h = [torch.linalg.vector_norm(x) for x in h]
    else:
        total = torch.sqrt(sum((f + u).square().sum() for f, u in zip(g_f, g_u)))
        norm_h = torch.sqrt(sum(x.square().sum() for x in h))
        n_sum, n_h = [total] * len(h), [norm_h] * len(h)
    out = []
    for x, ns, nh in zip(h, n_sum, n_h):
        ratio = ns / nh
        scale = torch.where(nh > 0, torch.where(ratio > 1, ratio, torch.ones_like(ratio)),
                            torch.zeros_like(ratio))  # 0 where |h| = 0 (ratio inf or nan)
        out.append(gamma * scale * x)
    return out, {"cos": cos, "a_f": a_f}


def unimodal_logits(model: torch.nn.Module, output: ModelOutput, source: str
                    ) -> dict[str, torch.Tensor]:
    """``{m: (B, C)}`` with gradients: the unimodal heads' logits (``heads``) or the split logits
    z_m W[:, cols_m]^T + b / K of a concatenation head (``split_logits``)."""
    if source == "heads":
        return dict(output.unimodal_logits)
    w, b = model.head.weight, model.head.bias  # (C, D), (C,)
    k = len(output.features)
    return {m: z @ w[:, slice(*model.fusion.slices[m])].T + b / k
            for m, z in output.features.items()}


def _take_grads(params: Sequence[torch.nn.Parameter]) -> list[Optional[torch.Tensor]]:
    """Each parameter's gradient (None if it got none), clearing it for the next backward."""
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    return grads


@register_method("mmpareto")
class MMPareto(Method):
    """MMPareto (ICML 2024, release): Pareto-combined fused and unimodal encoder gradients.

    Two backward passes per batch: CE(fused) (graph retained), its encoder gradients recorded,
    then sum_m CE(u_m), each term reaching only E_m and its head. Heads and fusion keep the
    plain gradient of the total loss; every encoder gets :func:`pareto_combine`'s gradient.
    Prediction: the fused head.

    Args:
        gamma: magnitude enlargement (1.5, hard-coded in the release).
        unimodal: ``heads`` (one linear head per modality, the release) or ``split_logits``
            (the concatenation head's per-modality share, as BalanceBenchmark).
        magnitude: ``per_tensor`` (the release) or ``per_encoder`` norm ratio.
    """

    def __init__(self, gamma: float = 1.5, unimodal: str = "heads",
                 magnitude: str = "per_tensor") -> None:
        check_number("method.gamma", gamma, low=0, low_open=True)
        check_choice("method.unimodal", unimodal, ("heads", "split_logits"))
        check_choice("method.magnitude", magnitude, ("per_tensor", "per_encoder"))
        self.gamma, self.unimodal, self.magnitude = gamma, unimodal, magnitude
        self._sums: dict[str, dict[str, float]] = {}
        self._n = 0

    def model_overrides(self) -> dict[str, Any]:
        return {"unimodal_heads": True} if self.unimodal == "heads" else {}

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"mmpareto needs at least 2 modalities, the model has {mods}")
        if getattr(model, "head", None) is None:
            raise ValueError(f"mmpareto needs a fused linear head on late-fused features (its "
                             f"unimodal losses must reach only their own encoder); "
                             f"{type(model).__name__} has none: use fusion 'concat' or 'sum'")
        if self.unimodal == "heads":
            require_unimodal_heads(model, "mmpareto")
        elif getattr(model.fusion, "slices", None) is None:
            raise ValueError(f"mmpareto.unimodal='split_logits' needs concatenation fusion; "
                             f"{type(model.fusion).__name__} has no per-modality slice of the "
                             f"head weight: use fusion 'concat' or unimodal 'heads'")

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._sums, self._n = {}, 0

    def training_step(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
        model = ctx.model
        with ctx.autocast():  # train.precision (16-mixed is refused: the solver reads
            # each loss's gradients, which a loss scale would leave scaled)
            output = model(inputs)
            fused = F.cross_entropy(output.logits, labels)
            uni = {m: F.cross_entropy(lg, labels)
                   for m, lg in unimodal_logits(model, output, self.unimodal).items()}
        terms = {"ce": fused, **{f"ce_{m}": v for m, v in uni.items()}}
        params = {m: [p for p in e.parameters() if p.requires_grad]
                  for m, e in model.encoders.items()}
        ctx.optimizer.zero_grad(set_to_none=True)
        fused.backward(retain_graph=True)
        g_f = {m: _take_grads(ps) for m, ps in params.items()}
        sum(uni.values()).backward()  # heads/fusion now hold the gradient of the total loss
        for m, ps in params.items():
            info = self._assign(ps, g_f[m], _take_grads(ps))
            sums = self._sums.setdefault(m, {"cos": 0.0, "a_f": 0.0, "conflict": 0.0})
            sums["cos"] += info["cos"]
            sums["a_f"] += info["a_f"]
            sums["conflict"] += float(info["cos"] <= 0)
        self._n += 1
        self.on_before_optimizer_step(ctx)
        ctx.optimizer.step()
        return terms

    def _assign(self, params: Sequence[torch.nn.Parameter], g_f: Sequence[Optional[torch.Tensor]],
                g_u: Sequence[Optional[torch.Tensor]]) -> dict[str, float]:
        """Set one encoder's gradients from both losses' (a parameter neither reached stays
        without a gradient; one reached by a single loss counts zero for the other)."""
        used = [i for i in range(len(params)) if g_f[i] is not None or g_u[i] is not None]
        if not used:  # an encoder no loss reached: the solver's zero-gradient guard
            return {"cos": 0.0, "a_f": 0.999}
        fill = lambda g, i: g[i] if g[i] is not None else torch.zeros_like(params[i])  # noqa: E731
        new, info = pareto_combine([fill(g_f, i) for i in used], [fill(g_u, i) for i in used],
                                   self.gamma, self.magnitude)
        for i, g in zip(used, new):
            params[i].grad = g
        return info

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        mean = {key: {m: s[key] / self._n for m, s in self._sums.items()}
                for key in ("cos", "a_f", "conflict")}
        return {"mmpareto": {"cos_mean": mean["cos"], "weight_fused_mean": mean["a_f"],
                             "conflict_rate": mean["conflict"]}}
