"""build_data: split sizes, train-only standardization, holdout, noise, and option errors."""
from __future__ import annotations

import pytest
import torch

from mmrelearn.data import DATASETS, RawData, build_data, stratified_split

N = 100  # 4 classes x 25


def _toy(scale_rows: list[int] | None = None) -> RawData:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(N, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.0]) + 2.0  # (N, 3)
    img = torch.rand(N, 1, 2, 2, generator=gen)
    if scale_rows:
        a[scale_rows] = a[scale_rows] * 1e6
        img[scale_rows] = img[scale_rows] * 1e6
    return RawData({"a": a, "img": img}, torch.arange(N) % 4, 4)


@pytest.fixture
def toy(monkeypatch):
    state = {"scale_rows": None}
    monkeypatch.setitem(DATASETS, "toy", lambda: _toy(state["scale_rows"]))
    return state


SPLIT = dict(val_fraction=0.2, test_fraction=0.2, split_seed=0)


def test_split_sizes_are_stratified(toy):
    data = build_data("toy", **SPLIT)
    assert (len(data.train), len(data.val), len(data.test)) == (60, 20, 20)
    assert torch.bincount(data.val.labels).tolist() == [5, 5, 5, 5]
    assert data.modalities == ["a", "img"] and data.input_shapes == {"a": (3,), "img": (1, 2, 2)}
    assert data.holdout is None and data.num_classes == 4


def test_standardization_uses_training_rows_only(toy):
    clean = build_data("toy", **SPLIT)
    raw = _toy()
    train_rows = _rows_of(raw.inputs["a"], "train")
    mean, std = train_rows.mean(0), train_rows.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant column: std 0 -> 1
    assert torch.allclose(clean.train.inputs["a"].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(clean.train.inputs["a"].std(0, unbiased=False),
                          torch.tensor([1.0, 1.0, 0.0]), atol=1e-5)
    val_rows = _rows_of(raw.inputs["a"], "val")
    assert torch.allclose(clean.val.inputs["a"], (val_rows - mean) / std, atol=1e-5)
    # huge values in the test rows change neither train nor val
    toy["scale_rows"] = _index_of("test").tolist()
    dirty = build_data("toy", **SPLIT)
    assert torch.equal(dirty.train.inputs["a"], clean.train.inputs["a"])
    assert torch.equal(dirty.val.inputs["a"], clean.val.inputs["a"])
    assert dirty.test.inputs["a"].abs().max() > 1e4
    assert torch.equal(clean.train.inputs["img"], _rows_of(raw.inputs["img"], "train"))


def test_standardize_false_keeps_raw_values(toy):
    data = build_data("toy", standardize=False, **SPLIT)
    assert torch.equal(data.train.inputs["a"], _rows_of(_toy().inputs["a"], "train"))


def test_holdout_is_carved_from_train_only(toy):
    base = build_data("toy", **SPLIT)
    held = build_data("toy", holdout_fraction=0.2, standardize=False, **SPLIT)
    plain = build_data("toy", standardize=False, **SPLIT)
    assert (len(held.train), len(held.holdout)) == (48, 12)  # 15 -> 12 + 3 per class
    assert torch.bincount(held.holdout.labels).tolist() == [3, 3, 3, 3]
    ids = {s: _ids(getattr(held, s)) for s in ("train", "holdout", "val", "test")}
    assert not ids["train"] & ids["holdout"]
    assert ids["train"] | ids["holdout"] == _ids(plain.train)
    assert ids["val"] == _ids(plain.val) and ids["test"] == _ids(plain.test)
    assert len(base.train) == 60


def test_noise_is_deterministic_and_only_on_named_modality():
    opts = dict(num_samples=200, num_classes=4, dims=[5, 5], **SPLIT)
    noise = {"modality": "m1", "snr_db": 0.0, "seed": 3}
    clean = build_data("synthetic", **opts)
    first = build_data("synthetic", noise=noise, **opts)
    second = build_data("synthetic", noise=dict(noise), **opts)
    for split in ("train", "val", "test"):
        a, b, c = (getattr(d, split).inputs for d in (first, second, clean))
        assert torch.equal(a["m1"], b["m1"]) and torch.equal(a["m0"], c["m0"])
        assert not torch.allclose(a["m1"], c["m1"])
    other = build_data("synthetic", noise={**noise, "seed": 4}, **opts)
    assert not torch.equal(other.test.inputs["m1"], first.test.inputs["m1"])


def test_noise_comes_after_standardization(toy):
    # raw "a" has mean 2 and column scales 1, 5, 0: noise drawn on the raw values would sit
    # near -11 dB against the standardized signal; drawn after, near the requested 0 dB.
    clean = build_data("toy", **SPLIT)
    noisy = build_data("toy", noise={"modality": "a", "snr_db": 0.0}, **SPLIT)
    for split in ("train", "val", "test"):
        c, n = getattr(clean, split).inputs, getattr(noisy, split).inputs
        snr = 10 * torch.log10(c["a"].pow(2).sum() / (n["a"] - c["a"]).pow(2).sum())
        assert abs(snr.item()) < 2.0, (split, snr)
        assert torch.equal(c["img"], n["img"])


@pytest.mark.parametrize("noise, pattern", [
    ({"modality": "m1", "snr_db": 0.0, "sdr": 1}, r"'sdr'.*valid keys.*'snr_db'"),
    ({"modality": "m7", "snr_db": 0.0}, r"'m7'.*\['m0', 'm1'\]"),
    ({"modality": "m1"}, r"missing.*'snr_db'"),
    ({"modality": "m1", "snr_db": float("nan")}, r"noise.snr_db: expected a finite number"),
    ({"modality": "m1", "snr_db": "ten"}, r"noise.snr_db: expected a finite number.*'ten'"),
])
def test_noise_errors_name_the_key(noise, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_data("synthetic", num_samples=40, dims=[2, 2], noise=noise, **SPLIT)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"'imagenet'.*'mfeat'.*'synthetic'"):
        build_data("imagenet", **SPLIT)


def test_unknown_option_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'synthetic'.*'num_sample'.*valid.*'num_samples'"):
        build_data("synthetic", num_sample=10, **SPLIT)
    with pytest.raises(ValueError, match=r"'mfeat'.*'modalitiez'.*'modalities'"):
        build_data("mfeat", modalitiez=["fac"], **SPLIT)


def test_missing_option_and_seed_for_seedless_dataset(monkeypatch):
    monkeypatch.setitem(DATASETS, "needs", lambda size: _toy())
    with pytest.raises(ValueError, match=r"'needs'.*missing.*'size'"):
        build_data("needs", **SPLIT)
    monkeypatch.setitem(DATASETS, "toy", lambda: _toy())
    with pytest.raises(ValueError, match=r"'toy' takes no seed"):
        build_data("toy", seed=1, **SPLIT)


def test_bad_fractions_are_rejected(toy):
    with pytest.raises(ValueError, match="fractions"):
        build_data("toy", val_fraction=0.6, test_fraction=0.6, split_seed=0)
    with pytest.raises(ValueError, match="holdout_fraction"):
        build_data("toy", holdout_fraction=1.0, **SPLIT)


def test_seed_reaches_generated_data():
    a = build_data("synthetic", num_samples=40, dims=[2, 2], seed=1, **SPLIT)
    b = build_data("synthetic", num_samples=40, dims=[2, 2], seed=2, **SPLIT)
    assert not torch.equal(a.test.inputs["m0"], b.test.inputs["m0"])


def test_config_defaults_feed_build_data(tiny_raw):
    from mmrelearn.config import config_from_dict

    tiny_raw["data"]["noise"] = {"modality": "m0", "snr_db": 5.0}
    cfg = config_from_dict(tiny_raw)
    opts = {k: v for k, v in cfg.data.items() if k != "name"}
    data = build_data(cfg.data["name"], **opts)
    assert len(data.train) + len(data.val) + len(data.test) == 240


# ---------------------------------------------------------------- helpers: row identity

def _ids(ds) -> set[int]:
    """Original row ids, recovered from the (unstandardized) raw rows of the toy data."""
    raw = _toy().inputs["a"]
    return {int(torch.nonzero((raw == row).all(1)).item()) for row in ds.inputs["a"]}


def _index_of(split: str) -> torch.Tensor:
    parts = stratified_split(torch.arange(N) % 4, [0.6, 0.2, 0.2], 0)
    return dict(zip(("train", "val", "test"), parts))[split]


def _rows_of(x: torch.Tensor, split: str) -> torch.Tensor:
    return x[_index_of(split)]


def test_holdout_does_not_change_any_tensor():
    """A method with a holdout sees the same standardised, noisy samples as one without."""
    kw = dict(val_fraction=0.2, test_fraction=0.2, split_seed=0, num_samples=200,
              num_classes=4, dims=[5, 3], noise={"modality": "m0", "snr_db": 0.0})
    plain = build_data("synthetic", **kw)
    held = build_data("synthetic", holdout_fraction=0.25, **kw)
    assert len(held.train) + len(held.holdout) == len(plain.train)
    rows = {tuple(x.tolist()) for x in plain.train.inputs["m0"]}
    for part in (held.train, held.holdout):
        assert all(tuple(x.tolist()) in rows for x in part.inputs["m0"])
    for split in ("val", "test"):
        for m in ("m0", "m1"):
            assert torch.equal(getattr(plain, split).inputs[m], getattr(held, split).inputs[m])


def test_synthetic_modality_subset_keeps_the_data():
    from mmrelearn.data.synthetic import make_synthetic

    whole = make_synthetic(num_samples=30, num_classes=3, dims=[2, 3, 4],
                           separations=[1, 2, 3], seed=4)
    sub = make_synthetic(num_samples=30, num_classes=3, dims=[2, 3, 4],
                         separations=[1, 2, 3], seed=4, modalities=["m2", "m0"])
    assert list(sub.inputs) == ["m2", "m0"] and torch.equal(sub.labels, whole.labels)
    assert torch.equal(sub.inputs["m2"], whole.inputs["m2"])
    with pytest.raises(ValueError, match="synthetic.modalities"):
        make_synthetic(modalities=["m9"])
