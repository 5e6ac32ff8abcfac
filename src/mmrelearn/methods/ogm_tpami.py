"""OGM, journal version (Wei, Hu, Du, Wen, "On-the-fly Modulation for Balanced Multimodal
Learning", TPAMI 2024): OGM-GE with a warm-up, the journal release's two-modality rule and the
OGM+ option (release GeWu-Lab/BML_TPAMI2024 @4b3aa4f, ``code/main.py``).

Differences from :mod:`ogm_ge` (CVPR 2022), everything else shared: epochs 0..5 are never
modulated (``warm_up = 1 if epoch <= 5``: ``modulation_starts=6``), modulation ends after epoch
60 (train_ogm.sh), and the release rule compares rho_1 = s_1 / s_2 in model order, so a tie
shrinks modality 2 (ogm_ge's rule compares s_2 / s_1: a tie shrinks modality 1).
"""
from __future__ import annotations

import math
from typing import Mapping

from ..config import ConfigError, check_choice
from .base import FitContext, register_method
from .ogm_ge import OGMGE, ogm_coefficients

__all__ = ["OGMTPAMI", "tpami_coefficients", "PLUS_BOOST"]

#: OGM+ (``--use_OGM_plus``): the weaker modality's gradients are multiplied by this.
PLUS_BOOST = 4.0


def tpami_coefficients(scores: Mapping[str, float], alpha: float, rule: str,
                       plus: bool = False) -> dict[str, float]:
    """k_m from the scores s_m = sum_batch softmax(out_m)[y].

    ``release`` (two modalities, in model order 1, 2): rho_1 = s_1 / s_2; if rho_1 > 1 the
    leader is 1, else 2 (also at a tie), with rho = s_lead / s_other; OGM: the leader gets
    ``1 - tanh(alpha rho)``; OGM+ (``plus``): the other gets :data:`PLUS_BOOST`, the leader 1.
    ``min`` (any K, OGM only): as :func:`~mmrelearn.methods.ogm_ge.ogm_coefficients`.
    """
    if rule == "min":
        return ogm_coefficients(scores, alpha, "min")
    s = {m: max(float(v), 1e-12) for m, v in scores.items()}  # an all-zero score cannot divide
    one, two = list(s)
    rho_1 = s[one] / s[two]
    lead, other = (one, two) if rho_1 > 1 else (two, one)
    k = {m: 1.0 for m in s}
    if plus:
        k[other] = PLUS_BOOST
    else:  # relu(rho) = rho: scores are positive
        k[lead] = 1.0 - math.tanh(alpha * s[lead] / s[other])
    return k


@register_method("ogm_tpami")
class OGMTPAMI(OGMGE):
    """OGM / OGM-GE as in the TPAMI 2024 release: gradient modulation after a warm-up.

    Args:
        alpha: modulation strength (train_ogm.sh: 0.8; the script's default 1.0).
        ge: add N(0, std(g)^2) noise to every modulated gradient (``--modulation`` defaults
            to OGM_GE); False is plain OGM.
        modulation_starts: first modulated epoch; 6 = the release's warm-up of epochs 0..5.
        modulation_ends: last modulated epoch (train_ogm.sh: 60).
        conv_only: edit only 4-D gradients (conv kernels), as released.
        rule: ``release`` (K = 2, above), ``min`` (K > 2: rho_m = s_m / min_j s_j) or
            ``auto`` (release for K = 2).
        plus: OGM+ (``--use_OGM_plus``): instead of shrinking the leader, multiply the other
            modality's gradients by 4 (two modalities, release rule only).
        seed: seed of the GE noise generator.
    """

    def __init__(self, alpha: float = 0.8, ge: bool = True, modulation_starts: int = 6,
                 modulation_ends: int = 60, conv_only: bool = True, rule: str = "auto",
                 plus: bool = False, seed: int = 0) -> None:
        super().__init__(alpha=alpha, ge=ge, modulation_starts=modulation_starts,
                         modulation_ends=modulation_ends, conv_only=conv_only, rule=rule,
                         seed=seed)
        check_choice("method.plus", plus, (True, False))
        if plus and rule == "min":
            raise ConfigError("method.plus: OGM+ is released for two modalities with the "
                              "release rule; use rule 'release' or 'auto', not 'min'")
        self.plus = plus

    def on_fit_start(self, ctx: FitContext) -> None:
        if self.plus and len(ctx.model.encoders) != 2:
            raise ValueError(f"ogm_tpami.plus=True (OGM+) is released for two modalities; the "
                             f"model has {len(ctx.model.encoders)}: use plus=False")
        super().on_fit_start(ctx)

    def coefficients(self) -> dict[str, float]:
        return tpami_coefficients(self.scores, self.alpha, self._rule(), self.plus)
