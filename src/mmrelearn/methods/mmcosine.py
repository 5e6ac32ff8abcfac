"""MMCosine: multi-modal cosine loss (Xu, Feng, Zhang, Hu, "MMCosine: Multi-Modal Cosine Loss
Towards Balanced Audio-Visual Fine-Grained Learning", ICASSP 2023; release
GeWu-Lab/MMCosine_ICASSP23 @00ba0a9, ``main_CD.py``).

Each modality's logit is a scaled cosine between its feature and its own slice of each class's
head weight, both L2-normalised, so no modality dominates the fused logits through norms:
out_m[c] = s (z_m / ||z_m||) . (W_m[c] / ||W_m[c]||), out = sum_m out_m, no bias.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..distributed import reduce_floats
from ..models import ModelOutput, SumFusion
from .base import FitContext, Method, register_method

__all__ = ["MMCosine", "cosine_logits", "nce_loss"]


def _applicable(model: nn.Module) -> Optional[str]:
    """None if MMCosine can build its logits from ``model``, else why not."""
    if not isinstance(getattr(model, "head", None), nn.Linear):
        return "it has no fused linear head"
    if getattr(model.fusion, "slices", None) is None and not isinstance(model.fusion, SumFusion):
        return (f"{type(model.fusion).__name__} has neither a per-modality slice of the head "
                f"weight (concat) nor per-modality projections (sum)")
    return None


def cosine_logits(model: nn.Module, features: Mapping[str, torch.Tensor], scaling: float
                  ) -> dict[str, torch.Tensor]:
    """Per-modality cosine logits ``{m: (B, C)}``; their sum is the prediction.

    Concat fusion: W_m = W[:, cols_m]; sum fusion (extension): the projected feature
    ``proj_m(z_m)`` against the whole W, the same for every m. Rows of W_m and z_m are
    normalised with F.normalize (eps 1e-12); the head bias is not used.
    """
    w = model.head.weight  # (C, D)
    slices = getattr(model.fusion, "slices", None)
    out = {}
    for m, z in features.items():
        if slices is not None:
            w_m, v = w[:, slice(*slices[m])], z  # (C, d_m), (B, d_m)
        else:
            w_m, v = w, model.fusion.proj[m](z)  # (C, D), (B, D)
        out[m] = scaling * F.normalize(v, dim=1) @ F.normalize(w_m, dim=1).T  # (B, C)
    return out


def nce_loss(f1: torch.Tensor, f2: torch.Tensor, labels: torch.Tensor,
             temperature: float = 0.1) -> torch.Tensor:
    """The release's supplementary NCE between two modalities' features ``(B, d)``.

    p_ij = softmax_j(cos(f1_i, f2_j) / t); per i: mean over same-label j of -log(p_ij) plus
    mean over other-label j of -log(1 - p_ij) (1e-10 inside the logs, as released); a row
    without other-label samples contributes 0 there (the release divides 0 by 0).
    """
    cos = F.normalize(f1, dim=1) @ F.normalize(f2, dim=1).T  # (B, B)
    p = F.softmax(cos / temperature, dim=1)
    same = (labels[:, None] == labels[None, :]).float()  # (B, B); the diagonal is 1
    pos = (-torch.log(p + 1e-10) * same).sum(1) / same.sum(1)
    neg = (-torch.log(1 - p + 1e-10) * (1 - same)).sum(1) / (1 - same).sum(1).clamp_min(1)
    return (pos + neg).mean()


@register_method("mmcosine")
class MMCosine(Method):
    """MMCosine (ICASSP 2023): train and predict with per-modality cosine logits (Sec. 2).

    Args:
        scaling: s, the cosine scale (README CREMA-D 10; BalanceBenchmark 15).
        lam: weight of the supplementary NCE term between modality pairs (release default 0).
        eval_plain_head: predict with the plain fused head W z + b, as the release's
            ``valid()`` does (an evaluation that does not match training); default False.
    """

    def __init__(self, scaling: float = 10.0, lam: float = 0.0,
                 eval_plain_head: bool = False) -> None:
        check_number("method.scaling", scaling, low=0, low_open=True)
        check_number("method.lam", lam, low=0)
        check_choice("method.eval_plain_head", eval_plain_head, (True, False))
        self.scaling, self.lam, self.eval_plain_head = scaling, lam, eval_plain_head
        # DDP: the cosine CE is a mean over samples; the NCE pairs the samples of one batch,
        # which DDP splits across ranks (not reduced yet): refused there
        self.supports_ddp = lam == 0
        self._logit_y: dict[str, float] = {}
        self._n = 0

    def on_fit_start(self, ctx: FitContext) -> None:
        mods = list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"mmcosine needs at least 2 modalities, the model has {mods}")
        why = _applicable(ctx.model)
        if why is not None:
            raise ValueError(f"mmcosine needs per-modality cosine logits: {why}; use "
                             f"model.fusion 'concat' (or 'sum')")
        if self.lam > 0:
            dims = {m: int(e.out_dim) for m, e in ctx.model.encoders.items()}
            if len(set(dims.values())) > 1:
                raise ValueError(f"mmcosine.lam > 0 (NCE) compares features of equal size; "
                                 f"the modalities have {dims}: use lam 0")

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._logit_y, self._n = {}, 0

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        features = ctx.model.encode(inputs)
        per = cosine_logits(ctx.model, features, self.scaling)
        return ModelOutput(logits=sum(per.values()), features=features, unimodal_logits=per)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        with torch.no_grad():  # the release logs the mean true-class logit per modality
            for m, lg in output.unimodal_logits.items():
                self._logit_y[m] = (self._logit_y.get(m, 0.0)  # DDP: this rank's share
                                    + float(lg.gather(1, labels[:, None]).mean())
                                    * getattr(ctx, "batch_share", 1.0))
            self._n += 1
        if self.lam > 0:
            z, mods = output.features, list(output.features)
            pairs = [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]
            terms["nce"] = self.lam * sum(nce_loss(z[a], z[b], labels)
                                          for a, b in pairs) / len(pairs)
        return terms

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.eval_plain_head:
            return model(inputs).logits
        return sum(cosine_logits(model, model.encode(inputs), self.scaling).values())

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        logit_y = reduce_floats(self._logit_y)  # the global batches' (DDP)
        return {"mmcosine": {"logit_y_mean": {m: v / self._n for m, v in logit_y.items()}}}
