"""The hook interface between the one training loop and every balancing method.

The trainer runs fixed stages and calls the method at each (order per epoch)::

    extra_modules             # modules the method keeps, put in model.method_modules
    prerequisites             # runs trained first (e.g. uni-modal teachers), in ctx.extras;
                              # called after extra_modules, which saw the built model
    on_fit_start
    for each epoch:
        on_train_epoch_start
        train_loader          # this epoch's training batches (None: the usual loader)
        for each batch:
            training_step     # default: forward -> loss_terms (under ctx.autocast())
                              #   -> backward -> on_before_optimizer_step (gradients
                              #   unscaled under 16-mixed) -> optimizer step
            on_train_batch_end
        (validation / test evaluation through predict, best-epoch selection)
        on_train_epoch_end        # may return a report (D&R's diagnosis)
    on_fit_end

OGM-GE and AGM edit gradients in ``on_before_optimizer_step``; PMR adds a loss term and
refreshes prototypes in ``on_train_epoch_start``; G-Blending re-estimates blend weights at
super-epoch starts from ``ctx.holdout_loader``; AGM and Greedy replace ``forward``; D&R acts in
``on_train_epoch_end``. A method that needs several passes or optimizer steps per batch
overrides ``training_step``; one that predicts otherwise than with the fused logits overrides
``predict``; one whose data change per epoch returns a loader from ``train_loader``; one that
needs each sample's index sets ``wants_sample_index`` (the index is then ``ctx.batch_index``);
one that trains modules of its own (a head shared by every modality, an extra layer) returns
them from ``extra_modules``: they become ``model.method_modules``, so the optimizer, the
checkpoints and ``mmrelearn eval`` hold them like any other weight.
An empty dict of loss terms means no backward and no step for that batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..models import ModelOutput
from ..precision import Precision

__all__ = ["FitContext", "Method", "METHODS", "register_method", "require_unimodal_heads",
           "true_class_scores", "NonFiniteLossError", "check_finite", "require_equal_dims",
           "feature_dims", "check_run_options", "unimodal_weights"]

Batch = tuple[Mapping[str, torch.Tensor], torch.Tensor]


@dataclass
class FitContext:
    """What a method may read during a run. Loaders over train/val only, never test."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    num_classes: int
    epochs: int
    train_loader: Iterable
    diag_train_loader: Iterable  # whole training split, fixed order, no augmentation
    val_loader: Iterable
    holdout_loader: Optional[Iterable] = None  # part of TRAINING held out for a method
    epoch: int = 0
    step: int = 0  # training batches stepped so far, over the whole run
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. "prerequisites": name -> dir
    batch_index: Optional[torch.Tensor] = None  # sample indices of the batch (if wanted)
    precision: Precision = field(default_factory=Precision)  # train.precision (default 32)
    # under torchrun (mmrelearn/distributed.py): the model in DDP for the training step, and
    # this process's share n_local / n_global of the current batch (1.0 in one process)
    ddp: Optional[Callable[[Callable[[], Any]], Any]] = None
    batch_share: float = 1.0

    def autocast(self):
        """Context of a training forward pass and its loss at the run's precision (bf16 or
        fp16 autocast; nothing at 32). Backward and gradient edits go outside it."""
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward(**kwargs)``, of the scaled loss under 16-mixed."""
        self.precision.backward(loss, **kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Under 16-mixed, divide the gradients by the loss scale (once per step, before
        reading or editing them); nothing otherwise."""
        self.precision.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, through the loss scaler under 16-mixed (a step with
        non-finite gradients is skipped there and the scale lowered)."""
        self.precision.step(optimizer)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(ctx: FitContext, terms: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteLossError` naming every term if their sum is not finite.

    One host sync per call: the trainer does not need it (it flags a non-finite loss on the
    device and stops the run before the epoch is checkpointed); a method that must not step
    on a non-finite loss may call it."""
    if terms and not torch.isfinite(sum(t.detach() for t in terms.values())):
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise NonFiniteLossError(f"non-finite training loss at epoch {ctx.epoch}, step "
                                 f"{ctx.step}: {values}")


class Method:
    """Base class: joint training behaviour, every hook a no-op or the plain default."""

    name: str = "base"
    #: fraction of the training split a method needs held out (e.g. G-Blending's V).
    holdout_fraction: float = 0.0
    #: training batches carry each sample's index in the training split (``ctx.batch_index``)
    wants_sample_index: bool = False
    #: an own ``training_step`` that backs up with ``ctx.backward`` and steps with
    #: ``ctx.optimizer_step`` (after ``ctx.unscale_`` where it reads gradients), so fp16
    #: loss scaling is right; without it a method owning its step is refused for 16-mixed
    own_step_scales_loss: bool = False
    #: ``train.compile`` may compile the model's forward for this method; None: yes unless
    #: the method replaces ``forward`` or ``training_step`` (its passes bypass that forward)
    compilable: Optional[bool] = None
    #: runs under DDP (torchrun, several processes): every batch statistic it reads (scores,
    #: prototypes, running means) is reduced over ranks (``mmrelearn.distributed``), so every
    #: rank applies the same coefficients. False: refused there before the first epoch.
    supports_ddp: bool = False

    def model_overrides(self) -> dict[str, Any]:
        """Model options the method needs (e.g. ``{"unimodal_heads": True}``)."""
        return {}

    def prerequisites(self) -> dict[str, dict[str, Any]]:
        """Runs to train before this one: name -> a partial raw config merged into this run's
        (e.g. ``{"data": {"modalities": ["audio"]}, "method": {"name": "joint"}}``). The
        runner trains each in ``RUN_DIR/prerequisites/<name>`` (reused when finished, resumed
        when interrupted) and puts the directories in ``ctx.extras["prerequisites"]``."""
        return {}

    def extra_modules(self, model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
        """Modules the method keeps besides the model's, built from the freshly built model
        (``feature_dims(model)``; ``copy.deepcopy(model.encoders[m])`` for a teacher of the
        same architecture): e.g. one head shared by every modality, or frozen teachers whose
        weights ``on_fit_start`` loads from a prerequisite run. They are attached as
        ``model.method_modules[name]`` before the optimizer is built, so they are trained
        (unless their parameters have ``requires_grad=False``), checkpointed, resumed and
        restored by ``mmrelearn eval`` like the model. Raise ValueError here when the model
        does not suit the method (nothing is written yet)."""
        return {}

    def on_fit_start(self, ctx: FitContext) -> None:
        """Called once before the first epoch (and again after a resume); check applicability."""

    def on_train_epoch_start(self, ctx: FitContext) -> None:
        """Called before the first batch of each epoch."""

    def train_loader(self, ctx: FitContext) -> Optional[Iterable]:
        """After ``on_train_epoch_start``: the loader of this epoch's training batches, or None
        for ``ctx.train_loader`` (e.g. a training set resampled every epoch)."""
        return None

    def training_step(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training batch: forward and loss terms (under ``ctx.autocast()``), backward,
        ``on_before_optimizer_step`` on unscaled gradients and the optimizer step. Returns the
        loss terms (logged); ``{}`` when the batch took no step. Override it to own several
        passes or optimizer steps per batch (with ``ctx.autocast``; see
        :attr:`own_step_scales_loss` for 16-mixed). A non-finite loss is not checked here
        (that would sync the host every step): the trainer flags it on the device and stops
        the run before the epoch is checkpointed."""
        def step() -> dict[str, torch.Tensor]:
            with ctx.autocast():
                return self.loss_terms(ctx, self.forward(ctx, inputs), labels)

        # under DDP through the wrapped model, so that the backward of the terms averages
        # every gradient they depend on over the ranks (a bare test context has no ddp)
        ddp = getattr(ctx, "ddp", None)
        terms = step() if ddp is None else ddp(step)
        if not terms:
            return {}
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(sum(terms.values()))
        ctx.unscale_(ctx.optimizer)  # gradient edits see the true gradients (16-mixed)
        self.on_before_optimizer_step(ctx)
        ctx.optimizer_step(ctx.optimizer)
        return terms

    def predict(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The (B, C) logits every evaluation scores (validation, test, selection)."""
        return model(inputs).logits

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        """The training forward pass; methods with masked or extra passes override it."""
        return ctx.model(inputs)

    def loss_terms(
        self, ctx: FitContext, output: ModelOutput, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Named loss terms; the trainer sums them and logs each."""
        return {"ce": F.cross_entropy(output.logits, labels)}

    def on_before_optimizer_step(self, ctx: FitContext) -> None:
        """After backward, before the optimizer step: edit gradients here (unscaled under
        16-mixed, float32 in every precision)."""

    def on_train_batch_end(self, ctx: FitContext, terms: Mapping[str, float]) -> None:
        """After the optimizer step, with the batch's loss terms as floats. Reading them
        syncs the host with the device every batch: the trainer converts them only for a
        method that overrides this hook."""

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        """After the epoch's training and evaluation; may return a report to log."""
        return None

    def on_fit_end(self, ctx: FitContext) -> None:
        """Called once after the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """Method state that a resumed run needs."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def check_run_options(method: Method, precision: str, compile: bool) -> None:
    """Refuse (ConfigError naming the key) a ``train.precision`` or ``train.compile`` the
    method cannot take; called when the trainer is built, before anything is written."""
    own_step = type(method).training_step is not Method.training_step
    if precision == "16-mixed" and own_step and not method.own_step_scales_loss:
        raise ConfigError(f"train.precision: '16-mixed' is not available with method "
                          f"{method.name!r}: its own training_step does not scale the loss "
                          f"(fp16 gradients could underflow unseen); use 'bf16' or 32")
    allowed = method.compilable
    if allowed is None:
        allowed = not own_step and type(method).forward is Method.forward
    if compile and not allowed:
        raise ConfigError(f"train.compile: method {method.name!r} trains through passes of its "
                          f"own (it replaces forward or training_step), not the model's forward "
                          f"that compile would compile; set train.compile: false")


def require_unimodal_heads(model: nn.Module, method: str) -> None:
    """Refuse (ValueError) a model without one linear head per modality."""
    if getattr(model, "unimodal_heads", None) is None:
        raise ValueError(f"{method} needs one linear head per modality; build the model with "
                         f"unimodal_heads=True (the method's model_overrides asks for it)")


def feature_dims(model: nn.Module) -> dict[str, int]:
    """Each modality's feature size ``d_m``, in the order of ``model.encoders``."""
    return {m: e.out_dim for m, e in model.encoders.items()}


def require_equal_dims(dims: Mapping[str, int], method: str, what: str) -> int:
    """The common feature size of every modality; ValueError naming them when they differ
    (``what`` says why the method needs it, e.g. "one head shared by every modality")."""
    sizes = set(dims.values())
    if len(sizes) != 1:
        raise ValueError(f"{method} needs {what}, so every modality's features must have the "
                         f"same size; got {dict(dims)} (give every encoder the same output "
                         f"size, e.g. the same last hidden width)")
    return sizes.pop()


def unimodal_weights(run_dir: Any, modality: str, map_location: Any = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder, head) state dicts of the uni-modal run in ``run_dir`` (a prerequisite such as
    a teacher), from its ``checkpoints/best.pt``: the epoch its validation selected; its head
    is Linear(d_m, C) on the one encoder's features."""
    from pathlib import Path

    from ..train.checkpoint import load_checkpoint  # not at import: train imports methods

    state = load_checkpoint(Path(run_dir) / "checkpoints" / "best.pt",
                            map_location=map_location)["model"]
    prefix = f"encoders.{modality}."
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    return encoder, head


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that adds a method to :data:`METHODS` under ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def true_class_scores(logits: Mapping[str, torch.Tensor], labels: torch.Tensor
                      ) -> dict[str, float]:
    """s_m = sum over the batch of softmax(logits_m)[y]: the per-modality score OGM-GE
    (Eq. 9) and PMR (release) compare. ``logits[m]`` is (B, C), ``labels`` (B,)."""
    return {m: float(F.softmax(lg.detach(), 1).gather(1, labels[:, None]).sum())
            for m, lg in logits.items()}
