"""Balancing methods as plugins of the one training loop; ``METHODS`` maps names to classes."""
from .base import METHODS, FitContext, Method, register_method

# Explicit imports fill the registry (no file scanning).
from . import joint, dnr  # noqa: E402,F401

__all__ = ["METHODS", "FitContext", "Method", "register_method"]
from . import pmr  # noqa: E402,F401
from . import gblending  # noqa: E402,F401
from . import dnr_dagger  # noqa: E402,F401
from . import ogm_ge  # noqa: E402,F401
from . import agm  # noqa: E402,F401
from . import greedy  # noqa: E402,F401
