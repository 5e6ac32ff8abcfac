"""Numeric precision of a run (``train.precision``): autocast and, for fp16, loss scaling;
and whether ``train.compile`` can run.

``32`` is plain float32 (no autocast, no scaler: every operation exactly as without this
module). ``bf16`` runs the forward pass and the loss under ``torch.autocast`` with bfloat16;
its range is float32's, so gradients need no scaling. ``16-mixed`` autocasts to float16 and
scales the loss with a :class:`torch.amp.GradScaler`, whose ``unscale_`` restores the true
gradients before anything reads or edits them (a method's ``on_before_optimizer_step``); a
step whose gradients overflowed is skipped and the scale lowered, as GradScaler does.

Parameters, optimizer state and gradients stay float32 in every mode; so do the features
the diagnosis clusters (extracted outside autocast and cast to float32).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from typing import Any, ContextManager, Mapping, Optional

import torch

from .config import ConfigError

__all__ = ["PRECISIONS", "Precision", "check_precision", "check_compile"]

#: the values of ``train.precision``
PRECISIONS = ("32", "bf16", "16-mixed")
_DTYPES = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ConfigError naming ``train.precision`` when ``device`` cannot run it."""
    if precision not in _DTYPES:
        raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got "
                         f"{precision!r}")
    dtype = _DTYPES[precision]
    if dtype is None:
        return
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise ConfigError(f"train.precision: {precision!r} needs autocast, which torch "
                         f"{torch.__version__} does not offer on {device.type!r}; use 32")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision: 'bf16' is not supported by "
                         f"{torch.cuda.get_device_name(device)}; use '16-mixed' or 32")


def check_compile(device: torch.device) -> None:
    """Raise ConfigError naming ``train.compile`` when torch.compile cannot run on ``device``
    (checked before a run directory is written, not at the first batch)."""
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"train.compile: torch.compile is not supported by this Python / "
                          f"torch {torch.__version__}; set train.compile: false")
    if device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c):
        raise ConfigError("train.compile: on CPU torch.compile (inductor) builds C++ kernels "
                          "and finds no compiler (g++, clang++ or $CXX); install one or set "
                          "train.compile: false")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ConfigError("train.compile: on CUDA torch.compile (inductor) needs the triton "
                          "package; pip install triton or set train.compile: false")


class Precision:
    """Autocast, backward and optimizer step of one run at one precision.

    Args:
        precision: ``"32"``, ``"bf16"`` or ``"16-mixed"`` (:data:`PRECISIONS`).
        device: where the run computes; autocast's device type comes from it.
    """

    def __init__(self, precision: str = "32", device: torch.device = torch.device("cpu")
                 ) -> None:
        check_precision(precision, device)
        self.name, self.device_type, self.dtype = precision, device.type, _DTYPES[precision]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if precision == "16-mixed" else None)

    def autocast(self) -> ContextManager:
        """The context of a forward pass and its loss (does nothing at precision 32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()``, of the scaled loss under 16-mixed."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward(**kwargs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the loss scale (16-mixed; once per step)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under 16-mixed the scaler's step (skipped when a gradient
        is not finite) and its scale update."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[dict[str, Any]]:
        """The scaler's state (scale, growth tracker), None without a scaler."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
