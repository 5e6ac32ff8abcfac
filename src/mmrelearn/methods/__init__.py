"""Balancing methods as plugins of the one training loop; ``METHODS`` maps names to classes."""
from .base import METHODS, FitContext, Method, register_method

# Explicit imports fill the registry (no file scanning).
from . import joint, dnr, dnr_dagger, gblending, ogm_ge, pmr, agm, greedy  # noqa: E402,F401
# the newer methods (docs/methods.md)
from . import (mmpareto, inforeg, opm, ogm_tpami, mmcosine, cml, lfm,  # noqa: E402,F401
               mbsd, mla, reconboost, valuation, umt, ume, amco, dimml)

__all__ = ["METHODS", "FitContext", "Method", "register_method"]
