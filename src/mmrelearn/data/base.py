"""Datasets as dicts of modality tensors, stratified splits, and the one ``build_data`` entry.

Every experiment gets its data through :func:`build_data`: a registered builder returns the
whole dataset (:class:`RawData`); it is split train/val/test by class (optionally a holdout
carved out of training), vector features are standardized with training statistics only, and
optional noise degrades one modality. The same arguments give the same tensors for every method.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import ConfigError, check_number
from .lazy import LazyMultimodalDataset
from .splits import split_indices, stratified_split
from .transforms import apply_noise

__all__ = ["MultimodalDataset", "LazyMultimodalDataset", "RawData", "DataBundle", "DATASETS",
           "SPLIT_KEYS", "register_dataset", "stratified_split", "build_data"]

log = logging.getLogger(__name__)


class MultimodalDataset(Dataset):
    """Aligned per-modality tensors and labels; item ``i`` is ``({m: x_m[i]}, y[i])``.

    With the default collate a batch is ``({m: (B, ...)}, labels (B,))``.
    """

    def __init__(self, inputs: Mapping[str, Tensor], labels: Tensor) -> None:
        if not inputs:
            raise ValueError("MultimodalDataset needs at least one modality")
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
        n = labels.shape[0]
        for m, x in inputs.items():
            if x.dim() == 0 or x.shape[0] != n:
                raise ValueError(f"modality {m!r} has {x.shape[0] if x.dim() else 0} samples, "
                                 f"labels have {n}")
        self.inputs = dict(inputs)
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {m: x[i] for m, x in self.inputs.items()}, self.labels[i]

    @property
    def modalities(self) -> list[str]:
        """Modality names, in insertion order."""
        return list(self.inputs)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Modality -> shape of one sample (no batch dimension)."""
        return {m: tuple(x.shape[1:]) for m, x in self.inputs.items()}

    def subset(self, idx: Tensor) -> MultimodalDataset:
        """A new dataset holding rows ``idx`` (int64 (n,)) of every tensor."""
        return MultimodalDataset({m: x[idx] for m, x in self.inputs.items()}, self.labels[idx])


@dataclass
class RawData:
    """A whole dataset before splitting.

    Attributes:
        inputs: modality -> (N, ...) tensor held in memory; ``None`` when ``dataset`` reads
            samples from files instead.
        labels: int64 (N,).
        num_classes: number of classes.
        class_names: optional names of classes 0..C-1.
        dataset: a :class:`LazyMultimodalDataset` over all N samples (instead of ``inputs``).
        groups: optional group of each sample (speaker, actor) for ``split_by: group``.
        splits: optional official split: ``{"train": idx, "test": idx[, "val": idx]}``.
        fit_on_train: optional preprocessing FITTED on the training split:
            ``fn(whole, train_idx) -> whole`` (e.g. avmnist's PCA); :func:`build_data` calls it
            with the training indices only, so validation and test never influence it.
    """

    inputs: Optional[dict[str, Tensor]]
    labels: Tensor
    num_classes: int
    class_names: Optional[list[str]] = None
    dataset: Optional[LazyMultimodalDataset] = None
    groups: Optional[list[str]] = None
    splits: Optional[dict[str, Tensor]] = None
    fit_on_train: Optional[Callable[[Any, Tensor], Any]] = None


@dataclass
class DataBundle:
    """The splits of one experiment; ``holdout`` is a part of training set aside for a method."""

    train: MultimodalDataset
    val: MultimodalDataset
    test: MultimodalDataset
    num_classes: int
    holdout: Optional[MultimodalDataset] = None
    class_names: Optional[list[str]] = None

    @property
    def modalities(self) -> list[str]:
        return self.train.modalities

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.train.input_shapes


#: name -> builder returning :class:`RawData`; filled by :func:`register_dataset`.
DATASETS: dict[str, Callable[..., RawData]] = {}

#: keys of a ``data`` config section consumed by :func:`build_data` itself (with defaults),
#: as opposed to the options of the dataset builder. ``holdout_fraction`` comes from the method.
SPLIT_KEYS: dict[str, Any] = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0,
                              "split_by": "class", "test_groups": None, "val_groups": None,
                              "standardize": True, "noise": None}


def register_dataset(name: str) -> Callable[[Callable[..., RawData]], Callable[..., RawData]]:
    """Decorator: record a dataset builder under ``name`` (the builder is returned unchanged)."""

    def deco(fn: Callable[..., RawData]) -> Callable[..., RawData]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        return fn

    return deco


def _call_builder(name: str, seed: int, options: dict[str, Any]) -> RawData:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}")
    builder = DATASETS[name]
    params = inspect.signature(builder).parameters
    if "seed" in params:  # a generated dataset takes the data seed
        options = {**options, "seed": seed}
    elif seed != 0:
        raise ValueError(f"dataset {name!r} takes no seed (got seed={seed}); "
                         f"valid options: {sorted(params)}")
    unknown = sorted(set(options) - set(params))
    missing = sorted(n for n, p in params.items()
                     if p.default is inspect.Parameter.empty and n not in options)
    if unknown or missing:
        what = f"unknown option(s) {unknown}" if unknown else f"missing option(s) {missing}"
        raise ValueError(f"dataset {name!r}: {what}; valid options: {sorted(params)}")
    try:
        return builder(**options)
    except TypeError as err:  # a signature mismatch the check above could not see
        raise ValueError(f"dataset {name!r}: {err}; valid options: {sorted(params)}") from err


def _standardize(whole: MultimodalDataset | LazyMultimodalDataset,
                 train_idx: Tensor) -> MultimodalDataset | LazyMultimodalDataset:
    """(x - mean) / std for every vector modality; statistics from the rows ``train_idx``."""
    if not isinstance(whole, MultimodalDataset):
        return whole  # samples read from files: their loader normalises them
    inputs = dict(whole.inputs)
    for m, x in whole.inputs.items():
        if x.dim() == 2:  # (N, D) vector features; images etc. are left alone
            train = x[train_idx]  # (n_train, D); the training split is never empty here
            mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False)  # (D,)
            inputs[m] = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return MultimodalDataset(inputs, whole.labels)


def _whole(raw: RawData, name: str) -> MultimodalDataset | LazyMultimodalDataset:
    if (raw.inputs is None) == (raw.dataset is None):
        raise ValueError(f"dataset {name!r}: its builder must give exactly one of inputs and "
                         f"dataset")
    whole = MultimodalDataset(raw.inputs, raw.labels) if raw.dataset is None else raw.dataset
    if len(whole) != len(raw.labels):
        raise ValueError(f"dataset {name!r}: {len(whole)} samples but {len(raw.labels)} labels")
    if raw.groups is not None and len(raw.groups) != len(raw.labels):
        raise ValueError(f"dataset {name!r}: {len(raw.groups)} groups for "
                         f"{len(raw.labels)} samples")
    return whole


def _check_split_keys(val_fraction: float, test_fraction: float, split_seed: int) -> None:
    """Before any file is read: the fractions and the seed of the split."""
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        check_number(f"data.{key}", value, low=0, high=1, high_open=True)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1 (these fractions "
                          f"leave the rest to train), got {val_fraction} + {test_fraction}")
    check_number("data.split_seed", split_seed, low=0, high=2**63 - 1, integer=True)


def build_data(name: str, *, val_fraction: float, test_fraction: float, split_seed: int,
               holdout_fraction: float = 0.0, split_by: Literal["class", "group"] = "class",
               test_groups: Optional[Sequence[str]] = None,
               val_groups: Optional[Sequence[str]] = None, standardize: bool = True,
               noise: Optional[Mapping[str, Any]] = None, seed: int = 0,
               **options: Any) -> DataBundle:
    """Build, split, standardize and (optionally) degrade a registered dataset.

    Args:
        name: a key of :data:`DATASETS`.
        val_fraction: fraction of every class going to validation (of the official training
            part when the dataset has an official split).
        test_fraction: fraction of every class going to test (unused with an official split).
        split_seed: seed of the train/val/test split (``split_seed + 1`` seeds the holdout).
        holdout_fraction: fraction of the TRAINING part set aside as ``holdout`` (0: none).
        split_by: ``"class"`` (stratified) or ``"group"`` (no speaker/actor in two splits).
        test_groups, val_groups: with ``split_by: group``, the groups to hold out (others
            are drawn with ``split_seed``).
        standardize: z-score vector (1-D per sample) modalities with statistics of the whole
            training split (holdout included: it is training data, never val or test).
        noise: ``{"modality", "snr_db", "seed"}``: Gaussian noise at that SNR on one modality
            of every sample, seeded per sample (see :func:`mmrelearn.data.transforms.apply_noise`).
        seed: seed of generated data, passed to builders that take a ``seed`` option.
        **options: the builder's own options (e.g. ``modalities`` for mfeat).

    Returns:
        The :class:`DataBundle`; identical for identical arguments.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    _check_split_keys(val_fraction, test_fraction, split_seed)
    raw = _call_builder(name, seed, options)
    whole = _whole(raw, name)
    index = split_indices(raw.labels, val_fraction=val_fraction, test_fraction=test_fraction,
                          split_seed=split_seed, split_by=split_by, groups=raw.groups,
                          predefined=raw.splits, test_groups=test_groups,
                          val_groups=val_groups)
    if len(index["train"]) == 0:
        raise ValueError(f"dataset {name!r}: the training split is empty; check "
                         f"val_fraction/test_fraction/split_by")
    # Standardisation and the builder's fitted preprocessing (both from the training split
    # only) and noise (seeded per sample) act on the whole dataset before it is split and
    # before a method's holdout is carved out of training, so every method sees the very same
    # tensors whatever its holdout.
    if standardize:
        whole = _standardize(whole, index["train"])
    if raw.fit_on_train is not None:
        whole = raw.fit_on_train(whole, index["train"])
    if noise is not None:
        whole = apply_noise(whole, noise)
    parts = {split: whole.subset(idx) for split, idx in index.items()}
    if holdout_fraction > 0:
        keep, hold = stratified_split(parts["train"].labels,
                                      [1.0 - holdout_fraction, holdout_fraction], split_seed + 1)
        parts["train"], parts["holdout"] = parts["train"].subset(keep), parts["train"].subset(hold)
    log.info("data %s: %s", name, {s: len(d) for s, d in parts.items()})
    return DataBundle(parts["train"], parts["val"], parts["test"], raw.num_classes,
                      holdout=parts.get("holdout"), class_names=raw.class_names)
