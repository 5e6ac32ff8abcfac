"""Diagnosing & Re-learning as a trainer plugin (paper Algorithm 1).

The logic lives in ``diagnose.py`` and ``relearn.py``; this file only wires
:class:`~mmrelearn.relearn.DiagnoseRelearn` to the trainer's hooks.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..relearn import DiagnoseRelearn, check_relearn_options, model_features
from .base import FitContext, Method, register_method


@register_method("dnr")
class DnR(Method):
    """D&R: every ``every`` epochs, re-initialise each encoder by tanh(lam * purity gap).

    Args:
        lam: lambda of Eq. 5 (paper: 3 CREMA-D, 7 Kinetics-Sounds / UCF-101, 8 CMU-MOSI).
        every: H, the period in epochs (paper: 20; 5 on CMU-MOSI).
        max_times: cap on re-initialisations (default 3, as in the authors' release);
            ``None`` for no cap.
        strength: strength function name (``tanh`` as in Eq. 5; see STRENGTH_FUNCTIONS).
        n_init: k-means restarts; kmeans_seed: their seed.
        scale: feature scaling before k-means (``minmax`` as released, or ``none``).
        max_samples: seeded cap on samples per split in the diagnosis (``None``: all).
        buffers: BatchNorm running stats on re-init: ``keep`` (release) or ``interpolate``.
        momentum: optimizer state of re-initialised parameters: ``keep`` (release) or ``reset``.
    """

    # under DDP the diagnosis gathers every rank's features and rank 0's purities are used by
    # all (relearn.measure_purities), so every rank re-initialises identically
    supports_ddp = True

    def __init__(
        self,
        lam: float = 3.0,
        every: int = 20,
        max_times: Optional[int] = 3,
        strength: str = "tanh",
        n_init: int = 1,
        kmeans_seed: int = 0,
        scale: str = "minmax",
        max_samples: Optional[int] = None,
        buffers: str = "keep",
        momentum: str = "keep",
    ) -> None:
        self.options = dict(lam=lam, every=every, max_times=max_times, strength=strength,
                            n_init=n_init, kmeans_seed=kmeans_seed, scale=scale,
                            max_samples=max_samples, buffers=buffers, momentum=momentum)
        check_relearn_options("method.", **self.options)  # now, not H epochs into the run
        self.dr: Optional[DiagnoseRelearn] = None
        self._pending_state: Optional[Mapping[str, Any]] = None

    def on_fit_start(self, ctx: FitContext) -> None:
        # theta_init: the encoders as they are when training starts (right after seeded
        # construction); on resume the saved snapshot replaces it below.
        self.dr = DiagnoseRelearn(
            ctx.model.encoders, ctx.num_classes, ctx.diag_train_loader, ctx.val_loader,
            features=model_features(ctx.model, ctx.device), optimizer=ctx.optimizer,
            device=ctx.device, **self.options)
        if self._pending_state is not None:
            self.dr.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if ctx.epoch == ctx.epochs - 1:
            return None  # a re-initialisation after the last epoch would never be trained
        report = self.dr.step(ctx.epoch)
        return None if report is None else {"dnr": report.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        if self.dr is None:
            return dict(self._pending_state or {})
        return self.dr.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = {"times_applied": state["times_applied"],
                 "init_states": {m: {k: torch.as_tensor(v) for k, v in s.items()}
                                 for m, s in state["init_states"].items()}}
        if self.dr is None:
            self._pending_state = state
        else:
            self.dr.load_state_dict(state)
