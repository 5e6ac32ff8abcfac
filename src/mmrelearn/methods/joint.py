"""Joint training: one cross-entropy on the fused logits and nothing else (the baseline)."""
from __future__ import annotations

from .base import Method, register_method


@register_method("joint")
class Joint(Method):
    """Plain joint training; every hook keeps the base class default."""

    supports_ddp = True  # no batch statistic: DDP's averaged gradient is the whole batch's
