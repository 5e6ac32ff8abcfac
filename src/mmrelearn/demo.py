"""The main job: joint training vs D&R on real mfeat data, clean and with a noisy modality.

The settings live in the packaged ``configs/demo.yaml`` (a base config, the methods, the data
variants). Every method sees the same splits, data and epochs; runs already finished in the
output directory are reused and interrupted ones resumed, so the demo can be re-run safely.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .comparison import run_comparison

__all__ = ["load_demo_spec", "run_comparison", "run_demo"]


def load_demo_spec() -> dict[str, Any]:
    """The packaged demo specification: ``base`` config, ``methods`` and ``variants``."""
    text = resources.files("mmrelearn").joinpath("configs/demo.yaml").read_text()
    return yaml.safe_load(text)


def run_demo(out_dir: Path = Path("runs/demo"), seeds: int = 3, epochs: Optional[int] = None,
             progress: bool = True) -> str:
    """The main job: :func:`run_comparison` on the packaged demo specification."""
    return run_comparison(load_demo_spec(), out_dir, seeds, epochs, progress)
