"""group_split, official (predefined) splits, and file-backed (lazy) datasets in build_data."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from mmrelearn.data import (DATASETS, LazyMultimodalDataset, RawData, build_data, group_split,
                            split_indices)
from mmrelearn.data.transforms import SampleNoise, add_noise_snr, sample_generator

N = 24  # 2 classes; 4 groups of 6 samples
GROUPS = [f"s{i // 6}" for i in range(N)]
LABELS = torch.arange(N) % 2
SPLIT = dict(val_fraction=0.25, test_fraction=0.25, split_seed=0)


class _Load:
    """Picklable loader: sample i is a (2,) vector [i, 10 i] and a (1, 2, 2) image of i."""

    def __call__(self, i: int) -> dict[str, torch.Tensor]:
        return {"v": torch.tensor([float(i), 10.0 * i]), "img": torch.full((1, 2, 2), float(i))}


def _lazy() -> LazyMultimodalDataset:
    return LazyMultimodalDataset(_Load(), LABELS, {"v": (2,), "img": (1, 2, 2)})


def test_group_split_keeps_groups_apart_and_is_seeded():
    train, val, test = group_split(GROUPS, 0.25, 0.25, seed=0)
    names = [{GROUPS[i] for i in part.tolist()} for part in (train, val, test)]
    assert [len(n) for n in names] == [2, 1, 1]  # round(0.25 * 4) = 1 group each
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert sum(len(p) for p in (train, val, test)) == N
    again = group_split(GROUPS, 0.25, 0.25, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    # the seeded order: which group goes to test depends on the seed
    tests = {frozenset(GROUPS[i] for i in group_split(GROUPS, 0.25, 0.25, s)[2].tolist())
             for s in range(8)}
    assert len(tests) > 1


def test_group_split_named_groups():
    train, val, test = group_split(GROUPS, 0.25, 0.25, 0, test_groups=["s3"], val_groups=["s0"])
    assert test.tolist() == list(range(18, 24)) and val.tolist() == list(range(6))
    assert train.tolist() == list(range(6, 18))


@pytest.mark.parametrize("kwargs, pattern", [
    ({"test_groups": ["s9"]}, r"test_groups: unknown group\(s\) \['s9'\]; valid groups"),
    ({"test_groups": ["s1"], "val_groups": ["s1"]}, "in both test_groups and val_groups"),
    ({"test_groups": "s1"}, "expected a list of group names"),
    ({"test_groups": ["s0", "s1"], "val_groups": ["s2", "s3"]}, "no group for training"),
])
def test_group_split_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        group_split(GROUPS, 0.25, 0.25, 0, **kwargs)


def test_split_indices_predefined_carves_val_from_train_only():
    pre = {"train": torch.arange(0, 16), "test": torch.arange(16, 24)}
    out = split_indices(LABELS, predefined=pre, **SPLIT)
    assert out["test"].tolist() == list(range(16, 24))
    assert len(out["val"]) == 4 and len(out["train"]) == 12  # 25% of 16, per class 2 + 2
    assert set(out["val"].tolist()) | set(out["train"].tolist()) == set(range(16))
    assert (LABELS[out["val"]] == 0).sum() == 2
    full = split_indices(LABELS, predefined={**pre, "val": torch.tensor([0])}, **SPLIT)
    assert full["val"].tolist() == [0]
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        split_indices(LABELS, predefined={"train": pre["train"]}, **SPLIT)
    with pytest.raises(ValueError, match="test_groups: this dataset has an official test"):
        split_indices(LABELS, predefined=pre, split_by="group", groups=GROUPS,
                      test_groups=["s0"], **SPLIT)
    with pytest.raises(ValueError, match="val_groups: this dataset's official split has"):
        split_indices(LABELS, predefined={**pre, "val": torch.tensor([0])}, split_by="group",
                      groups=GROUPS, val_groups=["s0"], **SPLIT)


def test_split_by_errors():
    with pytest.raises(ValueError, match="split_by: expected one of"):
        split_indices(LABELS, split_by="speaker", **SPLIT)
    with pytest.raises(ValueError, match="dataset with groups"):
        split_indices(LABELS, split_by="group", **SPLIT)
    with pytest.raises(ValueError, match="need split_by: group"):
        split_indices(LABELS, test_groups=["s0"], **SPLIT)


def test_lazy_dataset_items_subset_and_pickle():
    ds = _lazy()
    sub = ds.subset(torch.tensor([5, 2]))
    x, y = sub[0]
    assert x["v"].tolist() == [5.0, 50.0] and y.item() == 1
    assert sub.labels.tolist() == [1, 0] and len(sub) == 2
    assert sub.subset(torch.tensor([1])).index.tolist() == [2]  # positions compose
    assert ds.input_shapes == {"v": (2,), "img": (1, 2, 2)} and ds.modalities == ["v", "img"]
    clone = pickle.loads(pickle.dumps(sub))
    assert clone[1][0]["v"].tolist() == [2.0, 20.0]
    xb, yb = next(iter(DataLoader(sub, batch_size=2)))
    assert xb["img"].shape == (2, 1, 2, 2) and yb.tolist() == [1, 0]


def test_sample_noise_is_fixed_per_whole_dataset_index():
    noise = SampleNoise("v", snr_db=0.0, seed=3)
    ds = _lazy().with_transform(noise)
    x7 = ds[7][0]["v"]
    expected = add_noise_snr(torch.tensor([[7.0, 70.0]]), 0.0, sample_generator(3, 7))[0]
    assert torch.equal(x7, expected)
    # the same sample inside a subset gets the same noise; the other modality is untouched
    sub = ds.subset(torch.tensor([7]))
    assert torch.equal(sub[0][0]["v"], x7) and torch.equal(sub[0][0]["img"], ds[7][0]["img"])


@pytest.fixture
def lazy_data(monkeypatch):
    monkeypatch.setitem(DATASETS, "lazytoy", lambda: RawData(
        None, LABELS, 2, dataset=_lazy(), groups=GROUPS,
        splits={"train": torch.arange(0, 18), "test": torch.arange(18, 24)}))


def test_build_data_with_lazy_official_split_noise_and_holdout(lazy_data):
    bundle = build_data("lazytoy", noise={"modality": "v", "snr_db": 10.0, "seed": 1},
                        holdout_fraction=0.25, **SPLIT)
    assert isinstance(bundle.train, LazyMultimodalDataset)
    test_ids = sorted(int(x["img"][0, 0, 0]) for x, _ in bundle.test)
    assert test_ids == list(range(18, 24))
    seen = [int(x["img"][0, 0, 0]) for part in (bundle.train, bundle.val, bundle.holdout)
            for x, _ in part]
    assert sorted(seen) == list(range(18))  # train + val + holdout = the official train list
    x, _ = bundle.val[0]
    g = int(x["img"][0, 0, 0])
    assert not torch.equal(x["v"], torch.tensor([float(g), 10.0 * g]))  # noisy
    again = build_data("lazytoy", noise={"modality": "v", "snr_db": 10.0, "seed": 1}, **SPLIT)
    assert torch.equal(again.val[0][0]["v"], x["v"])  # same noise without a holdout


def test_build_data_group_split_on_lazy_data(monkeypatch):
    monkeypatch.setitem(DATASETS, "grouptoy",
                        lambda: RawData(None, LABELS, 2, dataset=_lazy(), groups=GROUPS))
    bundle = build_data("grouptoy", split_by="group", test_groups=["s1"], **SPLIT)
    assert sorted(int(x["img"][0, 0, 0]) for x, _ in bundle.test) == list(range(6, 12))


def test_build_data_rejects_bad_raw(monkeypatch):
    monkeypatch.setitem(DATASETS, "both", lambda: RawData(
        {"v": torch.zeros(N, 2)}, LABELS, 2, dataset=_lazy()))
    with pytest.raises(ValueError, match="exactly one of inputs and dataset"):
        build_data("both", **SPLIT)
    monkeypatch.setitem(DATASETS, "badgroups", lambda: RawData(
        {"v": torch.zeros(N, 2)}, LABELS, 2, groups=["a"]))
    with pytest.raises(ValueError, match="1 groups for 24 samples"):
        build_data("badgroups", **SPLIT)


def test_noise_is_the_same_in_memory_and_read_from_files(monkeypatch):
    load = _Load()
    memory = {m: torch.stack([load(i)[m] for i in range(N)]) for m in ("v", "img")}
    monkeypatch.setitem(DATASETS, "mem", lambda: RawData(memory, LABELS, 2))
    monkeypatch.setitem(DATASETS, "files", lambda: RawData(None, LABELS, 2, dataset=_lazy()))
    noise = {"modality": "v", "snr_db": 0.0, "seed": 5}
    a = build_data("mem", noise=noise, standardize=False, **SPLIT)
    b = build_data("files", noise=noise, standardize=False, **SPLIT)
    for split in ("train", "val", "test"):
        xa = getattr(a, split).inputs["v"]
        xb = torch.stack([x["v"] for x, _ in getattr(b, split)])
        assert torch.equal(xa, xb), split
        ids = getattr(a, split).inputs["img"][:, 0, 0, 0].long()  # sample i has img == i
        assert not torch.equal(xa, memory["v"][ids])  # the noise is there
