"""OGM / OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng, Wei,
Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022).

After backward, the dominant modality's encoder gradients are shrunk by
k = 1 - tanh(alpha * rho) (Eq. 10, argument alpha * rho as released); GE adds Gaussian noise
with the gradient's own standard deviation (Eq. 11).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..distributed import reduce_floats
from ..models import ModelOutput
from .base import FitContext, Method, register_method, true_class_scores

__all__ = ["OGMGE", "ogm_coefficients", "split_logits"]

log = logging.getLogger(__name__)


def split_logits(model: torch.nn.Module, features: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """Concat fusion: out_m = z_m W[:, cols_m]^T + b / K, detached; ``{m: (B, C)}``."""
    w, b = model.head.weight.detach(), model.head.bias.detach()  # (C, D), (C,)
    k = len(features)
    return {m: z.detach() @ w[:, slice(*model.fusion.slices[m])].T + b / k
            for m, z in features.items()}


def ogm_coefficients(scores: Mapping[str, float], alpha: float, rule: str) -> dict[str, float]:
    """k_m from the scores s_m = sum_batch softmax(out_m)[y] (Sec. 3.2, Eq. 9-10).

    ``release`` (two modalities, in model order a, v): rho_v = s_v / s_a; if rho_v > 1, v gets
    1 - tanh(alpha rho_v), else a gets 1 - tanh(alpha / rho_v) (so a tie modulates a).
    ``min`` (any K): rho_m = s_m / min_j s_j; k_m = 1 - tanh(alpha rho_m) where rho_m > 1.
    """
    s = {m: max(float(v), 1e-12) for m, v in scores.items()}  # an all-zero score cannot divide
    k = {m: 1.0 for m in s}
    if rule == "release":
        a, v = list(s)
        rho_v = s[v] / s[a]
        if rho_v > 1:
            k[v] = 1.0 - math.tanh(alpha * rho_v)
        else:
            k[a] = 1.0 - math.tanh(alpha / rho_v)
        return k
    low = min(s.values())
    for m, sm in s.items():
        if sm / low > 1:
            k[m] = 1.0 - math.tanh(alpha * sm / low)
    return k


@register_method("ogm_ge")
class OGMGE(Method):
    """OGM (``ge=False``) or OGM-GE: rescale (and perturb) encoder gradients before the step.

    Args:
        alpha: modulation strength (0.8 CREMA-D, 0.1 VGGSound).
        ge: add N(0, std(g)^2) noise to every modulated gradient (OGM-GE); False is plain OGM.
        modulation_starts, modulation_ends: epochs (inclusive) in which gradients are edited.
        conv_only: edit only 4-D gradients (conv kernels), as released; False edits every
            encoder parameter's gradient.
        rule: ``release`` (K = 2), ``min`` (the K > 2 rule) or ``auto`` (release for K = 2).
        seed: seed of the GE noise generator.
    """

    supports_ddp = True  # scores summed over ranks; gradients edited after DDP averaged them

    def __init__(self, alpha: float = 0.8, ge: bool = True, modulation_starts: int = 0,
                 modulation_ends: int = 50, conv_only: bool = True, rule: str = "auto",
                 seed: int = 0) -> None:
        check_number("method.alpha", alpha, low=0)
        for key, flag in (("ge", ge), ("conv_only", conv_only)):
            check_choice(f"method.{key}", flag, (True, False))
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        check_choice("method.rule", rule, ("auto", "release", "min"))
        check_number("method.seed", seed, low=0, high=2**64 - 1, integer=True)  # torch's range
        self.alpha, self.ge, self.conv_only, self.rule, self.seed = alpha, ge, conv_only, rule, seed
        self.starts, self.ends = modulation_starts, modulation_ends
        self.gen: Optional[torch.Generator] = None
        self._gen_state: Optional[torch.Tensor] = None  # loaded before the generator exists
        self.scores: dict[str, float] = {}  # current batch, set in loss_terms
        self.k: dict[str, float] = {}  # latest coefficients
        self._k_sum: dict[str, float] = {}
        self._n = 0
        self._use_heads = False  # True: scores from unimodal heads (non-concat fusion)
        self._own_heads = False  # True: the model's heads ARE its classifier (MMTM, MBT)

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"{self.name} needs at least 2 modalities, the model has {mods}")
        if self.rule == "release" and len(mods) != 2:
            raise ValueError(f"{self.name}.rule='release' is the two-modality rule; the model "
                             f"has {len(mods)} modalities: use rule 'min' or 'auto'")
        self._use_heads = getattr(model.fusion, "slices", None) is None
        # no fused head: the prediction is the mean of the unimodal heads, whose logits are
        # then the per-modality logits themselves (no probe needed)
        self._own_heads = (getattr(model, "head", None) is None
                           and getattr(model, "unimodal_heads", None) is not None)
        if self._use_heads and getattr(model, "unimodal_heads", None) is None:
            raise ValueError(
                f"{self.name} needs per-modality logits: split logits exist only for "
                f"concatenation fusion, and {type(model.fusion).__name__} has no per-modality "
                f"slice of the head weight; use fusion 'concat' or build the model with "
                f"unimodal_heads=True")
        if self.conv_only and not any(p.dim() == 4 for m in mods
                                      for p in model.encoders[m].parameters()):
            log.warning("%s: conv_only=True but no encoder has 4-D (conv) parameters: no "
                        "gradient will be modulated; set conv_only=False to modulate all",
                        self.name)
        if self.gen is None:
            self.gen = torch.Generator(device=ctx.device).manual_seed(self.seed)
            if self._gen_state is not None:
                self.gen.set_state(self._gen_state)

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._k_sum, self._n = {}, 0

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        if self._own_heads:
            logits = output.unimodal_logits  # m -> (B, C), detached in the scores
        elif self._use_heads:
            # the unimodal heads are probes trained on detached features: scores only
            heads = ctx.model.unimodal_heads
            logits = {m: heads[m](z.detach()) for m, z in output.features.items()}
            terms["probe_ce"] = sum(F.cross_entropy(lg, labels) for lg in logits.values())
        else:
            logits = split_logits(ctx.model, output.features)  # m -> (B, C)
        self.scores = reduce_floats(true_class_scores(logits, labels))  # the global batch's
        return terms

    def _rule(self) -> str:
        return self.rule if self.rule != "auto" else ("release" if len(self.scores) == 2 else "min")

    def coefficients(self) -> dict[str, float]:
        """k_m of the current batch from ``self.scores`` (a variant overrides the rule)."""
        return ogm_coefficients(self.scores, self.alpha, self._rule())

    @torch.no_grad()
    def on_before_optimizer_step(self, ctx: FitContext) -> None:
        self.k = self.coefficients()
        for m, k in self.k.items():
            self._k_sum[m] = self._k_sum.get(m, 0.0) + k
        self._n += 1
        if not self.starts <= ctx.epoch <= self.ends:
            return
        for m, k in self.k.items():
            for p in ctx.model.encoders[m].parameters():
                g = p.grad
                if g is None or (self.conv_only and g.dim() != 4):
                    continue
                new = g * k
                if self.ge:  # std over the ORIGINAL gradient, +1e-8 as released
                    std = float(g.std()) if g.numel() > 1 else 0.0
                    noise = torch.randn(g.shape, generator=self.gen, device=g.device,
                                        dtype=g.dtype)
                    new = new + noise * (std + 1e-8)
                p.grad = new

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        return {self.name: {"k_mean": {m: s / self._n for m, s in self._k_sum.items()},
                           "modulated": self.starts <= ctx.epoch <= self.ends}}

    def state_dict(self) -> dict[str, Any]:
        gen = self.gen.get_state() if self.gen is not None else self._gen_state
        return {"generator": gen, "k": dict(self.k)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.k = {m: float(v) for m, v in state["k"].items()}
        gen = state["generator"]
        self._gen_state = None if gen is None else torch.as_tensor(gen).cpu()  # a ByteTensor
        if self.gen is not None and self._gen_state is not None:
            self.gen.set_state(self._gen_state)
