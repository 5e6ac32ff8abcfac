"""Datasets, splits and transforms; ``DATASETS`` maps names to builders of :class:`RawData`."""
from .base import (DATASETS, SPLIT_KEYS, DataBundle, MultimodalDataset, RawData, build_data,
                   register_dataset, stratified_split)
from .lazy import LazyMultimodalDataset, MediaError
from .splits import group_split, split_indices
from .transforms import add_noise_snr

# Explicit imports fill the registry (no file scanning).
from . import (avdigits, avmnist, cremad, kinetics_sounds, mfeat, mosi,  # noqa: E402,F401
               prepare, synthetic, ucf101)

__all__ = ["DATASETS", "SPLIT_KEYS", "DataBundle", "MultimodalDataset", "LazyMultimodalDataset",
           "MediaError", "RawData", "build_data", "register_dataset", "stratified_split",
           "group_split", "split_indices", "add_noise_snr"]
