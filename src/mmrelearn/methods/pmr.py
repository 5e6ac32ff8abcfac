"""PMR: prototypical modal rebalance (Fan et al., "PMR: Prototypical Modal Rebalance for
Multimodal Learning", CVPR 2023).

Each modality gets class prototypes (class means of its features); a prototypical
cross-entropy (PCE) on the distances to them speeds up the modality that is behind.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..config import check_choice, check_number
from ..distributed import all_reduce_sum, reduce_floats
from ..models import ModelOutput
from .base import FitContext, Method, register_method, true_class_scores

__all__ = ["PMR", "prototype_logits", "prototype_scores", "pce_coefficients"]

log = logging.getLogger(__name__)


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative Euclidean distances ``-||z_i - c_k||_2``: ``(B, d), (C, d) -> (B, C)``.

    Squared distances are floored at 1e-12 so that sqrt has a finite gradient at 0.
    """
    sq = ((z[:, None, :] - protos[None, :, :]) ** 2).sum(-1)  # (B, C)
    return -sq.clamp_min(1e-12).sqrt()


#: s_m = sum over the batch of softmax(prototype logits of m)[y] (the release's score).
prototype_scores = true_class_scores


def pce_coefficients(scores: Mapping[str, float], alpha: float, form: str) -> dict[str, float]:
    """Coefficient of each modality's PCE; 0 for the best-scoring modality.

    Two modalities: rho = s_a / s_v; rho > 1 makes v the weaker one. A modality m with
    s_m < max_j s_j is weaker; its coefficient is ``alpha`` (``release``) or
    ``clip(max_j s_j / s_m - 1, 0, 1)`` (``paper``: gamma = rho - 1, beta = 1/rho - 1).
    """
    best = max(scores.values())
    out = {}
    for m, s in scores.items():
        if s >= best:
            out[m] = 0.0
        elif form == "release":
            out[m] = alpha
        else:
            out[m] = min(max(best / max(s, 1e-12) - 1.0, 0.0), 1.0)
    return out


@register_method("pmr")
class PMR(Method):
    """PMR (CVPR 2023): CE(fused) + PCE of the weaker modality (Sec. 3.2-3.3).

    Prototypes c_k^m (class means of z_m) are refreshed at the start of every epoch (the first
    refresh is before epoch 0) in eval mode without gradients, from the first
    ``max(1, floor(proto_fraction * n_batches))`` batches of the shuffled training loader, as
    released (a fixed-order pass would see the split sorted by class and miss most classes;
    the loader's generator is part of the checkpoint, so a resumed run draws the same batches).
    The refreshes at the start of epochs 0 and 1 take the new class means as they are (the
    release skips momentum in its update after epoch 0); from the start of epoch 2 on,
    ``c <- (1 - mu) c_new + mu c_old``. A class absent from those batches keeps its old
    prototype (zero before the first one). Works with any fusion and any K >= 2.

    Args:
        alpha: weight of the weaker modality's PCE (release form; scripts used 1-3).
        momentum: mu of the prototype update from epoch 2 on (paper 0.2; the authors'
            script 0.0).
        proto_fraction: fraction of training batches used for the prototypes.
        modulation_starts, modulation_ends: epochs (inclusive) where PCE / entropy are added.
        form: ``release`` (constant ``alpha``) or ``paper`` (beta/gamma = clip(rho - 1, 0, 1)
            plus an entropy term on the dominant modality).
        entropy_epochs: E_r, the epochs with the entropy term (paper form only).
        entropy_weight: weight of that entropy term (paper: 1e-2 or 1e-3).
    """

    supports_ddp = True  # prototype sums and counts, and the scores, summed over ranks

    def __init__(self, alpha: float = 1.0, momentum: float = 0.2, proto_fraction: float = 0.1,
                 modulation_starts: int = 0, modulation_ends: int = 10**9,
                 form: str = "release", entropy_epochs: int = 0,
                 entropy_weight: float = 1e-3) -> None:
        check_number("method.alpha", alpha, low=0)
        check_number("method.momentum", momentum, low=0, high=1)
        check_number("method.proto_fraction", proto_fraction, low=0, high=1, low_open=True)
        check_number("method.modulation_starts", modulation_starts, low=0, integer=True)
        check_number("method.modulation_ends", modulation_ends, low=0, integer=True)
        check_choice("method.form", form, ("release", "paper"))
        check_number("method.entropy_epochs", entropy_epochs, low=0, integer=True)
        check_number("method.entropy_weight", entropy_weight, low=0)
        self.alpha, self.momentum, self.proto_fraction = alpha, momentum, proto_fraction
        self.starts, self.ends = modulation_starts, modulation_ends
        self.form, self.entropy_epochs, self.entropy_weight = form, entropy_epochs, entropy_weight
        self.prototypes: dict[str, torch.Tensor] = {}  # modality -> (C, d_m)

    def on_fit_start(self, ctx: FitContext) -> None:
        if len(ctx.model.encoders) < 2:
            raise ValueError(f"pmr needs at least 2 modalities to rebalance, the model has "
                             f"{len(ctx.model.encoders)} ({list(ctx.model.encoders)})")

    @torch.no_grad()
    def compute_prototypes(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """Class means of z_m over the first batches of the shuffled training loader (eval mode)."""
        model, C = ctx.model, ctx.num_classes
        # floor as released, at least one batch; the 1e-9 absorbs float error (0.29 * 100)
        n_use = max(1, math.floor(self.proto_fraction * len(ctx.train_loader) + 1e-9))
        was_training = model.training
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        counts = torch.zeros(C, device=ctx.device)
        for i, (inputs, y) in enumerate(ctx.train_loader):
            if i >= n_use:
                break
            y = y.to(ctx.device)
            feats = model.encode({m: x.to(ctx.device) for m, x in inputs.items()})
            onehot = F.one_hot(y, C).float()  # (B, C)
            for m, z in feats.items():  # z: (B, d_m)
                sums[m] = sums.get(m, 0) + onehot.T @ z.float()  # (C, d_m)
            counts += onehot.sum(0)
        model.train(was_training)
        for m in sums:  # under DDP every rank saw its part of each batch: the global sums
            all_reduce_sum(sums[m])
        all_reduce_sum(counts)
        seen = counts > 0  # (C,)
        new = {}
        for m, s in sums.items():
            c_new = s / counts.clamp_min(1)[:, None]
            old = self.prototypes.get(m)
            if old is None:
                if not bool(seen.all()):
                    log.warning("pmr: classes %s absent from the prototype batches; their "
                                "prototypes start at zero", (~seen).nonzero().flatten().tolist())
                new[m] = c_new
            else:
                old = old.to(c_new)
                mu = self.momentum if ctx.epoch >= 2 else 0.0  # none after epoch 0 (release)
                mixed = (1 - mu) * c_new + mu * old
                new[m] = torch.where(seen[:, None], mixed, old)
        return new

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self.prototypes = self.compute_prototypes(ctx)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        zero = output.logits.new_zeros(())
        active = self.starts <= ctx.epoch <= self.ends
        logits = {m: prototype_logits(z, self.prototypes[m].to(z))
                  for m, z in output.features.items()}  # m -> (B, C)
        scores = reduce_floats(prototype_scores(logits, labels))  # of the global batch
        coef = pce_coefficients(scores, self.alpha, self.form)
        pce = zero
        if active:
            for m, c in coef.items():
                if c > 0:
                    pce = pce + c * F.cross_entropy(logits[m], labels)
        terms["pce"] = pce
        if self.form == "paper":
            ent = zero
            if active and ctx.epoch < self.entropy_epochs:
                dominant = max(scores, key=scores.get)
                p = F.softmax(logits[dominant], 1)  # (B, C)
                entropy = -(p * F.log_softmax(logits[dominant], 1)).sum(1).mean()
                ent = -self.entropy_weight * entropy  # minimising this maximises the entropy
            terms["entropy"] = ent
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": {m: p.detach().cpu().clone() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prototypes = {m: torch.as_tensor(p).clone() for m, p in state["prototypes"].items()}
