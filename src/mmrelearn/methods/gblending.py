"""G-Blending, online variant (Wang, Tran, Feiszli, "What Makes Training Multi-Modal
Classification Networks Hard?", CVPR 2020, Sec. 4 and Algorithm 2).

One linear head per modality on z_m plus the fused head; the loss blends their cross-entropies
with weights from each head's overfitting-to-generalisation ratio, re-estimated every
super-epoch on a part of the TRAINING split held out for this (``ctx.holdout_loader``).
"""
from __future__ import annotations

import copy
import inspect
import logging
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..distributed import average_gradients, batch_share, reduce_floats, sync_buffers
from ..models import ModelOutput, MultimodalModel
from .base import FitContext, Method, register_method, require_unimodal_heads

__all__ = ["GBlending", "blend_weights", "multibench_weights", "head_logits",
           "branch_parameters", "train_copy"]

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
    return _normalised(raw)


def multibench_weights(train_end: Mapping[str, float], val_end: Mapping[str, float],
                       floor: float = 1e-4) -> dict[str, float]:
    """MultiBench's form (``gb_estimate`` with ``delta=False``): end-of-estimate losses only.

    w_k ~ L_val_k(end) / max(O_k(end), floor)^2 with O = L_val - L_train, normalised to sum 1;
    a head that does not overfit (O_k <= floor) gets the largest ratio, not a division by 0.
    """
    raw = {k: val_end[k] / max(val_end[k] - train_end[k], floor) ** 2 for k in train_end}
    return _normalised(raw)


def _normalised(raw: Mapping[str, float]) -> dict[str, float]:
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
    # under DDP: summed over the ranks, which hold some of the batches each (maybe none)
    totals = reduce_floats({**{k: sums.get(k, 0.0) for k in (FUSED, *model.encoders)}, "": n})
    n = totals.pop("")
    return {k: s / max(n, 1) for k, s in totals.items()}


def branch_parameters(model: nn.Module, head: str) -> list[nn.Parameter]:
    """What one estimate copy trains: encoder k and unimodal head k for a modality k; for
    ``fused``, the whole model except the unimodal heads."""
    if head != FUSED:
        return [*model.encoders[head].parameters(), *model.unimodal_heads[head].parameters()]
    if getattr(model, "head", None) is None:  # the unimodal heads are the fused classifier
        return list(model.parameters())
    skip = {id(p) for p in model.unimodal_heads.parameters()}
    return [p for p in model.parameters() if id(p) not in skip]


def train_copy(ctx: FitContext, head: str, epochs: int) -> nn.Module:
    """A deep copy of ``ctx.model`` trained for ``epochs`` epochs on CE(``head``) alone.

    A unimodal copy runs only encoder ``head`` and its head (the K - 1 other encoders would
    receive no gradient), so it costs one branch's forward and backward, not the whole model's.
    A model with mid-fusion (its own ``encode``: MMTM, MBT) runs whole, as it is measured:
    head k's logits there read the other branches, which stay frozen.

    Its optimizer is fresh, of the real one's type and settings, and holds only
    :func:`branch_parameters`, so weight decay or momentum cannot move the rest. The global
    RNG (dropout) is restored afterwards; the caller restores the loader's generator.
    """
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = copy.deepcopy(ctx.model)
        # lr, momentum, ... as the constructor takes them: not initial_lr, nor defaults the
        # constructor fills itself (AdamW's decoupled_weight_decay)
        accepted = inspect.signature(type(ctx.optimizer)).parameters
        group = {k: v for k, v in ctx.optimizer.param_groups[0].items()
                 if k in ctx.optimizer.defaults and k in accepted}
        params = branch_parameters(model, head)
        optimizer = type(ctx.optimizer)(params, **group)
        model.train()
        alone = type(model).encode is MultimodalModel.encode  # late fusion: branches separate
        for _ in range(epochs):
            for i, (inputs, y) in enumerate(ctx.train_loader):
                y = y.to(ctx.device)
                if head == FUSED or not alone:
                    out = model({m: x.to(ctx.device) for m, x in inputs.items()})
                    logits = out.logits if head == FUSED else out.unimodal_logits[head]
                else:  # only branch k runs: the other encoders would get no gradient anyway
                    z = model.encoders[head](inputs[head].to(ctx.device))
                    logits = model.unimodal_heads[head](z)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # under DDP: the whole batch's gradient, as DDP gives the real model
                average_gradients(params, batch_share(ctx.train_loader, i, len(y)))
                optimizer.step()
        sync_buffers(model)  # rank 0's BatchNorm statistics for the measurements
    return model


@register_method("gblending")
class GBlending(Method):
    """Online G-Blending: loss = sum_k w_k CE(head_k) over the K unimodal heads and the fused one.

    Before the first estimate the weights are uniform, 1/(K+1). At the start of every
    super-epoch (epoch % super_epoch == 0, epoch 0 included unless ``estimate_first`` is
    False) K+1 separate copies of the current model are trained for ``super_epoch`` epochs
    (:func:`train_copy`): copy k on CE(unimodal head k) alone, updating only encoder k and
    head k, and one copy on CE(fused) alone. Each has a fresh optimizer of the real one's type
    and settings, and each sees the same batches (the training loader's generator is reset
    before every copy). Every head's mean loss is measured in eval mode over the whole
    training split (``ctx.diag_train_loader``) and over the holdout V: at the start on the
    current model, at the end on that head's own copy. The weights come from
    :func:`blend_weights` (``form="paper"``) or :func:`multibench_weights`
    (``form="multibench"``). The global torch RNG and the loader's generator are restored
    afterwards, so the real run (and its resume) does not see the copies. Inference uses the
    fused head.

    Args:
        holdout: fraction of the TRAINING split held out as V (MultiBench: 0.08).
        super_epoch: n, the epochs of one super-epoch and of one estimate (MultiBench: 20).
        estimate_first: also estimate at epoch 0 (Algorithm 2); False keeps uniform weights
            for the first super-epoch.
        form: ``paper`` (Eq. 6, |dG| / dO^2 from start/end deltas) or ``multibench``
            (L_val(end) / O(end)^2).
    """

    # each copy's gradients averaged over ranks, every head loss summed over them
    supports_ddp = True

    def __init__(self, holdout: float = 0.08, super_epoch: int = 20,
                 estimate_first: bool = True, form: str = "paper") -> None:
        check_number("method.holdout", holdout, low=0, high=1, low_open=True, high_open=True)
        check_number("method.super_epoch", super_epoch, low=1, integer=True)
        check_choice("method.estimate_first", estimate_first, (True, False))
        check_choice("method.form", form, ("paper", "multibench"))
        self.holdout_fraction = holdout  # read by the trainer before the data are built
        self.super_epoch, self.estimate_first, self.form = super_epoch, estimate_first, form
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
        """Train one copy per head for ``super_epoch`` epochs; return the new blend weights."""
        gen = getattr(ctx.train_loader, "generator", None)
        gen_state = gen.get_state() if gen is not None else None
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        # the trainer's evaluation loaders draw nothing from the global RNG; a loader without
        # a generator would, so the whole estimate runs in a fork of it
        with torch.random.fork_rng(devices=devices):
            train_start = _head_losses(ctx.model, ctx.diag_train_loader, ctx.device)
            val_start = _head_losses(ctx.model, ctx.holdout_loader, ctx.device)
            train_end, val_end = {}, {}
            for k in train_start:  # fused, then each modality
                if gen is not None:
                    gen.set_state(gen_state)  # the batch order the real run will see
                model = train_copy(ctx, k, self.super_epoch)
                train_end[k] = _head_losses(model, ctx.diag_train_loader, ctx.device)[k]
                val_end[k] = _head_losses(model, ctx.holdout_loader, ctx.device)[k]
                del model
        if gen is not None:
            gen.set_state(gen_state)
        self._estimate = {"train_start": train_start, "val_start": val_start,
                          "train_end": train_end, "val_end": val_end}
        if self.form == "multibench":
            return multibench_weights(train_end, val_end)
        return blend_weights(train_start, val_start, train_end, val_end)

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
