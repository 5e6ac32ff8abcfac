"""UME: uni-modal ensemble (Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature
Learning in Supervised Multi-Modal Learning", ICML 2023).

No joint training: every modality is trained alone (one prerequisite run per modality, as for
UMT) and the prediction is the mean of the uni-modal models' logits,
(1/K) sum_m u_m^T(x_m). From the paper's abstract only (not in BalanceBenchmark; no official
code found): whether it averages logits or probabilities is unverified, hence ``average``.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice
from .base import FitContext, feature_dims, register_method
from .umt import TeacherRuns, frozen

__all__ = ["UME", "ensemble_logits"]


def ensemble_logits(logits: Mapping[str, torch.Tensor], average: str = "logits"
                    ) -> torch.Tensor:
    """The ensemble's (B, C) logits from the members' ``{m: (B, C)}``: their mean
    (``logits``), or the log of their mean probabilities (``probs``: softmax of it is that
    mean)."""
    stacked = torch.stack(list(logits.values()))  # (K, B, C)
    if average == "logits":
        return stacked.mean(0)
    return torch.logsumexp(F.log_softmax(stacked, 2), 0) - math.log(len(logits))


@register_method("ume")
class UME(TeacherRuns):
    """UME (ICML 2023): the parent run trains nothing; ``predict`` ensembles the teachers.

    The teachers' encoders are loaded into the model's own encoders (so the purity monitor and
    every feature tool read the ensemble members' features) and their heads Linear(d_m, C) into
    frozen ``method_modules["heads"]``; both are in every checkpoint, so ``mmrelearn eval``
    restores the ensemble. The parent's epochs have no batches (0 passes; its cost is the K
    teacher runs) and each evaluates the same ensemble, selected at epoch 0. Any K >= 2.

    The paper's rule picks UME when joint training does not beat this ensemble on validation
    data and UMT otherwise (unverified); compare the two runs' validation numbers to apply it.

    Args:
        teacher_epochs: epochs of each teacher run (None: the run's ``train.epochs``).
        average: ``logits`` (mean of the logits) or ``probs`` (mean of the probabilities).
    """

    own_step_scales_loss = True  # it never steps: any train.precision (teachers run at it)

    def __init__(self, teacher_epochs: Optional[int] = None, average: str = "logits") -> None:
        super().__init__(teacher_epochs)
        check_choice("method.average", average, ("logits", "probs"))
        self.average = average

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        self._check_model(model)
        return {"heads": frozen(nn.ModuleDict(
            {m: nn.Linear(d, num_classes) for m, d in feature_dims(model).items()}))}

    def load_teacher(self, model: nn.Module, modality: str, encoder: Mapping[str, torch.Tensor],
                     head: Mapping[str, torch.Tensor]) -> None:
        model.encoders[modality].load_state_dict(encoder)
        model.method_modules["heads"][modality].load_state_dict(head)

    def train_loader(self, ctx: FitContext) -> Optional[Iterable]:
        return iter(())  # no batches: nothing is trained jointly (not None: that is "usual")

    def training_step(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}  # never reached (no batches); no step either way

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        heads = model.method_modules["heads"]
        logits = {m: heads[m](enc(inputs[m])) for m, enc in model.encoders.items()}
        return ensemble_logits(logits, self.average)
