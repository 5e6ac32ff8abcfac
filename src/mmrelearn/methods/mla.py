"""MLA: multimodal learning with alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao,
CVPR 2024; release Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ab6c184,
``main.py`` and ``utils/utils.py`` GSPlugin).

One head H shared by every modality is trained by alternating unimodal steps: per batch, one
optimizer step per modality on CE(H z_m), so no modality's gradient competes with another's
inside a step. H's weight gradient is projected with an orthogonal-weight-modification matrix P
so that a step for one modality does not undo what the earlier ones taught H. At test time the
unimodal predictions H z_m are fused with fixed weights or by their entropy.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, check_choice, check_number
from .base import (FitContext, Method, feature_dims, register_method,
                   require_equal_dims)

__all__ = ["MLA", "gs_alpha", "owm_update", "entropy_weights", "default_weights"]


def gs_alpha(batch: int, batches: int) -> float:
    """alpha = 0.1^(1 + b / N_b) for batch ``b`` of ``N_b`` in the epoch (release)."""
    return 0.1 ** (1 + batch / batches)


def owm_update(P: torch.Tensor, r: torch.Tensor, alpha: float,
               denominator: str = "scalar") -> torch.Tensor:
    """The projection matrix after one step, Frobenius-normalised; ``P`` (d, d), ``r`` (d,).

    k = P r^T; P <- P - k k^T / (alpha + r k); P <- P / ||P||_F. ``release_outer`` divides
    k k^T elementwise by alpha + k r (the d x d outer product), as the release's
    ``torch.mm(k, r)`` does; both agree when k k^T and k r are diagonal.
    """
    r = r.reshape(1, -1)  # (1, d)
    k = P @ r.T  # (d, 1)
    denom = alpha + (r @ k if denominator == "scalar" else k @ r)  # (1, 1) or (d, d)
    P = P - (k @ k.T) / denom
    return P / torch.linalg.matrix_norm(P)  # Frobenius


def entropy_weights(logits: Sequence[torch.Tensor], entropy: str = "per_sample"
                    ) -> torch.Tensor:
    """Dynamic fusion weights w_m = exp(max_j e_j - e_m) / sum_k exp(max_j e_j - e_k), i.e. a
    softmax over modalities of -e_m; ``logits`` K tensors (B, C).

    ``per_sample``: e_m = entropy of softmax over classes, per sample: returns (K, B, 1).
    ``release_batch``: the release's softmax over the batch (dim 0) summed over the whole
    batch, one weight per modality per batch (a prediction depends on its batch-mates):
    returns (K, 1, 1).
    """
    dim = 1 if entropy == "per_sample" else 0
    ents = []
    for u in logits:
        logp = F.log_softmax(u, dim=dim)  # log_softmax: no 0 * log 0 = nan where p underflows
        e = -(logp.exp() * logp).sum(1, keepdim=True)  # (B, 1)
        ents.append(e if dim == 1 else e.sum(0, keepdim=True))  # (B, 1) or (1, 1)
    return torch.softmax(-torch.stack(ents), dim=0)  # (K, B or 1, 1)


def default_weights(k: int) -> list[float]:
    """Fixed fusion weights in encoder order: 0.5/0.5 (release ``av_alpha``), the release's
    0.35/0.25/0.40 for three modalities (a, v, t), else 1/K."""
    if k == 2:
        return [0.5, 0.5]
    if k == 3:
        return [0.35, 0.25, 0.40]
    return [1.0 / k] * k


@register_method("mla")
class MLA(Method):
    """MLA (CVPR 2024, release): alternating unimodal steps through one shared head.

    Per batch: one forward of every encoder, then for each modality m in the model's encoder
    order: CE(H z_m, y), backward (only E_m and H get gradients), H.weight.grad <- grad P^T with
    P updated from r = mean_batch z_m (detached) except on the run's very first step, an
    optimizer step, zero_grad. The next modality's loss uses the updated H. The model's fused
    head is not used. Prediction: sum_m w_m H z_m.

    Args:
        gs_projection: project H's weight gradient (the paper and the first release); False
            reproduces the release at HEAD, whose parameter-name test never matches.
        gs_denominator: ``scalar`` (alpha + r k, orthogonal weight modification) or
            ``release_outer`` (the release's elementwise alpha + k r, a d x d matrix).
        release_momentum_carry: between a batch's steps, leave zero gradients instead of none
            (torch 1.8's zero_grad, the release), so an encoder stepped earlier in the batch
            moves again by momentum and weight decay in the later steps.
        fusion: ``fixed`` (``weights``) or ``dynamic`` (entropy weights, ``--dynamic``).
        weights: fixed fusion weights, one per modality in encoder order (default: 0.5/0.5;
            0.35/0.25/0.40 for three; else 1/K).
        entropy: dynamic fusion's entropy ``per_sample`` (softmax over classes) or the
            release's ``release_batch``.
    """

    def __init__(self, gs_projection: bool = True, gs_denominator: str = "scalar",
                 release_momentum_carry: bool = False, fusion: str = "fixed",
                 weights: Optional[list[float]] = None, entropy: str = "per_sample") -> None:
        for key, flag in (("gs_projection", gs_projection),
                          ("release_momentum_carry", release_momentum_carry)):
            check_choice(f"method.{key}", flag, (True, False))
        check_choice("method.gs_denominator", gs_denominator, ("scalar", "release_outer"))
        check_choice("method.fusion", fusion, ("fixed", "dynamic"))
        check_choice("method.entropy", entropy, ("per_sample", "release_batch"))
        if weights is not None:
            if not isinstance(weights, (list, tuple)) or not weights:
                raise ConfigError(f"method.weights must be a list of numbers (one per "
                                  f"modality) or null, got {weights!r}")
            for i, w in enumerate(weights):
                check_number(f"method.weights[{i}]", w, low=0)
            if sum(weights) <= 0:
                raise ConfigError(f"method.weights must not all be 0, got {weights!r}")
            if fusion != "fixed":
                raise ConfigError("method.weights are the fixed fusion's; method.fusion is "
                                  "'dynamic' (entropy weights): drop method.weights")
        self.gs_projection, self.gs_denominator = gs_projection, gs_denominator
        self.carry, self.fusion, self.entropy = release_momentum_carry, fusion, entropy
        self.weights = None if weights is None else [float(w) for w in weights]
        self.P: Optional[torch.Tensor] = None  # (d, d), created at the first step
        self.exp_count = 0  # optimizer steps taken over the run
        self._batch = 0  # batch index in the epoch (b of alpha)

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        if getattr(model, "head", None) is None:
            raise ValueError(f"mla steps one encoder at a time, so each modality's features "
                             f"must come from its own encoder; {type(model).__name__} fuses "
                             f"inside its encoders: use a late fusion (e.g. 'concat')")
        d = require_equal_dims(feature_dims(model), "mla", "one head shared by every modality")
        return {"head": nn.Linear(d, num_classes)}

    def on_fit_start(self, ctx: FitContext) -> None:
        mods = list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"mla needs at least 2 modalities, the model has {mods}")
        if self.weights is not None and len(self.weights) != len(mods):
            raise ValueError(f"mla: method.weights has {len(self.weights)} values, the model "
                             f"has {len(mods)} modalities {mods} (one weight each, in order)")

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._batch = 0

    def training_step(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
        model, opt = ctx.model, ctx.optimizer
        head = model.method_modules["head"]
        w = head.weight  # (C, d)
        if self.P is None:
            self.P = torch.eye(w.shape[1], device=w.device, dtype=w.dtype)
        self.P = self.P.to(w.device, w.dtype)
        alpha = gs_alpha(self._batch, len(ctx.train_loader))
        with ctx.autocast():  # train.precision (bf16; 16-mixed is refused: carried grads)
            features = model.encode(inputs)  # {m: (B, d)}, one forward of every encoder
        opt.zero_grad(set_to_none=True)
        terms = {}
        for m, z in features.items():
            with ctx.autocast():
                loss = F.cross_entropy(head(z), labels)  # H as updated by the previous steps
            loss.backward()  # a non-finite loss: the trainer stops the run (device-side flag)
            if self.gs_projection and self.exp_count != 0:
                with torch.no_grad():  # P stays float32: z is bf16 under autocast
                    self.P = owm_update(self.P, z.detach().float().mean(0), alpha,
                                        self.gs_denominator)
                    w.grad = w.grad @ self.P.T  # the bias gradient is left as it is
            opt.step()
            opt.zero_grad(set_to_none=not self.carry)
            self.exp_count += 1
            terms[f"ce_{m}"] = loss.detach()
        opt.zero_grad(set_to_none=True)  # the release's `del p.grad` at batch end
        self._batch += 1
        return terms

    def unimodal_logits(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """u_m = H z_m, ``{m: (B, C)}`` in encoder order."""
        head = model.method_modules["head"]
        return {m: head(z) for m, z in model.encode(inputs).items()}

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        u = list(self.unimodal_logits(model, inputs).values())
        if self.fusion == "dynamic":
            w = entropy_weights(u, self.entropy)  # (K, B or 1, 1)
            return sum(w[i] * u_m for i, u_m in enumerate(u))
        weights = self.weights or default_weights(len(u))
        return sum(w_m * u_m for w_m, u_m in zip(weights, u))

    def state_dict(self) -> dict[str, Any]:
        return {"P": None if self.P is None else self.P.detach().cpu().clone(),
                "exp_count": self.exp_count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.P = None if state["P"] is None else torch.as_tensor(state["P"]).clone()
        self.exp_count = int(state["exp_count"])
