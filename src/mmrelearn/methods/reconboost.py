"""ReconBoost: boosting with modality reconcilement (Hua, Xu, Bao, Yang, Huang, "ReconBoost:
Boosting Can Achieve Modality Reconcilement", ICML 2024), as in the authors' release
(huacong/ReconBoost @14ab57a, ``train.py``, ``models/dynamic_net.py``).

Every modality's network f_m = H(E_m(x_m)) is a learner of the ensemble F = rho sum_m f_m, H one
head shared by all learners, rho a learnt boost rate. Stage s takes learner m = order[s mod K]:
phase 1 fits f_m with a boosting loss that down-weights the samples the other learners already
fit, phase 2 fine-tunes every learner on CE(F). Each phase has a new SGD optimizer of its own.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, check_choice, check_number
from .base import (FitContext, Method, feature_dims, register_method, require_equal_dims,
                   unimodal_weights)

__all__ = ["ReconBoost", "BoostRate", "shared_head", "true_class_prob", "boosting_loss",
           "stage_of"]

log = logging.getLogger(__name__)


class BoostRate(nn.Module):
    """rho, the ensemble's learnt scale (release ``boost_rate``), as one scalar parameter."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho * x


def shared_head(d: int, hidden: int, num_classes: int) -> nn.Module:
    """H = Linear(d, hidden) - ReLU - Linear(hidden, C) (release ``Head``, hidden 256)."""
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def true_class_prob(logits: Optional[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """q_i = softmax(F_-m)_i[y_i], (B,); all ones when no other learner is in the ensemble
    (the release's constant c0 expanded to (B, 1): its softmax over one column is 1)."""
    if logits is None:
        return torch.ones(len(labels), device=labels.device)
    return F.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)


def boosting_loss(logits: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, w1: float,
                  w2: float) -> torch.Tensor:
    """mean_i (w1 - w2 q_i) / C * (-log p_i), p_i = softmax(f_m(x_i))[y_i]: the release's
    ``-w1 (t * log_softmax).mean(-1) + w2 (t * q * log_softmax).mean(-1)``; ``logits`` (B, C)."""
    nll = F.cross_entropy(logits, labels, reduction="none")  # -log p_i, (B,)
    return ((w1 - w2 * q.detach()) / logits.shape[1] * nll).mean()


def stage_of(epoch: int, epochs_per_stage: int, correct_epoch: int) -> tuple[int, int]:
    """(stage, phase) of a 0-based epoch: each stage is ``epochs_per_stage`` epochs of phase 1
    then ``correct_epoch`` epochs of phase 2."""
    stage, within = divmod(epoch, epochs_per_stage + correct_epoch)
    return stage, 1 if within < epochs_per_stage else 2


@register_method("reconboost")
class ReconBoost(Method):
    """ReconBoost (ICML 2024, release). Modules of its own (``extra_modules``): the shared head
    H, rho and, with ``pretrain``, each learner's pretrained linear fc. Learner m predicts with
    its fc until its first stage, then with H; the fcs are never trained (the release's phase-2
    optimizer leaves out every ``fc``). Without ``pretrain`` a learner joins the ensemble at its
    first stage, so stage 0 sees q = 1. Prediction: argmax rho sum_m f_m, eval mode. The run's
    optimizer (``optim.*``) and scheduler (``schedule.*``) are not used.

    Args:
        w1, w2: boosting weights (CREMA-D 5, 1; AVE w1 4; MOSEI/MOSI/SIMS 1, 0.25).
        epochs_per_stage: phase-1 epochs of a stage (4).
        correct_epoch: phase-2 epochs of a stage (4; 0 skips phase 2).
        m_lr, e_lr: learning rates of the phase-1 and phase-2 SGD (0.01 each) ...
        momentum, weight_decay: ... with this momentum and weight decay (0.9, 5e-4) ...
        lr_gamma, lr_decay_stages: ... both lrs times lr_gamma every lr_decay_stages stages
            (CREMA-D: 0.1 every 30).
        boost_rate: rho's initial value (1.0).
        hidden: H's hidden width (256).
        order: the modalities' cyclic order of stages (null: the encoders' order).
        pretrain: start from uni-modal joint runs (prerequisites ``pretrain_<m>``).
        pretrain_epochs: their epochs (null: this run's ``train.epochs``).
    """

    own_step_scales_loss = True  # ctx.backward / ctx.optimizer_step: 16-mixed works

    def __init__(self, w1: float = 5.0, w2: float = 1.0, epochs_per_stage: int = 4,
                 correct_epoch: int = 4, m_lr: float = 0.01, e_lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4, lr_gamma: float = 0.1,
                 lr_decay_stages: int = 30, boost_rate: float = 1.0, hidden: int = 256,
                 order: Optional[list[str]] = None, pretrain: bool = True,
                 pretrain_epochs: Optional[int] = None) -> None:
        check_number("method.w1", w1, low=0, low_open=True)
        check_number("method.w2", w2, low=0)
        if w2 > w1:
            raise ConfigError(f"method.w2 must not exceed method.w1 (the weights (w1 - w2 q)/C "
                              f"would turn negative), got w1={w1!r}, w2={w2!r}")
        check_number("method.epochs_per_stage", epochs_per_stage, low=1, integer=True)
        check_number("method.correct_epoch", correct_epoch, low=0, integer=True)
        for key, lr in (("m_lr", m_lr), ("e_lr", e_lr)):
            check_number(f"method.{key}", lr, low=0, low_open=True)
        check_number("method.momentum", momentum, low=0, high=1, high_open=True)
        check_number("method.weight_decay", weight_decay, low=0)
        check_number("method.lr_gamma", lr_gamma, low=0, high=1, low_open=True)
        check_number("method.lr_decay_stages", lr_decay_stages, low=1, integer=True)
        check_number("method.boost_rate", boost_rate, low=0, low_open=True)
        check_number("method.hidden", hidden, low=1, integer=True)
        if order is not None and (not isinstance(order, (list, tuple)) or not order or any(
                not isinstance(m, str) for m in order) or len(set(order)) != len(order)):
            raise ConfigError(f"method.order must be null or a list of distinct modality "
                              f"names, got {order!r}")
        check_choice("method.pretrain", pretrain, (True, False))
        check_number("method.pretrain_epochs", pretrain_epochs, low=1, integer=True, null=True)
        self.w1, self.w2, self.eps, self.ce_epochs = w1, w2, epochs_per_stage, correct_epoch
        self.lrs = {1: m_lr, 2: e_lr}
        self.momentum, self.weight_decay = momentum, weight_decay
        self.lr_gamma, self.lr_decay_stages = lr_gamma, lr_decay_stages
        self.boost_rate, self.hidden, self.pretrain = boost_rate, hidden, pretrain
        self.pretrain_epochs = pretrain_epochs
        self.order: Optional[list[str]] = list(order) if order is not None else None
        self._modalities: Optional[list[str]] = None
        self._stage, self._phase, self._loaded = 0, 1, False
        self._opt: Optional[torch.optim.Optimizer] = None
        self._opt_key: Optional[list[int]] = None
        self._pending: Optional[dict[str, Any]] = None  # a resumed phase's optimizer state
        self._q_sum, self._n = 0.0, 0

    # ------------------------------------------------------------ model and prerequisites
    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        mods = list(model.encoders)
        if len(mods) < 2:
            raise ValueError(f"reconboost needs at least 2 modalities (one learner each), the "
                             f"model has {mods}")
        if getattr(model, "head", None) is None:
            raise ValueError(f"reconboost needs independent late-fused encoders (each learner "
                             f"is H(E_m(x_m))); {type(model).__name__} mixes its modalities "
                             f"inside: use fusion 'concat' or 'sum'")
        d = require_equal_dims(feature_dims(model), self.name,
                               "one head H shared by every learner")
        if self.order is not None and sorted(self.order) != sorted(mods):
            raise ValueError(f"method.order must name every modality once, got {self.order} "
                             f"for the model's {mods}")
        self._modalities, self.order = mods, self.order or mods
        extra: dict[str, nn.Module] = {"head": shared_head(d, self.hidden, num_classes),
                                       "rho": BoostRate(self.boost_rate)}
        if self.pretrain:  # loaded from the prerequisites in on_fit_start, never trained
            extra["pretrained_fc"] = nn.ModuleDict(
                {m: nn.Linear(d, num_classes).requires_grad_(False) for m in mods})
        return extra

    def prerequisites(self) -> dict[str, dict[str, Any]]:
        """One uni-modal joint run per modality (concat fusion: its head is a linear fc on
        z_m), when ``pretrain``."""
        if not self.pretrain:
            return {}
        if self._modalities is None:
            raise RuntimeError("reconboost: prerequisites() needs the model's modalities; "
                               "extra_modules(model, ...) must come first")
        train = {"train": {"epochs": self.pretrain_epochs}} if self.pretrain_epochs else {}
        return {f"pretrain_{m}": {"data": {"modalities": [m]}, "method": {"name": "joint"},
                                  "model": {"fusion": "concat", "fusion_dim": None}, **train}
                for m in self._modalities}

    def on_fit_start(self, ctx: FitContext) -> None:
        extra = getattr(ctx.model, "method_modules", None)
        if extra is None or "head" not in extra:
            raise ValueError("reconboost: the model lacks its modules (head, rho); build it "
                             "with mmrelearn.train.build_trainer")
        log.info("reconboost trains with its own SGD per phase: optim.* and schedule.* are "
                 "not used")
        stage_len = self.eps + self.ce_epochs
        if ctx.epochs < stage_len * len(self.order):
            log.warning("reconboost: %d epochs give fewer than one stage (%d epochs) per "
                        "modality", ctx.epochs, stage_len)
        if self.pretrain and not self._loaded:  # once: a resumed run keeps its trained weights
            self._load_pretrained(ctx)
            self._loaded = True

    def _load_pretrained(self, ctx: FitContext) -> None:
        """Each encoder and its fc from its prerequisite's ``checkpoints/best.pt``."""
        dirs = ctx.extras.get("prerequisites", {})
        for m, enc in ctx.model.encoders.items():
            if f"pretrain_{m}" not in dirs:
                raise ValueError(f"reconboost (pretrain true) needs the prerequisite run "
                                 f"'pretrain_{m}'; train through mmrelearn.train.train, or set "
                                 f"method.pretrain false")
            encoder, head = unimodal_weights(dirs[f"pretrain_{m}"], m, ctx.device)
            enc.load_state_dict(encoder)
            ctx.model.method_modules["pretrained_fc"][m].load_state_dict(head)
        log.info("reconboost: encoders and fcs loaded from %s", sorted(dirs))

    # ------------------------------------------------------------ the ensemble
    def _started(self, m: str, stage: int) -> bool:
        return self.order.index(m) <= stage  # learner m's first stage is its place in order

    def _members(self, stage: int) -> list[str]:
        """The learners in F: all pretrained ones, else those whose first stage has come."""
        return [m for m in self._modalities or self.order
                if self.pretrain or self._started(m, stage)]

    def _learner(self, model: nn.Module, m: str, x: torch.Tensor, stage: int) -> torch.Tensor:
        """f_m(x) = H(E_m(x)), or fc_m(E_m(x)) before learner m's first stage; (B, C)."""
        z = model.encoders[m](x)
        if self._started(m, stage):
            return model.method_modules["head"](z)
        return model.method_modules["pretrained_fc"][m](z)

    def _ensemble(self, model: nn.Module, inputs: Mapping[str, torch.Tensor],
                  learners: Sequence[str], stage: int) -> Optional[torch.Tensor]:
        """rho sum over ``learners`` of f_m, (B, C); None for no learner."""
        if not learners:
            return None
        total = sum(self._learner(model, m, inputs[m], stage) for m in learners)
        return model.method_modules["rho"](total)

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._ensemble(model, inputs, self._members(self._stage), self._stage)

    # ------------------------------------------------------------ the stages
    def lr(self, stage: int, phase: int) -> float:
        """The phase's learning rate at ``stage``: x lr_gamma every lr_decay_stages stages."""
        return self.lrs[phase] * self.lr_gamma ** (stage // self.lr_decay_stages)

    def _new_optimizer(self, model: nn.Module, stage: int, phase: int) -> torch.optim.Optimizer:
        """Phase 1: E_m and H; phase 2: every encoder, H and rho (never the fcs)."""
        extra = model.method_modules
        if phase == 1:
            modules = [model.encoders[self.order[stage % len(self.order)]], extra["head"]]
        else:
            modules = [*model.encoders.values(), extra["head"], extra["rho"]]
        params = [p for mod in modules for p in mod.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr(stage, phase), momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._stage, self._phase = stage_of(ctx.epoch, self.eps, self.ce_epochs)
        key = [self._stage, self._phase]
        if self._opt is None or self._opt_key != key:  # a phase's first epoch, or a resume
            self._opt = self._new_optimizer(ctx.model, *key)
            if self._pending is not None and self._pending["key"] == key:
                self._opt.load_state_dict(self._pending["state"])
            self._opt_key = key
        self._pending = None
        self._q_sum, self._n = 0.0, 0

    def training_step(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
        model, stage = ctx.model, self._stage
        members = self._members(stage)
        with ctx.autocast():  # train.precision; the scaler below (16-mixed) takes any optimizer
            if self._phase == 1:
                m = self.order[stage % len(self.order)]
                with torch.no_grad():  # F_-m, the other learners in train mode (as released)
                    rest = self._ensemble(model, inputs, [j for j in members if j != m], stage)
                q = true_class_prob(rest, labels).float()  # (B,); float32 under autocast too
                logits = self._learner(model, m, inputs[m], stage)
                terms = {"boost": boosting_loss(logits, q, labels, self.w1, self.w2)}
                self._q_sum, self._n = self._q_sum + q.sum(), self._n + len(q)
            else:
                terms = {"ce": F.cross_entropy(self._ensemble(model, inputs, members, stage),
                                               labels)}
        self._opt.zero_grad(set_to_none=True)  # a non-finite loss: the trainer stops the run
        ctx.backward(sum(terms.values()))
        ctx.optimizer_step(self._opt)
        return terms

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        report: dict[str, Any] = {
            "stage": self._stage, "phase": self._phase,
            "modality": self.order[self._stage % len(self.order)],
            "rho": float(ctx.model.method_modules["rho"].rho.detach()),
            "lr": self.lr(self._stage, self._phase)}
        if self._phase == 1 and self._n:
            report["q_mean"] = float(self._q_sum) / self._n
        return {"reconboost": report}

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self._stage, "phase": self._phase, "pretrained_loaded": self._loaded,
                "optimizer_key": self._opt_key,
                "optimizer": self._opt.state_dict() if self._opt is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._stage, self._phase = int(state["stage"]), int(state["phase"])
        self._loaded = bool(state["pretrained_loaded"])
        self._opt, self._opt_key = None, None
        key = state["optimizer_key"]
        self._pending = (None if state["optimizer"] is None
                         else {"key": [int(k) for k in key], "state": state["optimizer"]})
