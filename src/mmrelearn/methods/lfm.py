"""LFM: dynamically learning the modality gap (Yang, Wan, Jiang, Xu, "Facilitating Multimodal
Classification via Dynamically Learning Modality Gap", NeurIPS 2024).

The loss trades CE on the mean of the unimodal predictions against an alignment loss J that
pulls the unimodal predictive distributions together, with weights that change over training:
L = 2 (alpha_1(e) CE(obar, y) + alpha_2(e) J), obar = (1/K) sum_m u_m. alpha follows the
release's fitted polynomial, or is learnt by one hypergradient step per epoch.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..models import ModelOutput
from .base import FitContext, Method, register_method

__all__ = ["LFM", "fitted_alpha", "alignment", "FITTED"]

log = logging.getLogger(__name__)

#: alpha_1(e) = sum_i c_i e^i (release ``getAlpha_Learnable_Fitted``); alpha_2 = 1 - alpha_1
FITTED = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08,
          -5.39717505e-11)
FITTED_EPOCHS = 200  # the release's run, on which the polynomial was fitted
#: the clip of the learnt alpha_2 (release)
ALPHA_RANGE = (0.05, 0.95)


def fitted_alpha(epoch: int) -> tuple[float, float]:
    """(alpha_1, alpha_2) at the 0-based ``epoch`` from the release's polynomial.

    Not copied from the release: the polynomial exceeds 1 at epochs 177-188 (peak 1.0105 at
    183), which made its alpha_2 = 1 - alpha_1 slightly negative (a reward for misalignment):
    alpha_1 is clipped to [0, 1]. It was fitted on 200 epochs and collapses after them (below 0
    from epoch 227): later epochs hold the value of epoch 199 (0.916).
    """
    e = float(min(epoch, FITTED_EPOCHS - 1))
    a1 = min(max(sum(c * e ** i for i, c in enumerate(FITTED)), 0.0), 1.0)
    return a1, 1.0 - a1


def alignment(logits: Sequence[torch.Tensor], form: str = "release") -> torch.Tensor:
    """J averaged over the modality pairs; each ``(B, C)``, batch mean.

    ``release``: 0.5 (KL(m || p) + KL(m || q)), m = (p + q) / 2 (what the release's
    ``F.kl_div(p.log(), m)`` computes: its "js_score" has the KL arguments reversed).
    ``js``: the Jensen-Shannon divergence 0.5 (KL(p || m) + KL(q || m)).
    """
    logp = [F.log_softmax(u, 1) for u in logits]  # log p, finite where softmax underflows
    total = 0
    pairs = list(itertools.combinations(range(len(logp)), 2))
    for i, j in pairs:
        m = 0.5 * (logp[i].exp() + logp[j].exp())  # (B, C)
        if form == "release":  # kl_div(log x, t) = sum t (log t - log x), batch mean
            kl = [F.kl_div(lx, m, reduction="batchmean") for lx in (logp[i], logp[j])]
        else:
            kl = [F.kl_div(m.log(), lx, reduction="batchmean", log_target=True)
                  for lx in (logp[i], logp[j])]
        total = total + 0.5 * (kl[0] + kl[1])
    return total / len(pairs)


@register_method("lfm")
class LFM(Method):
    """LFM (NeurIPS 2024), release form: L = 2 (alpha_1 CE(obar, y) + alpha_2 J), alpha_2 =
    1 - alpha_1; prediction argmax obar. ``fitted``: alpha_1 = :func:`fitted_alpha` of the
    epoch. ``learnt``: at every epoch start (epoch 0 included), on ``hyper_samples`` held-out
    samples in eval mode, alpha_2 <- clip(alpha_2 - lr_alpha a, 0.05, 0.95) with a the
    release's hypergradient (:meth:`_hypergradient`). Any K >= 2: obar is the mean of the K
    unimodal logits and J is averaged over the K (K - 1) / 2 pairs (BalanceBenchmark).

    Args:
        schedule: ``fitted`` (the README's run: alpha_1 from the fitted polynomial of the epoch)
            or ``learnt`` (the release's learnable variant: a hypergradient step per epoch).
        logits: ``heads`` (release: one linear head per modality, no fused head; training and
            inference use their mean) or ``split`` (BalanceBenchmark: split logits of the
            concat head, CE and the prediction on the fused logits).
        align: ``release`` (its "js_score", KL(m || p) terms) or ``js`` (true Jensen-Shannon).
        alpha_align_init: alpha_2 before the first learnt step (release 0.95; BB 0.05).
        lr_alpha: step size of the learnt alpha_2 (release 1e-4) ...
        halve_every: ... halved at epochs halve_every, 2 halve_every, ... (release 20).
        holdout: fraction of the TRAINING split held out for the learnt step (the release holds
            out 16 samples); ``learnt`` only.
        hyper_samples: holdout samples of each learnt step (release 8), drawn once from
            ``seed``.
        seed: seed of that draw.
    """

    def __init__(self, schedule: str = "fitted", logits: str = "heads", align: str = "release",
                 alpha_align_init: float = 0.95, lr_alpha: float = 1e-4, halve_every: int = 20,
                 holdout: float = 0.01, hyper_samples: int = 8, seed: int = 0) -> None:
        check_choice("method.schedule", schedule, ("fitted", "learnt"))
        check_choice("method.logits", logits, ("heads", "split"))
        check_choice("method.align", align, ("release", "js"))
        check_number("method.alpha_align_init", alpha_align_init, low=0, high=1)
        check_number("method.lr_alpha", lr_alpha, low=0)
        check_number("method.halve_every", halve_every, low=1, integer=True)
        check_number("method.holdout", holdout, low=0, high=1, low_open=True, high_open=True)
        check_number("method.hyper_samples", hyper_samples, low=1, integer=True)
        check_number("method.seed", seed, low=0, high=2**32 - 1, integer=True)
        self.schedule, self.logits, self.align = schedule, logits, align
        self.lr_alpha, self.halve_every, self.hyper_samples = lr_alpha, halve_every, hyper_samples
        self.seed = seed
        self.holdout_fraction = holdout if schedule == "learnt" else 0.0
        self.alpha = (1.0 - alpha_align_init, alpha_align_init)
        if schedule == "fitted":
            self.alpha = fitted_alpha(0)
        self.hypergrad: Optional[float] = None
        self._hyper_batch: Optional[tuple[dict[str, torch.Tensor], torch.Tensor]] = None

    def model_overrides(self) -> dict[str, Any]:
        return {"unimodal_heads": True} if self.logits == "heads" else {}

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"lfm needs at least 2 modalities, the model has {mods}")
        if self.logits == "heads" and getattr(model, "unimodal_heads", None) is None:
            raise ValueError("lfm (logits 'heads') needs one linear head per modality; build "
                             "the model with unimodal_heads=True (model_overrides asks for it)")
        if self.logits == "split" and (getattr(model, "head", None) is None or getattr(
                model.fusion, "slices", None) is None):
            raise ValueError(f"lfm with logits 'split' needs a concat fusion and a fused head "
                             f"(split logits); {type(model.fusion).__name__} has none: use "
                             f"logits 'heads'")
        if self.schedule == "learnt":
            self._hyper_batch = self._draw_hyper_batch(ctx)
        elif ctx.epochs > FITTED_EPOCHS:
            log.warning("lfm: the fitted alpha schedule covers %d epochs; epochs after %d keep "
                        "its last value", FITTED_EPOCHS, FITTED_EPOCHS - 1)

    def _draw_hyper_batch(self, ctx: FitContext):
        """``hyper_samples`` samples of the holdout, drawn once from ``seed`` (the holdout is
        stored by class: its first samples would all be one class)."""
        loader = ctx.holdout_loader
        batches = list(loader) if loader is not None else []
        if not batches:
            raise ValueError("lfm with schedule 'learnt' needs held-out training samples; "
                             "method.holdout gave none for this data: raise it")
        inputs = {m: torch.cat([b[0][m] for b in batches]) for m in batches[0][0]}
        labels = torch.cat([b[1] for b in batches])
        if len(labels) < self.hyper_samples:
            log.warning("lfm: the holdout has %d samples, fewer than method.hyper_samples=%d",
                        len(labels), self.hyper_samples)
        pick = np.random.default_rng(self.seed).permutation(len(labels))[:self.hyper_samples]
        pick = torch.from_numpy(pick)
        return ({m: x[pick].to(ctx.device) for m, x in inputs.items()},
                labels[pick].to(ctx.device))

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        if self.schedule == "fitted":
            self.alpha = fitted_alpha(ctx.epoch)
            return
        if ctx.epoch > 0 and ctx.epoch % self.halve_every == 0:
            self.lr_alpha /= 2  # cumulative, as released
        self.hypergrad = self._hypergradient(ctx)
        a2 = self.alpha[1] - self.lr_alpha * self.hypergrad
        a2 = min(max(a2, ALPHA_RANGE[0]), ALPHA_RANGE[1])
        self.alpha = (1.0 - a2, a2)

    def _unimodal(self, model: nn.Module, output: ModelOutput) -> dict[str, torch.Tensor]:
        if self.logits == "heads":
            return output.unimodal_logits  # m -> (B, C)
        w, b = model.head.weight, model.head.bias  # (C, D), (C,): with gradients
        k = len(output.features)
        return {m: z @ w[:, slice(*model.fusion.slices[m])].T + b / k
                for m, z in output.features.items()}

    def _losses(self, model: nn.Module, output: ModelOutput, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        uni = self._unimodal(model, output)
        fused = (torch.stack(list(uni.values())).mean(0) if self.logits == "heads"
                 else output.logits)  # obar (B, C), or the fused logits
        return F.cross_entropy(fused, labels), alignment(list(uni.values()), self.align)

    def _hypergradient(self, ctx: FitContext) -> float:
        """a = mean of the first parameter tensor's entries of H_theta(L_t) grad_theta(CE),
        L_t = alpha_1 CE + alpha_2 J on the hyper batch, in eval mode (release: the HVP of
        ``model.parameters()[0]``, a crude surrogate of the bilevel gradient)."""
        model = ctx.model
        params = [p for p in model.parameters() if p.requires_grad]
        inputs, labels = self._hyper_batch
        was_training = model.training
        model.eval()
        try:
            ce, j = self._losses(model, model(inputs), labels)
            total = self.alpha[0] * ce + self.alpha[1] * j
            g = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            h = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
            used = [i for i, (gi, hi) in enumerate(zip(g, h))
                    if gi is not None and hi is not None and gi.requires_grad]
            if 0 not in used:  # the first tensor has no second derivative
                return 0.0
            hvp = torch.autograd.grad([g[i] for i in used], params[0],
                                      grad_outputs=[h[i].detach() for i in used],
                                      allow_unused=True)[0]
        finally:
            model.train(was_training)
        return 0.0 if hvp is None else float(hvp.mean())

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        ce, j = self._losses(ctx.model, output, labels)
        return {"ce": 2 * self.alpha[0] * ce, "align": 2 * self.alpha[1] * j}

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        output = model(inputs)
        if self.logits == "split":
            return output.logits
        return torch.stack(list(output.unimodal_logits.values())).mean(0)  # obar (B, C)

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        report: dict[str, Any] = {"alpha_cls": self.alpha[0], "alpha_align": self.alpha[1]}
        if self.schedule == "learnt":
            report.update(lr_alpha=self.lr_alpha, hypergradient=self.hypergrad)
        return {"lfm": report}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": list(self.alpha), "lr_alpha": self.lr_alpha,
                "hypergrad": self.hypergrad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha = tuple(float(a) for a in state["alpha"])
        self.lr_alpha = float(state["lr_alpha"])
        h = state["hypergrad"]
        self.hypergrad = None if h is None else float(h)
