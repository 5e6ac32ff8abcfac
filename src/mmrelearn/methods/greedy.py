"""Greedy: balanced multimodal learning via conditional learning speed (Wu, Jastrzebski, Cho,
Geras, "Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural
Networks", ICML 2022, Sec. 4 and Algorithm 1), on the MMTM model (``model.fusion: mmtm``).

Loss: CE of each branch's logits. After every backward the speeds M_main_m (branch m) and
M_bypass_m (the MMTM parameters feeding m) grow by sum ||grad p||^2 / sum ||p||^2; their
log-ratio gap d decides which branch to re-balance for the next steps: its MMTM gates are
replaced by their running averages so it must learn from its own input.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..models import MBTModel, ModelOutput, MMTMModel
from .base import FitContext, Method, register_method

__all__ = ["Greedy", "learning_speed"]

log = logging.getLogger(__name__)


def learning_speed(params: Iterable[nn.Parameter]) -> float:
    """``sum ||grad p||^2 / sum ||p||^2`` over ``params`` (a missing gradient counts as 0)."""
    params = list(params)
    w = torch.stack([p.detach().float().pow(2).sum() for p in params]).sum()
    g = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    g = torch.stack(g).sum() if g else torch.zeros_like(w)
    return float(g / w)


@register_method("greedy")
class Greedy(Method):
    """Greedy's re-balancing ("Bias_Mitigation_Strong" in the authors' release).

    M sums are cumulative from step 0. From epoch ``start_epoch`` on, after a step that did not
    re-balance, ``|d| > epsilon`` with ``d = log10(M_bypass_0 / M_main_0) - log10(M_bypass_1 /
    M_main_1)`` re-balances branch ``0 if d > 0 else 1`` for the next ``rebalance_steps`` steps.

    Args:
        epsilon: threshold on |d| (paper / release: 0.01).
        rebalance_steps: length of one re-balancing window in steps (release: 5).
        start_epoch: first 0-based epoch that may re-balance. The release's ``starting_epoch=2``
            counts epochs from 1, so its first re-balancing epoch is the 0-based epoch 1.
        accumulate_while_rebalancing: also add the speeds of re-balancing steps to the M sums
            (methods.md's "after every backward"); the release skips them (False).
        head_in_main: count branch m's linear head in M_main_m as the release does (its branch
            is the whole ResNet with its ``fc``); False: ``model.encoders[m]`` only.
    """

    # the speeds read gradients after DDP averaged them and parameters equal on every rank: the
    # M sums, d and the re-balanced branch are the same on every rank without a reduction
    supports_ddp = True

    def __init__(self, epsilon: float = 0.01, rebalance_steps: int = 5, start_epoch: int = 1,
                 accumulate_while_rebalancing: bool = False, head_in_main: bool = True) -> None:
        check_number("method.epsilon", epsilon, low=0)
        check_number("method.rebalance_steps", rebalance_steps, low=1, integer=True)
        check_number("method.start_epoch", start_epoch, low=0, integer=True)
        for key, flag in (("accumulate_while_rebalancing", accumulate_while_rebalancing),
                          ("head_in_main", head_in_main)):
            check_choice(f"method.{key}", flag, (True, False))
        self.epsilon, self.rebalance_steps = epsilon, rebalance_steps
        self.start_epoch, self.head_in_main = start_epoch, head_in_main
        self.accumulate_while_rebalancing = accumulate_while_rebalancing
        self.m_main, self.m_bypass = [0.0, 0.0], [0.0, 0.0]
        self.d = 0.0
        self.remaining = 0  # re-balancing steps left in the current window
        self.branch: Optional[int] = None  # m* of the current window
        self._modalities: list[str] = []
        self._now: Optional[int] = None  # branch re-balanced by this step's forward
        self._counts: list[int] = [0, 0]  # re-balanced steps per branch this epoch
        self._steps = 0

    def on_fit_start(self, ctx: FitContext) -> None:
        k = len(ctx.model.encoders)
        if k != 2:
            raise ValueError(f"greedy is defined for two modalities only, the model has {k}")
        if isinstance(ctx.model, MBTModel):
            raise ValueError(
                "greedy is not defined on MBT: it re-balances a branch by replacing the MMTM "
                "gates applied to it with their running averages, and compares each branch's "
                "learning speed with that of the cross-modal parameters feeding only it. MBT's "
                "cross-modal path is one set of bottleneck tokens that every modality's own "
                "layers read and write: there is no per-modality gate to replace and no "
                "parameter that feeds one modality without being part of the other's stream. "
                "Use model.fusion: mmtm with two resnet18 encoders")
        if not isinstance(ctx.model, MMTMModel):
            raise ValueError(f"greedy needs MMTM mid-fusion between the two branches (set "
                             f"model.fusion: mmtm with two resnet18 encoders); got "
                             f"{type(ctx.model).__name__} with {type(ctx.model.fusion).__name__}")
        self._modalities = list(ctx.model.encoders)

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._counts, self._steps = [0, 0], 0

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        self._now = self.branch if self.remaining > 0 else None
        name = None if self._now is None else self._modalities[self._now]
        return ctx.model(inputs, rebalance=name)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"ce_{m}": F.cross_entropy(lg, labels) for m, lg in output.unimodal_logits.items()}

    def accumulate(self, model: MMTMModel) -> float:
        """Add this step's learning speeds to the M sums; return the new d."""
        for k, m in enumerate(self._modalities):
            main = list(model.encoders[m].parameters())
            if self.head_in_main:
                main += list(model.unimodal_heads[m].parameters())
            self.m_main[k] += learning_speed(main)
            self.m_bypass[k] += learning_speed(model.bypass_parameters(m))
        if min(self.m_main + self.m_bypass) <= 0:
            return 0.0  # no gradient seen yet: no direction
        return (math.log10(self.m_bypass[0] / self.m_main[0])
                - math.log10(self.m_bypass[1] / self.m_main[1]))

    def on_before_optimizer_step(self, ctx: FitContext) -> None:
        self._steps += 1
        if self._now is None or self.accumulate_while_rebalancing:
            self.d = self.accumulate(ctx.model)
        if self._now is not None:  # inside a window: count it down, no new decision
            self._counts[self._now] += 1
            self.remaining -= 1
            if self.remaining == 0:
                self.branch = None
        elif ctx.epoch >= self.start_epoch and abs(self.d) > self.epsilon:
            self.branch, self.remaining = (0 if self.d > 0 else 1), self.rebalance_steps

    def on_train_epoch_end(self, ctx: FitContext) -> dict[str, Any]:
        names = self._modalities
        report = {"rebalanced_steps": dict(zip(names, self._counts)), "steps": self._steps,
                  "d": self.d, "m_main": dict(zip(names, self.m_main)),
                  "m_bypass": dict(zip(names, self.m_bypass))}
        log.info("greedy epoch %d: re-balanced steps %s of %d, d = %.4f", ctx.epoch,
                 report["rebalanced_steps"], self._steps, self.d)
        return {"greedy": report}

    def state_dict(self) -> dict[str, Any]:
        return {"m_main": list(self.m_main), "m_bypass": list(self.m_bypass), "d": self.d,
                "remaining": self.remaining, "branch": self.branch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m_main = [float(v) for v in state["m_main"]]
        self.m_bypass = [float(v) for v in state["m_bypass"]]
        self.d, self.remaining = float(state["d"]), int(state["remaining"])
        self.branch = None if state["branch"] is None else int(state["branch"])
