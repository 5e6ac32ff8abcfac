"""Balancing methods as plugins of the one training loop; ``METHODS`` maps names to classes."""
from .base import METHODS, FitContext, Method, register_method

# Explicit imports fill the registry (no file scanning).
from . import joint, dnr, dnr_dagger, gblending, ogm_ge, pmr, agm, greedy  # noqa: E402,F401
from . import opm  # noqa: E402,F401
from . import ogm_tpami  # noqa: E402,F401
from . import mmcosine  # noqa: E402,F401
from . import mmpareto  # noqa: E402,F401
from . import inforeg  # noqa: E402,F401
from . import cml  # noqa: E402,F401
from . import lfm  # noqa: E402,F401
from . import mbsd  # noqa: E402,F401

__all__ = ["METHODS", "FitContext", "Method", "register_method"]
