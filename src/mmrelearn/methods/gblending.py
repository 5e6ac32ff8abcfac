"""G-Blending, online variant (Wang, Tran, Feiszli, "What Makes Training Multi-Modal
Classification Networks Hard?", CVPR 2020, Sec. 4 and Algorithm 2).

One linear head per modality on z_m plus the fused head; the loss blends their cross-entropies
with weights from each head's overfitting-to-generalisation ratio, re-estimated every
super-epoch on a part of the TRAINING split held out for this (``ctx.holdout_loader``).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ModelOutput
from .base import FitContext, Method, register_method, require_unimodal_heads

__all__ = ["GBlending", "blend_weights", "head_logits"]

log = logging.getLogger(__name__)

FUSED = "fused"


def head_logits(output: ModelOutput) -> dict[str, torch.Tensor]:
    """Head name -> (B, C) logits: ``fused`` and one entry per modality."""
    return {FUSED: output.logits, **output.unimodal_logits}


def blend_weights(train_start: Mapping[str, float], val_start: Mapping[str, float],
                  train_end: Mapping[str, float], val_end: Mapping[str, float],
                  eps: float = 1e-8) -> dict[str, float]:
    """Eq. 6 of the paper: w_k ~ |dG_k| / dO_k^2, normalised to sum 1.

    With O = L_val - L_train: dG_k = L_val_k(start) - L_val_k(end) and
    dO_k = O_k(end) - O_k(start). dO_k^2 is floored at ``eps`` (1e-8) so a head whose
    overfitting did not change cannot divide by zero.
    """
    raw = {}
    for k in train_start:
        d_g = val_start[k] - val_end[k]
        d_o = (val_end[k] - train_end[k]) - (val_start[k] - train_start[k])
        raw[k] = abs(d_g) / max(d_o ** 2, eps)
    total = sum(raw.values())
    if total <= 0:
        return {k: 1.0 / len(raw) for k in raw}  # nothing generalised: fall back to uniform
    return {k: w / total for k, w in raw.items()}


@torch.no_grad()
def _head_losses(model: nn.Module, loader: Iterable, device: torch.device) -> dict[str, float]:
    """Mean CE of every head over ``loader`` in eval mode (no RNG is used)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for inputs, y in loader:
        y = y.to(device)
        out = model({m: x.to(device) for m, x in inputs.items()})
        for k, lg in head_logits(out).items():
            sums[k] = sums.get(k, 0.0) + float(F.cross_entropy(lg, y, reduction="sum"))
        n += y.numel()
    model.train(was_training)
    return {k: s / max(n, 1) for k, s in sums.items()}


@register_method("gblending")
class GBlending(Method):
    """Online G-Blending: loss = sum_k w_k CE(head_k) over the K unimodal heads and the fused one.

    Before the first estimate the weights are uniform, 1/(K+1). At the start of every
    super-epoch (epoch % super_epoch == 0, epoch 0 included unless ``estimate_first`` is
    False) a deep copy of the current model is trained for ``super_epoch`` epochs with the
    plain sum of all K+1 CEs (a fresh optimizer of the real one's type and settings) and the
    weights come from :func:`blend_weights` on each head's losses over the whole training
    split (``ctx.diag_train_loader``, eval mode) and over the holdout at the copy's start and
    end. The global torch RNG and the training loader's generator are restored afterwards, so
    the real run (and its resume) does not see the copy. Inference uses the fused head.

    Args:
        holdout: fraction of the TRAINING split held out as V (MultiBench: 0.08).
        super_epoch: n, the epochs of one super-epoch and of one estimate.
        estimate_first: also estimate at epoch 0 (Algorithm 2); False keeps uniform weights
            for the first super-epoch.
    """

    def __init__(self, holdout: float = 0.1, super_epoch: int = 5,
                 estimate_first: bool = True) -> None:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"gblending.holdout must lie in (0, 1), got {holdout}")
        if super_epoch < 1:
            raise ValueError(f"gblending.super_epoch must be >= 1, got {super_epoch}")
        self.holdout_fraction = holdout  # read by the trainer before the data are built
        self.super_epoch, self.estimate_first = super_epoch, estimate_first
        self.weights: dict[str, float] = {}
        self._estimate: dict[str, Any] = {}

    def model_overrides(self) -> dict[str, Any]:
        return {"unimodal_heads": True}

    def on_fit_start(self, ctx: FitContext) -> None:
        require_unimodal_heads(ctx.model, "gblending")
        if ctx.holdout_loader is None:
            raise ValueError("gblending needs ctx.holdout_loader (a held-out part of the "
                             "training split); the data were built without a holdout")
        if FUSED in ctx.model.encoders:
            raise ValueError(f"gblending: a modality may not be named {FUSED!r}")
        if not self.weights:
            heads = [FUSED, *ctx.model.encoders]
            self.weights = {k: 1.0 / len(heads) for k in heads}

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._estimate = {}
        due = ctx.epoch % self.super_epoch == 0 and (ctx.epoch > 0 or self.estimate_first)
        if due:
            self.weights = self.estimate(ctx)
            log.info("gblending weights at epoch %d: %s", ctx.epoch, self.weights)

    def estimate(self, ctx: FitContext) -> dict[str, float]:
        """Train a copy for ``super_epoch`` epochs and return the new blend weights."""
        gen = getattr(ctx.train_loader, "generator", None)
        gen_state = gen.get_state() if gen is not None else None
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the copy's dropout draws are undone
            model = copy.deepcopy(ctx.model)
            group = {k: v for k, v in ctx.optimizer.param_groups[0].items()
                     if k in ctx.optimizer.defaults}  # lr, momentum, ...: not initial_lr
            optimizer = type(ctx.optimizer)(model.parameters(), **group)
            start = (_head_losses(model, ctx.diag_train_loader, ctx.device),
                     _head_losses(model, ctx.holdout_loader, ctx.device))
            model.train()
            for _ in range(self.super_epoch):
                for inputs, y in ctx.train_loader:
                    y = y.to(ctx.device)
                    out = model({m: x.to(ctx.device) for m, x in inputs.items()})
                    loss = sum(F.cross_entropy(lg, y) for lg in head_logits(out).values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            end = (_head_losses(model, ctx.diag_train_loader, ctx.device),
                   _head_losses(model, ctx.holdout_loader, ctx.device))
        if gen is not None:
            gen.set_state(gen_state)
        self._estimate = {"train_start": start[0], "val_start": start[1],
                          "train_end": end[0], "val_end": end[1]}
        return blend_weights(start[0], start[1], end[0], end[1])

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        # one already-weighted term per head: ce_fused, ce_<m>, ...
        return {f"ce_{k}": self.weights[k] * F.cross_entropy(lg, labels)
                for k, lg in head_logits(output).items()}

    def on_train_epoch_end(self, ctx: FitContext) -> dict[str, Any]:
        report: dict[str, Any] = {"weights": dict(self.weights)}
        if self._estimate:
            report["estimate"] = self._estimate
        return {"gblending": report}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weights = {k: float(v) for k, v in state["weights"].items()}
