"""UMT: uni-modal teachers (Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature
Learning in Supervised Multi-Modal Learning", ICML 2023).

Joint late-fusion training under-learns each modality's features ("modality laziness"). Stage 1
trains every modality alone (one prerequisite run per modality, ``teacher_<m>``: its encoder
and a linear head); stage 2 trains the multimodal model with CE on the fused logits plus the
distance of each encoder's features to its frozen teacher's:
L = CE(fused, y) + lam * sum_m MSE(z_m, z_m^T). Inference is the fused head. No official code
was found; the loss follows BalanceBenchmark's ``UMT_trainer.py``. :class:`TeacherRuns` (the
prerequisites and the one-time load of their weights) is shared with UME (``ume.py``).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_choice, check_number
from ..distributed import reduce_floats
from ..models import ModelOutput
from .base import FitContext, Method, register_method, unimodal_weights

__all__ = ["UMT", "TeacherRuns", "frozen"]


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter's ``requires_grad`` off (the optimizer skips it)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class TeacherRuns(Method):
    """One uni-modal teacher run per modality as prerequisites, loaded once in on_fit_start.

    Each teacher is joint training on modality m alone with the same data, model and recipe
    (``teacher_epochs`` epochs, default the run's own), with a concat fusion so that its head
    is Linear(d_m, C). The modalities are those of the model handed to :meth:`extra_modules`,
    which the runner calls (in ``build_trainer``) before it asks for :meth:`prerequisites`.
    """

    def __init__(self, teacher_epochs: Optional[int] = None) -> None:
        check_number("method.teacher_epochs", teacher_epochs, low=1, integer=True, null=True)
        self.teacher_epochs = teacher_epochs
        self.modalities: Optional[list[str]] = None
        self.loaded = False  # teacher weights copied in (a resumed run must not copy again)

    def _check_model(self, model: nn.Module) -> None:
        """Record the modalities; refuse a model the method cannot use (before any run)."""
        mods = list(model.encoders)
        if len(mods) < 2:
            raise ValueError(f"{self.name} needs at least 2 modalities, the model has {mods}")
        if getattr(model, "head", None) is None:
            raise ValueError(f"{self.name} needs a late-fusion model with a fused head (concat "
                             f"or sum fusion); {type(model).__name__} has none")
        self.modalities = mods

    def prerequisites(self) -> dict[str, dict[str, Any]]:
        if self.modalities is None:
            raise RuntimeError(f"{self.name}: prerequisites() needs the model's modalities; "
                               f"call extra_modules(model, num_classes) first")
        # model: a plain linear head on the one encoder, whatever the parent's fusion
        model = {"fusion": "concat", "fusion_dim": None, "unimodal_heads": False}
        train = {} if self.teacher_epochs is None else {"train": {"epochs": self.teacher_epochs}}
        return {f"teacher_{m}": {"data": {"modalities": [m]}, "model": model,
                                 "method": {"name": "joint"}, **train}
                for m in self.modalities}

    def on_fit_start(self, ctx: FitContext) -> None:
        if self.loaded:  # resumed: the checkpoint holds the teachers (and trained weights)
            return
        runs = ctx.extras.get("prerequisites", {})
        missing = [f"teacher_{m}" for m in ctx.model.encoders if f"teacher_{m}" not in runs]
        if missing:
            raise ValueError(f"{self.name} needs its teacher runs {missing} (prerequisites); "
                             f"train it with mmrelearn.train.train or `mmrelearn train`")
        for m in ctx.model.encoders:
            encoder, head = unimodal_weights(runs[f"teacher_{m}"], m)
            self.load_teacher(ctx.model, m, encoder, head)
        self.loaded = True

    def load_teacher(self, model: nn.Module, modality: str, encoder: Mapping[str, torch.Tensor],
                     head: Mapping[str, torch.Tensor]) -> None:
        """Copy one teacher's weights where the method keeps them."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loaded = bool(state["loaded"])


@register_method("umt")
class UMT(TeacherRuns):
    """UMT (ICML 2023): CE(fused) + lam * sum_m MSE(z_m, z_m^T), with frozen uni-modal teachers
    E_m^T always in eval mode; the MSE is averaged over the batch and the feature dimensions.

    Not copied from BalanceBenchmark: its teachers stay in train mode (BatchNorm normalises
    with batch statistics and keeps updating its running statistics, dropout stays on); here
    they are put in eval mode before every use. Any K >= 2 (one term per modality). Cost: K
    teacher runs, then one no-grad teacher forward per modality and step (about one forward).

    Args:
        lam: weight of the distillation terms (BB ``scaling`` 10; its ``alpha: 1`` is unused).
        teacher_epochs: epochs of each teacher run (None: the run's ``train.epochs``).
        student_init: ``fresh`` (BB: the student starts from its own initialisation) or
            ``teachers`` (its encoders start from the teachers'; whether the paper does so is
            unverified).
    """

    supports_ddp = True  # CE and MSE are means over samples; teachers are joint runs

    def __init__(self, lam: float = 10.0, teacher_epochs: Optional[int] = None,
                 student_init: str = "fresh") -> None:
        super().__init__(teacher_epochs)
        check_number("method.lam", lam, low=0)
        check_choice("method.student_init", student_init, ("fresh", "teachers"))
        self.lam, self.student_init = float(lam), student_init
        self._targets: dict[str, torch.Tensor] = {}
        self._mse_sum: dict[str, torch.Tensor] = {}
        self._n = 0

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        self._check_model(model)
        return {"teachers": frozen(nn.ModuleDict(
            {m: copy.deepcopy(e) for m, e in model.encoders.items()}))}

    def load_teacher(self, model: nn.Module, modality: str, encoder: Mapping[str, torch.Tensor],
                     head: Mapping[str, torch.Tensor]) -> None:
        model.method_modules["teachers"][modality].load_state_dict(encoder)
        if self.student_init == "teachers":
            model.encoders[modality].load_state_dict(encoder)

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        self._mse_sum, self._n = {}, 0

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        teachers = ctx.model.method_modules["teachers"]
        teachers.eval()  # the trainer puts the whole model in train mode every epoch
        with torch.no_grad():
            self._targets = {m: t(inputs[m]) for m, t in teachers.items()}  # m -> (B, d_m)
        return ctx.model(inputs)

    def loss_terms(self, ctx: FitContext, output: ModelOutput,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"ce": F.cross_entropy(output.logits, labels)}
        for m, z in output.features.items():
            mse = F.mse_loss(z, self._targets[m])  # mean over (B, d_m)
            share = getattr(ctx, "batch_share", 1.0)  # DDP: this rank's part of the mean
            self._mse_sum[m] = self._mse_sum.get(m, 0.0) + mse.detach() * share
            terms[f"distill_{m}"] = self.lam * mse
        self._n += 1
        return terms

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if self._n == 0:
            return None
        mse = reduce_floats({m: float(s) for m, s in self._mse_sum.items()})  # over ranks
        return {"umt": {"mse": {m: s / self._n for m, s in mse.items()},
                        "lam": self.lam}}
