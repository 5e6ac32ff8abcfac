"""OPM: on-the-fly prediction modulation (Wei, Hu, Du, Wen, "On-the-fly Modulation for
Balanced Multimodal Learning", TPAMI 2024; release GeWu-Lab/BML_TPAMI2024 @4b3aa4f,
``code/models/Classifier.py``).

The leading modality is weakened in the feed-forward pass: after a warm-up, with probability
``p_exe`` per step, each sample loses the leader's features with a probability that grows with
the leader's advantage in the split-logit scores; kept features are rescaled by 1 / (1 - theta).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method, true_class_scores
from .ogm_ge import split_logits

__all__ = ["OPM", "drop_probabilities", "drop_theta"]


def drop_probabilities(scores: Mapping[str, float], q_base: float, lam: float,
                       rule: str = "min") -> dict[str, float]:
    """q_m = clip(q_base (1 + lam r_m), 0, 1) if r_m > 0 else 0, r_m = tanh(relu(rho_m - 1)).

    rho_m = s_m / min_j s_j (``min``; two modalities: the release's s_1 / s_2 and s_2 / s_1) or
    s_m / sum_{j != m} s_j (``bb``, BalanceBenchmark's K = 3 rule); equal for K = 2.
    """
    s = {m: max(float(v), 1e-12) for m, v in scores.items()}  # an all-zero score cannot divide
    low, total = min(s.values()), sum(s.values())
    q = {}
    for m, sm in s.items():
        rho = sm / low if rule == "min" else sm / (total - sm)
        r = math.tanh(max(rho - 1.0, 0.0))
        q[m] = min(max(q_base * (1.0 + lam * r), 0.0), 1.0) if r > 0 else 0.0
    return q


def drop_theta(q: Mapping[str, float], dims: Mapping[str, int]) -> float:
    """theta = sum_m d_m q_m / sum_m d_m: every kept feature is scaled by 1 / (1 - theta)."""
    return sum(dims[m] * q[m] for m in q) / sum(dims[m] for m in q)


@register_method("opm")
class OPM(Method):
    """OPM (TPAMI 2024): drop the leading modality's features per sample, then CE(fused).

    Per modulated step (epochs ``modulation_starts..modulation_ends``): scores s_m from split
    logits (head weight and bias detached, bias / K) on the un-dropped features; q_m from
    :func:`drop_probabilities`; with probability ``p_exe`` a drop is executed: mask_{m,i} ~
    Bernoulli(1 - q_m) independently per sample and modality, z~_m = mask_m z_m / (1 - theta)
    for every modality (the kept ones too); samples that lost every modality are removed (a
    batch that lost all of them takes no step); loss = CE(head(fusion(z~)), y). Prediction:
    the plain fused head (no drop, no scale).

    Args:
        q_base: base drop probability of the leader (train_opm.sh 0.5; Config 0.4, BB 0.4).
        lam: growth of q with the leader's advantage (release ``--lam`` 0.5).
        p_exe: probability that a modulated step executes the drop (0.7).
        modulation_starts, modulation_ends: epochs (inclusive) with modulation; 6 = the
            release's warm-up of epochs 0..5, after which it never ends.
        rule: ``min`` (rho_m = s_m / min_j s_j) or ``bb`` (s_m / sum of the others, as
            BalanceBenchmark for K = 3); the same for two modalities.
        seed: seed of the generator that draws the executions and the masks.
    """

    def __init__(self, q_base: float = 0.5, lam: float = 0.5, p_exe: float = 0.7,
                 modulation_starts: int = 6, modulation_ends: int = 10**9, rule: str = "min",
                 seed: int = 0) -> None:
        check_number("method.q_base", q_base, low=0, high=1)
        check_number("method.lam", lam, low=0)
        check_number("method.p_exe", p_exe, low=0, high=1)
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        check_choice("method.rule", rule, ("min", "bb"))
        check_number("method.seed", seed, low=0, high=2**64 - 1, integer=True)  # torch's range
        self.q_base, self.lam, self.p_exe, self.rule = q_base, lam, p_exe, rule
        self.starts, self.ends = modulation_starts, modulation_ends
        # CPU draws: the same masks on every device; the state is part of the checkpoint
        self.gen = torch.Generator().manual_seed(seed)
        self._stats: dict[str, Any] = {}

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"opm needs at least 2 modalities, the model has {mods}")
        if getattr(model.fusion, "slices", None) is None or getattr(model, "head", None) is None:
            raise ValueError(
                f"opm needs split logits (scores) and a fused head on the concatenated "
                f"features (the drop); {type(model.fusion).__name__} has no per-modality slice "
                f"of a head weight: use model.fusion 'concat'")

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._stats = {"steps": 0, "executed": 0, "skipped": 0, "samples": 0, "q": {},
                       "dropped": {}}

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.starts <= ctx.epoch <= self.ends:
            return {"ce": F.cross_entropy(output.logits, labels)}
        feats = output.features  # m -> (B, d_m), un-dropped
        scores = true_class_scores(split_logits(ctx.model, feats), labels)
        q = drop_probabilities(scores, self.q_base, self.lam, self.rule)
        st = self._stats
        st["steps"] += 1
        for m, qm in q.items():
            st["q"][m] = st["q"].get(m, 0.0) + qm
        u = float(torch.rand((), generator=self.gen))
        if u < 1.0 - self.p_exe:  # not executed: a plain step
            return {"ce": F.cross_entropy(output.logits, labels)}
        st["executed"] += 1
        n = labels.shape[0]
        keep = {m: torch.rand(n, generator=self.gen) < 1.0 - q[m] for m in feats}  # (B,) bool
        scale = 1.0 / (1.0 - drop_theta(q, {m: z.shape[1] for m, z in feats.items()}))
        st["samples"] += n
        for m, k in keep.items():
            st["dropped"][m] = st["dropped"].get(m, 0) + int((~k).sum())
        alive = torch.stack(list(keep.values())).any(0).to(labels.device)  # (B,)
        if not bool(alive.any()):  # every sample lost every modality: no step
            st["skipped"] += 1
            return {}
        dropped = {m: (z * keep[m].to(z)[:, None] * scale)[alive] for m, z in feats.items()}
        logits = ctx.model.head(ctx.model.fusion(dropped))  # (B_alive, C)
        return {"ce": F.cross_entropy(logits, labels[alive])}

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        st = self._stats
        if not st.get("steps"):
            return {"opm": {"modulated": False}}
        return {"opm": {
            "modulated": True,
            "q_mean": {m: v / st["steps"] for m, v in st["q"].items()},
            "executed": st["executed"] / st["steps"],  # share of steps that dropped
            "drop_rate": {m: v / max(st["samples"], 1) for m, v in st["dropped"].items()},
            "skipped_batches": st["skipped"]}}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(torch.as_tensor(state["generator"]).cpu())
