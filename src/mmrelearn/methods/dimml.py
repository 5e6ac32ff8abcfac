"""DI-MML: detached and interactive multimodal learning (Fan, Xu, Wang, Liu, Guo, ACM MM 2024),
as in the authors' release (fanyunfeng-bit/DI-MML @83b9b7a, ``main_CFT.py``,
``main_CFT_stage2.py``, ``loss/contrast_loss.py``).

Stage 1 trains every encoder with its own head H_m, plus one head S shared by all modalities
and, from epoch ``duc_start``, the dimension-decoupled unidirectional contrastive loss (DUC):
modality j learns the feature dimensions only modality m discriminates from sg(z_m).
Stage 2 freezes the encoders and trains the concat head F on [z_1; ...; z_K]; prediction
weights the K + 1 predictors per sample by their certainty. Stage 1 is a prerequisite run of
stage 2 (``RUN_DIR/prerequisites/stage1``), so one command trains both.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, check_choice, check_number
from ..models import ModelOutput
from .base import (FitContext, Method, feature_dims, register_method, require_equal_dims,
                   require_unimodal_heads)

__all__ = ["DIMML", "class_means", "dimension_accuracy", "top_dimensions",
           "exclusive_dimensions", "duc_loss", "certainty_weights", "certainty_combine",
           "FUSED"]

log = logging.getLogger(__name__)

FUSED = "fused"  # the stage-2 head F among the predictors of the reports
_CHUNK = 2 ** 22  # distance entries (samples x classes x dims) computed at once


def class_means(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu_c = mean of z over the samples of class c: ``(N, d)`` -> ``(C, d)``; NaN rows for a
    class without samples (the release divides by a zero count too; they are skipped)."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    sums.index_add_(0, y, z)
    counts = torch.bincount(y, minlength=num_classes).to(z.dtype)
    return sums / counts[:, None]


def dimension_accuracy(z: torch.Tensor, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """acc_j = mean_i 1[argmin_c |z_ij - mu_cj| = y_i], ties to the lowest class: ``(d,)``."""
    c = mu.shape[0]
    present = ~torch.isnan(mu[:, 0])  # (C,)
    classes = torch.arange(c, device=z.device)[None, :, None]  # (1, C, 1)
    step = max(1, _CHUNK // (c * z.shape[1]))
    correct = torch.zeros(z.shape[1], device=z.device)
    for s in range(0, len(z), step):
        dist = (z[s:s + step, None, :] - mu[None]).abs()  # (n, C, d)
        dist[:, ~present] = float("inf")
        is_min = dist == dist.min(1, keepdim=True).values
        chat = torch.where(is_min, classes, c).min(1).values  # (n, d): the lowest nearest
        correct += (chat == y[s:s + step, None]).sum(0)
    return correct / len(z)


def top_dimensions(acc: torch.Tensor) -> list[int]:
    """T = {j : acc_j > mean_j acc_j}, ascending."""
    return torch.nonzero(acc > acc.mean()).flatten().tolist()


def exclusive_dimensions(top: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """D_m = T_m minus the union of the other modalities' T_j (K = 2: A = T_a \\ T_v, V =
    T_v \\ T_a)."""
    out = {}
    for m, t in top.items():
        others = set().union(*(set(top[j]) for j in top if j != m))
        out[m] = sorted(set(t) - others)
    return out


def duc_loss(features: Mapping[str, torch.Tensor], dims: Mapping[str, Sequence[int]],
             tau: float) -> torch.Tensor:
    """L_DUC = sum over m with D_m non-empty and j != m of
    (1/B) sum_i -log softmax_k(z_j,i[D_m] . sg(z_m,k[D_m]) / tau)[i]: modality j learns the
    dimensions only m discriminates, from m's features (never the other way round). K = 2:
    L_v + L_a of the release's ``SupConLoss`` (computed in log space: no overflow)."""
    z0 = next(iter(features.values()))
    total = z0.new_zeros(())
    target = torch.arange(len(z0), device=z0.device)
    for m, cols in dims.items():
        if not cols:  # the release adds the constant log B here: no gradient either way
            continue
        idx = torch.as_tensor(list(cols), device=z0.device)
        teacher = features[m][:, idx].detach()  # (B, |D_m|)
        for j, z in features.items():
            if j != m:
                logits = z[:, idx] @ teacher.T / tau  # (B, B): row i against every k
                total = total + F.cross_entropy(logits, target)
    return total


def certainty_weights(logits: Sequence[torch.Tensor], tau2: float) -> torch.Tensor:
    """w = softmax over the K predictors of (c_k / tau2), c_k = max softmax(o_k): ``(B, K)``."""
    c = torch.stack([F.softmax(o, 1).max(1).values for o in logits], 1)  # (B, K)
    return F.softmax(c / tau2, 1)


def certainty_combine(logits: Sequence[torch.Tensor], tau2: float) -> torch.Tensor:
    """out = sum_k w_k o_k per sample (release ``valid_combine_classifier``): ``(B, C)``."""
    w = certainty_weights(logits, tau2)
    return sum(w[:, k:k + 1] * o for k, o in enumerate(logits))


@register_method("dimml")
class DIMML(Method):
    """DI-MML (ACM MM 2024). ``stage=2`` (default) is the whole method in one run: its
    prerequisite ``stage1`` trains the encoders, then this run trains the head F on frozen
    encoders. The model is the same in both: concat fusion with its head (F), one head per
    modality (H_m) and the shared head S (``model.method_modules["shared"]``).

    Stage 1: loss sum_m CE(H_m z_m) + w sum_m CE(S z_m) + L_DUC (:func:`duc_loss`) from epoch
    ``duc_start``, whose dimensions are found once at its start on the training split
    (:func:`dimension_accuracy`). Scored by the certainty weighting of the K heads H_m (the
    release scores each H_m alone; one run needs one prediction, and this is stage 2's rule
    without F). Stage 2: loads the stage-1 best checkpoint once, trains F alone with CE on the
    features of the frozen encoders (eval mode, no grad), predicts with the certainty
    weighting of H_1..H_K and F (:func:`certainty_combine`).

    Args:
        stage: 2 (the full method) or 1 (stage 1 alone: what the prerequisite run is).
        w: weight of the shared-head CE terms (release 1).
        tau: DUC temperature (release: CREMA-D 50, AVE 10, UCF 10, ModelNet 50).
        duc_start: epoch (0-based) from which DUC is on; its dimensions are computed at its
            start (release 20).
        tau2: temperature of the certainty weighting (release: CREMA-D 1, AVE 3, UCF 1,
            ModelNet 3).
        stage1_epochs: epochs of the stage-1 run (release 150; stage 2: 20 = ``train.epochs``);
            null: the run's ``train.epochs``.
    """

    def __init__(self, stage: int = 2, w: float = 1.0, tau: float = 50.0, duc_start: int = 20,
                 tau2: float = 1.0, stage1_epochs: Optional[int] = None) -> None:
        check_choice("method.stage", stage, (1, 2))
        check_number("method.w", w, low=0)
        check_number("method.tau", tau, low=0, low_open=True)
        check_number("method.duc_start", duc_start, low=0, integer=True)
        check_number("method.tau2", tau2, low=0, low_open=True)
        check_number("method.stage1_epochs", stage1_epochs, low=1, integer=True, null=True)
        if stage == 1 and stage1_epochs is not None:
            raise ConfigError("method.stage1_epochs is the length of the stage-1 run of stage "
                              "2; with stage 1 set train.epochs instead")
        self.stage, self.w, self.tau, self.duc_start = stage, w, tau, duc_start
        self.tau2, self.stage1_epochs = tau2, stage1_epochs
        self.dims: Optional[dict[str, list[int]]] = None  # stage 1: D_m, from duc_start on
        self.top_sizes: Optional[dict[str, int]] = None  # |T_m|, for the report
        self.loaded = False  # stage 2: the stage-1 weights are in the model
        self._new_dims = False  # computed this epoch: reported at its end
        self._duc_sum, self._duc_n = 0.0, 0

    # ------------------------------------------------------------ what the run needs
    def model_overrides(self) -> dict[str, Any]:
        return {"unimodal_heads": True}

    def prerequisites(self) -> dict[str, dict[str, Any]]:
        if self.stage == 1:
            return {}
        method = {"name": "dimml", "stage": 1, "w": self.w, "tau": self.tau,
                  "duc_start": self.duc_start, "tau2": self.tau2}
        partial: dict[str, Any] = {"method": method}
        if self.stage1_epochs is not None:
            partial["train"] = {"epochs": self.stage1_epochs}
        return {"stage1": partial}

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        mods = list(model.encoders)
        if len(mods) < 2:
            raise ValueError(f"dimml needs at least 2 modalities, the model has {mods}")
        if getattr(getattr(model, "fusion", None), "slices", None) is None \
                or getattr(model, "head", None) is None:
            name = type(getattr(model, "fusion", model)).__name__
            raise ValueError(f"dimml needs concat fusion with a linear head (its stage-2 head F "
                             f"classifies [z_1; ...; z_K]); {name} is not one: set "
                             f"model.fusion: concat")
        require_unimodal_heads(model, "dimml")
        d = require_equal_dims(feature_dims(model), "dimml", "one head S shared by every "
                               "modality")
        return {"shared": nn.Linear(d, num_classes)}

    def on_fit_start(self, ctx: FitContext) -> None:
        if self.stage == 1:
            if self.duc_start >= ctx.epochs:
                log.warning("dimml: duc_start=%d but stage 1 has %d epochs: no DUC loss",
                            self.duc_start, ctx.epochs)
            return
        if self.loaded:  # resumed: the checkpoint holds the stage-1 weights and F's training
            return
        run = ctx.extras.get("prerequisites", {}).get("stage1")
        if run is None:
            raise ValueError("dimml stage 2 needs its stage-1 run (prerequisite 'stage1'); "
                             "train through mmrelearn train / mmrelearn.train.train, which "
                             "trains it first")
        from ..train.checkpoint import load_checkpoint  # not at import: train imports methods

        best = load_checkpoint(run / "checkpoints" / "best.pt", map_location=ctx.device)
        ctx.model.load_state_dict(best["model"])  # in place: the optimizer keeps its params
        self.loaded = True
        log.info("dimml: stage-1 weights of epoch %d loaded from %s", best["epoch"], run)

    # ------------------------------------------------------------ stage 1
    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._duc_sum, self._duc_n = 0.0, 0
        if self.stage == 1 and self.dims is None and ctx.epoch >= self.duc_start:
            self._find_dimensions(ctx)

    @torch.no_grad()
    def _find_dimensions(self, ctx: FitContext) -> None:
        """T_m and D_m from the whole training split, eval mode (release ``get_indices``)."""
        model = ctx.model
        was_training = model.training
        model.eval()
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in model.encoders}
        labels = []
        for inputs, y in ctx.diag_train_loader:
            z = model.encode({m: x.to(ctx.device) for m, x in inputs.items()})
            for m in feats:
                feats[m].append(z[m])
            labels.append(y.to(ctx.device))
        model.train(was_training)
        y = torch.cat(labels)
        top = {}
        for m, parts in feats.items():
            z = torch.cat(parts)
            top[m] = top_dimensions(dimension_accuracy(z, y, class_means(z, y, ctx.num_classes)))
        self.dims = exclusive_dimensions(top)
        self.top_sizes = {m: len(t) for m, t in top.items()}
        self._new_dims = True
        log.info("dimml: epoch %d, |T_m| %s, |D_m| %s", ctx.epoch, self.top_sizes,
                 {m: len(d) for m, d in self.dims.items()})

    # ------------------------------------------------------------ training
    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        if self.stage == 1:
            return ctx.model(inputs)
        model = ctx.model
        model.encoders.eval()  # frozen: no dropout, BatchNorm statistics untouched
        with torch.no_grad():
            features = model.encode(inputs)
        return ModelOutput(logits=model.head(model.fusion(features)), features=features)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.stage == 2:  # F only
            return {"ce": F.cross_entropy(output.logits, labels)}
        terms = {f"ce_{m}": F.cross_entropy(u, labels)
                 for m, u in output.unimodal_logits.items()}
        if self.w > 0:
            shared = ctx.model.method_modules["shared"]
            for m, z in output.features.items():
                terms[f"shared_{m}"] = self.w * F.cross_entropy(shared(z), labels)
        if self.dims is not None:
            terms["duc"] = duc_loss(output.features, self.dims, self.tau)
        return terms

    def on_train_batch_end(self, ctx: FitContext, terms: Mapping[str, float]) -> None:
        if "duc" in terms:
            self._duc_sum += terms["duc"]
            self._duc_n += 1

    # ------------------------------------------------------------ prediction
    def _predictors(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        out = dict(output.unimodal_logits)  # H_m z_m
        if self.stage == 2:
            out[FUSED] = output.logits  # F [z_1; ...; z_K]
        return out

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return certainty_combine(list(self._predictors(model(inputs)).values()), self.tau2)

    @torch.no_grad()
    def _val_report(self, ctx: FitContext) -> dict[str, Any]:
        """Each predictor's validation accuracy alone and its mean certainty weight."""
        model = ctx.model
        was_training = model.training
        model.eval()
        correct: dict[str, float] = {}
        weight: dict[str, float] = {}
        n = 0
        for inputs, y in ctx.val_loader:
            y = y.to(ctx.device)
            pred = self._predictors(model({m: x.to(ctx.device) for m, x in inputs.items()}))
            w = certainty_weights(list(pred.values()), self.tau2).sum(0)
            for k, (name, o) in enumerate(pred.items()):
                correct[name] = correct.get(name, 0.0) + float((o.argmax(1) == y).sum())
                weight[name] = weight.get(name, 0.0) + float(w[k])
            n += len(y)
        model.train(was_training)
        n = max(n, 1)
        return {"acc": {k: v / n for k, v in correct.items()},
                "weight_mean": {k: v / n for k, v in weight.items()}}

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        report: dict[str, Any] = {"stage": self.stage}
        if self.stage == 1:
            report["duc"] = self._duc_sum / self._duc_n if self._duc_n else None
            if self._new_dims:
                report["dimensions"] = {"top": dict(self.top_sizes),
                                        "exclusive": {m: len(d) for m, d in self.dims.items()}}
                self._new_dims = False
        report["val"] = self._val_report(ctx)
        return {"dimml": report}

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"dims": None if self.dims is None else {m: list(d) for m, d in self.dims.items()},
                "top_sizes": None if self.top_sizes is None else dict(self.top_sizes),
                "loaded": self.loaded}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        dims, sizes = state["dims"], state["top_sizes"]
        self.dims = None if dims is None else {m: [int(j) for j in d] for m, d in dims.items()}
        self.top_sizes = None if sizes is None else {m: int(v) for m, v in sizes.items()}
        self.loaded = bool(state["loaded"])
