"""Balancing methods as plugins of the one training loop; ``METHODS`` maps names to classes."""
from .base import METHODS, FitContext, Method, register_method

# Explicit imports fill the registry (no file scanning).
from . import joint, dnr, dnr_dagger, gblending, ogm_ge, pmr, agm, greedy  # noqa: E402,F401
# the newer methods (docs/methods.md)
from . import (mmpareto, inforeg, opm, ogm_tpami, mmcosine, cml, lfm,  # noqa: E402,F401
               mbsd)
from . import dimml  # noqa: E402,F401
from . import valuation  # noqa: E402,F401
from . import umt  # noqa: E402,F401
from . import ume  # noqa: E402,F401
from . import mla  # noqa: E402,F401
from . import amco  # noqa: E402,F401
from . import reconboost  # noqa: E402,F401

__all__ = ["METHODS", "FitContext", "Method", "register_method"]
