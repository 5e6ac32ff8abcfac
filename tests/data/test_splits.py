"""MultimodalDataset and stratified_split: shapes, errors, exact per-class counts, determinism."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mmrelearn.data import MultimodalDataset, stratified_split


def _dataset(n: int = 6) -> MultimodalDataset:
    inputs = {"a": torch.arange(n * 3, dtype=torch.float32).view(n, 3),
              "img": torch.zeros(n, 1, 2, 2)}
    return MultimodalDataset(inputs, torch.arange(n) % 2)


def test_dataset_items_shapes_and_collate():
    ds = _dataset()
    assert len(ds) == 6 and ds.modalities == ["a", "img"]
    assert ds.input_shapes == {"a": (3,), "img": (1, 2, 2)}
    x, y = ds[4]
    assert torch.equal(x["a"], torch.tensor([12.0, 13.0, 14.0]))
    assert y.dtype == torch.int64 and y.dim() == 0 and y.item() == 0
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb["a"].shape == (4, 3) and xb["img"].shape == (4, 1, 2, 2) and yb.shape == (4,)


def test_dataset_subset_indexes_every_tensor():
    sub = _dataset().subset(torch.tensor([5, 1]))
    assert torch.equal(sub.inputs["a"][:, 0], torch.tensor([15.0, 3.0]))
    assert sub.inputs["img"].shape == (2, 1, 2, 2) and torch.equal(sub.labels, torch.tensor([1, 1]))


def test_dataset_length_mismatch_names_modality():
    with pytest.raises(ValueError, match="'short'"):
        MultimodalDataset({"ok": torch.zeros(4, 2), "short": torch.zeros(3, 2)}, torch.zeros(4))


def test_split_exact_counts_per_class():
    # class 0: n=5 -> cuts round(0.6*5)=3, round(0.8*5)=4 -> sizes 3, 1, 1
    # class 1: n=10 -> cuts 6, 8 -> sizes 6, 2, 2
    # class 2: n=7 -> cuts round(4.2)=4, round(5.6)=6 -> sizes 4, 2, 1
    labels = torch.tensor([0] * 5 + [1] * 10 + [2] * 7)[torch.randperm(22)]
    parts = stratified_split(labels, [0.6, 0.2, 0.2], seed=3)
    counts = [torch.bincount(labels[p], minlength=3).tolist() for p in parts]
    assert counts == [[3, 6, 4], [1, 2, 2], [1, 2, 1]]


def test_split_disjoint_sorted_covering_and_seeded():
    labels = torch.arange(103) % 4
    parts = stratified_split(labels, [0.5, 0.3, 0.2], seed=0)
    everything = torch.cat(parts)
    assert torch.equal(torch.sort(everything).values, torch.arange(103))  # disjoint + covering
    assert all(torch.equal(p, torch.sort(p).values) for p in parts)
    again = stratified_split(labels, [0.5, 0.3, 0.2], seed=0)
    other = stratified_split(labels, [0.5, 0.3, 0.2], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not torch.equal(parts[0], other[0])
    assert [len(p) for p in parts] == [len(p) for p in other]  # sizes depend on counts only


def test_split_matches_hand_permutation():
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    parts = stratified_split(labels, [0.5, 0.5], seed=11)
    gen = torch.Generator().manual_seed(11)
    zeros = torch.tensor([1, 3, 5, 7])[torch.randperm(4, generator=gen)]
    ones = torch.tensor([0, 2, 4, 6])[torch.randperm(4, generator=gen)]
    expected = torch.sort(torch.cat([zeros[:2], ones[:2]])).values
    assert torch.equal(parts[0], expected)


@pytest.mark.parametrize("fractions", [[0.5, 0.6], [1.2, -0.2], []])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(torch.zeros(10, dtype=torch.long), fractions, seed=0)
