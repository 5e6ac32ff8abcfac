"""Train/val/test index splits: stratified by class, by group (speaker, actor), or given.

Every split is a pure function of the labels, the groups and a seed, so every method of a
comparison gets the same partition.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["stratified_split", "group_split", "split_indices", "SPLIT_BY"]

#: valid values of ``data.split_by``.
SPLIT_BY = ("class", "group")


def stratified_split(labels: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Split sample indices into parts holding the same class proportions.

    Per class c (ascending) with n_c samples, a permutation drawn from one generator seeded
    with ``seed`` is cut at ``round(F_j * n_c)``, F_j the cumulative fraction of parts 0..j;
    the last part takes the remainder.

    Args:
        labels: int (N,) class labels.
        fractions: non-negative part sizes summing to 1.
        seed: seed of the permutations.

    Returns:
        One sorted int64 index tensor per part; disjoint, together covering 0..N-1.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative and non-empty, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    cum, bounds = 0.0, []
    for f in fractions[:-1]:
        cum += f
        bounds.append(cum)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()  # (n_c,) ascending
        members = members[torch.randperm(len(members), generator=gen)]
        cuts = [0] + [min(round(b * len(members)), len(members)) for b in bounds] + [len(members)]
        for j in range(len(fractions)):
            parts[j].append(members[cuts[j]:max(cuts[j], cuts[j + 1])])
    return [torch.sort(torch.cat(p)).values if p else torch.zeros(0, dtype=torch.long)
            for p in parts]


def _check_names(names: Optional[Sequence[str]], valid: list[str], key: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{key}: expected a list of group names, got {names!r}")
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"{key}: unknown group(s) {unknown}; valid groups: {valid}")
    return list(names)


def group_split(groups: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
                test_groups: Optional[Sequence[str]] = None,
                val_groups: Optional[Sequence[str]] = None) -> list[Tensor]:
    """Split so that no group (speaker, actor, ...) has samples in two parts.

    Groups not named in ``test_groups``/``val_groups`` are drawn from a permutation of the
    sorted group names seeded with ``seed``: ``max(1, round(f * G))`` groups for a part of
    fraction f > 0 (G groups in all), test first, then val.

    Returns:
        Sorted int64 index tensors ``[train, val, test]``.
    """
    names = sorted(set(groups))
    test = _check_names(test_groups, names, "test_groups")
    val = _check_names(val_groups, names, "val_groups")
    if set(test) & set(val):
        raise ValueError(f"groups {sorted(set(test) & set(val))} are in both test_groups "
                         f"and val_groups")
    free = [names[i] for i in torch.randperm(len(names), generator=torch.Generator()
                                             .manual_seed(seed)).tolist()
            if names[i] not in test and names[i] not in val]
    for chosen, frac in ((test, test_fraction), (val, val_fraction)):
        if not chosen and frac > 0:
            k = max(1, round(frac * len(names)))
            chosen.extend(free[:k])
            del free[:k]
    if not free:
        raise ValueError(f"group split leaves no group for training: {len(names)} groups "
                         f"{names}, test {sorted(test)}, val {sorted(val)}")
    part = {g: 2 for g in test} | {g: 1 for g in val}
    where = torch.tensor([part.get(g, 0) for g in groups])  # (N,) 0 train, 1 val, 2 test
    return [torch.nonzero(where == k).flatten() for k in range(3)]


def split_indices(labels: Tensor, *, val_fraction: float, test_fraction: float,
                  split_seed: int, split_by: str = "class",
                  groups: Optional[Sequence[str]] = None,
                  predefined: Optional[dict[str, Tensor]] = None,
                  test_groups: Optional[Sequence[str]] = None,
                  val_groups: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """The train/val/test indices of a dataset.

    ``predefined`` (a dataset's official lists) fixes train and test, and val too when it has
    one; otherwise val is carved from the given training part (``val_fraction`` of it, by
    class or by group). Without ``predefined``, ``split_by`` picks :func:`stratified_split`
    or :func:`group_split` over all samples.
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by: expected one of {list(SPLIT_BY)}, got {split_by!r}")
    if split_by == "group" and groups is None:
        raise ValueError("split_by 'group' needs a dataset with groups (speakers, actors); "
                         "this dataset has none")
    if split_by == "class" and (test_groups or val_groups):
        raise ValueError("test_groups/val_groups need split_by: group")
    if predefined is None:
        if split_by == "group":
            train, val, test = group_split(groups, val_fraction, test_fraction, split_seed,
                                           test_groups, val_groups)
        else:
            fracs = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
            train, val, test = stratified_split(labels, fracs, split_seed)
        return {"train": train, "val": val, "test": test}
    missing = sorted({"train", "test"} - set(predefined))
    if missing:
        raise ValueError(f"a predefined split needs 'train' and 'test' parts; missing {missing}")
    if test_groups:
        raise ValueError("test_groups: this dataset has an official test split (list files); "
                         "drop test_groups, or the list files")
    if "val" in predefined:
        if val_groups:
            raise ValueError("val_groups: this dataset's official split has a validation part")
        return {k: predefined[k] for k in ("train", "val", "test")}
    base = predefined["train"]
    if split_by == "group":
        sub = [groups[i] for i in base.tolist()]
        keep, val, _ = group_split(sub, val_fraction, 0.0, split_seed, None, val_groups)
    else:
        keep, val = stratified_split(labels[base], [1.0 - val_fraction, val_fraction],
                                     split_seed)
    return {"train": base[keep], "val": base[val], "test": predefined["test"]}
