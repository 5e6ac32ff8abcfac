"""Datasets whose samples are read one at a time (media files, caches) instead of held in RAM.

:class:`LazyMultimodalDataset` has the interface of :class:`~mmrelearn.data.base.
MultimodalDataset` that the rest of the library uses (``labels``, ``modalities``,
``input_shapes``, ``subset``); a sample is produced by a picklable ``load(i)`` callable, so
DataLoader workers can run it, followed by per-sample transforms such as seeded noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["LazyMultimodalDataset", "MediaError", "SampleTransform"]

#: ``fn(inputs, i)``: per-sample transform; ``i`` is the sample's index in the WHOLE dataset,
#: so a seeded transform gives sample i the same result whatever split or subset holds it.
SampleTransform = Callable[[dict[str, Tensor], int], dict[str, Tensor]]


class MediaError(ValueError):
    """A media file is missing, corrupt, or not what the configuration expects.

    Attributes:
        path: the file at fault.
    """

    def __init__(self, path: Union[str, Path], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class LazyMultimodalDataset(Dataset):
    """Samples produced on demand by ``load(i) -> {modality: tensor}``.

    Args:
        load: picklable callable (an object, not a lambda, so DataLoader workers can use it)
            returning the modality tensors of sample ``i`` of the whole dataset.
        labels: int64 (N,) labels of the whole dataset.
        input_shapes: modality -> shape of one sample, in modality order.
        index: positions of this dataset's samples in the whole dataset (default: all).
        transforms: applied in order after ``load`` (see :data:`SampleTransform`).
    """

    def __init__(self, load: Callable[[int], dict[str, Tensor]], labels: Tensor,
                 input_shapes: Mapping[str, Sequence[int]], index: Optional[Tensor] = None,
                 transforms: Sequence[SampleTransform] = ()) -> None:
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
        if not input_shapes:
            raise ValueError("LazyMultimodalDataset needs at least one modality")
        self.load = load
        self.all_labels = labels.long()
        self._shapes = {m: tuple(int(s) for s in shape) for m, shape in input_shapes.items()}
        self.index = (torch.arange(len(labels)) if index is None else index.long())
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        g = int(self.index[i])
        inputs = self.load(g)
        for fn in self.transforms:
            inputs = fn(inputs, g)
        return inputs, self.all_labels[g]

    @property
    def labels(self) -> Tensor:
        """int64 (len,) labels of this dataset's samples."""
        return self.all_labels[self.index]

    @property
    def modalities(self) -> list[str]:
        return list(self._shapes)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def subset(self, idx: Tensor) -> LazyMultimodalDataset:
        """The samples at positions ``idx`` (int64, positions in THIS dataset)."""
        return LazyMultimodalDataset(self.load, self.all_labels, self._shapes,
                                     self.index[idx], self.transforms)

    def with_transform(self, fn: SampleTransform) -> LazyMultimodalDataset:
        """A copy that also applies ``fn`` to every sample."""
        return LazyMultimodalDataset(self.load, self.all_labels, self._shapes, self.index,
                                     (*self.transforms, fn))
