"""Sample-level and modality-level modality valuation (Wei, Feng, Wang, Hu, "Enhancing
Multimodal Cooperation via Sample-level Modality Valuation", CVPR 2024; release
GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation @7ed12b0, ``code/sample_level.py``,
``code/modality_level.py``, ``code/datasets/dataloader.py``).

At the end of every epoch e >= warmup - 1 each modality's Shapley contribution to each
training sample's prediction is measured (v(S) = |S| * 1[head(z_S) predicts y], z_S = the
features with z_m := 0 for m not in S); the next epoch trains on the originals plus copies in
which only the under-contributing modality is kept (the others' features zeroed after their
encoders, so their encoders get no gradient from the copy). Modality-level: the mean
contribution on a random part of the training split sets how many random samples are copied
for the modality with the largest gap.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..config import check_choice, check_number
from ..models import ConcatFusion, ModelOutput
from .base import FitContext, Method, register_method
from .cml import partial_logits

__all__ = ["Valuation", "coalition_correct", "shapley_numerators", "sample_copies",
           "modality_copies"]


@torch.no_grad()
def coalition_correct(model: nn.Module, features: Mapping[str, torch.Tensor],
                      labels: torch.Tensor) -> torch.Tensor:
    """``(B, 2^K)`` bool: column S (bit j = the j-th modality of ``features``) says whether
    head(fusion(z with z_m := 0 for m not in S)) predicts y; column 0 (no modality) is False."""
    k, n = len(features), labels.shape[0]
    out = torch.zeros(n, 2 ** k, dtype=torch.bool, device=labels.device)
    bits = torch.tensor([1 << j for j in range(k)], device=labels.device)
    for s in range(1, 2 ** k):
        keep = ((s & bits) > 0).expand(n, k)  # (B, K)
        out[:, s] = partial_logits(model, features, keep).argmax(1) == labels
    return out


def shapley_numerators(correct: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, K)`` int64: K! phi_m, phi_m = sum_{S not containing m} |S|! (K-|S|-1)! / K!
    (v(S + m) - v(S)), v(S) = |S| 1[correct on S] (release; exact, all 2^K coalitions).
    K = 2: phi_a = (v(a) + v(av) - v(v)) / 2. Integers, so thresholds compare exactly."""
    size = torch.tensor([bin(s).count("1") for s in range(2 ** k)], device=correct.device)
    v = correct.long() * size  # (B, 2^K)
    phi = torch.zeros(correct.shape[0], k, dtype=torch.long, device=correct.device)
    for m in range(k):
        for s in range(2 ** k):
            if s >> m & 1:
                continue
            c = size[s].item()
            phi[:, m] += math.factorial(c) * math.factorial(k - c - 1) * (v[:, s | 1 << m]
                                                                          - v[:, s])
    return phi


def sample_copies(phi_num: torch.Tensor, k: int) -> torch.Tensor:
    """Copies per (sample, modality) from K! phi: 0 if phi >= 1, 1 if 0.4 <= phi < 1, 2 if
    -0.1 <= phi < 0.4, else 3 (release: 0.4 < phi < 0.9, -0.1 < phi < 0.4, phi < -0.1, the
    same for K = 2 where phi is a multiple of 1/2; its bounds themselves would get 0)."""
    f = math.factorial(k)
    ten = 10 * phi_num  # 10 K! phi, compared with 10 K! times the thresholds
    return ((ten < 10 * f).long() + (ten < 4 * f).long() + (ten < -f).long())


def modality_copies(phibar: Mapping[str, float], alpha: float, d_form: str
                    ) -> tuple[float, str, dict[str, float]]:
    """(D, the modality kept in the copies, gaps) from the mean contributions phibar_m.

    gap_m = 1 - phibar_m; base = mean over modality pairs of |gap_m - gap_j| * 2/3 (the
    release's |gap_a - gap_v| / 3 * 2 for K = 2); D = base alpha (``linear``, release),
    tanh(base alpha) (``tanh``) or base^1.5 alpha (``power``, the release's ``square``). The
    copies keep the largest-gap modality (K = 2 release: audio if gap_a > gap_v, else visual;
    the first in model order on a tie when K > 2)."""
    gaps = {m: 1.0 - p for m, p in phibar.items()}
    pairs = list(combinations(gaps.values(), 2))
    base = sum(abs(a - b) / 3 * 2 for a, b in pairs) / len(pairs)
    d = {"linear": base * alpha, "tanh": math.tanh(base * alpha),
         "power": base ** 1.5 * alpha}[d_form]
    mods = list(gaps)
    if len(mods) == 2:
        keep = mods[0] if gaps[mods[0]] > gaps[mods[1]] else mods[1]
    else:
        keep = max(mods, key=lambda m: gaps[m])  # max returns the first of equal gaps
    return d, keep, gaps


class _WithCopies(Dataset):
    """The training split plus copies: item j is ``(inputs, label, code)``, code = index i of
    the sample for an original (as ``WithIndex``), i + N (j + 1) for a copy keeping the j-th
    modality only."""

    def __init__(self, dataset: Dataset, copies: torch.Tensor) -> None:
        self.dataset, self.n = dataset, len(dataset)
        self.codes = list(range(self.n)) + copies.tolist()

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, j: int):
        inputs, y = self.dataset[self.codes[j] % self.n]
        return inputs, y, self.codes[j]


class _ShuffledBatches(Sampler):
    """Shuffled batches of ``batch_size`` drawn from ``gen``; a last batch of one sample joins
    the one before (BatchNorm cannot train on a single sample, and the size of an epoch with
    copies is not chosen by the user)."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.size, self.gen = n, batch_size, gen

    def __len__(self) -> int:
        return -(-self.n // self.size) - (self.n > self.size and self.n % self.size == 1)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen).tolist()
        batches = [order[i:i + self.size] for i in range(0, self.n, self.size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        yield from batches


@register_method("valuation")
class Valuation(Method):
    """Modality valuation (CVPR 2024), sample level (default) or modality level.

    Epochs < ``warmup`` train on the training split as joint training does. At the end of
    every epoch e >= warmup - 1 (eval mode, no grad) the training split in fixed order, without
    augmentation (``ctx.diag_train_loader``; the datasets here have no training transforms, so
    the release's augmented valuation pass has no counterpart) is valued, and epoch e + 1
    trains, in shuffled batches of the training batch size, on every original (nothing
    zeroed) plus copies with only one modality kept:

    - ``sample``: for every sample i and modality m, :func:`sample_copies` copies keeping m,
      from the exact Shapley values of :func:`shapley_numerators`.
    - ``modality``: Z = max(1, int(part_ratio N)) indices drawn with replacement are valued;
      :func:`modality_copies` gives D from their mean phi, then int(D N) random indices (with
      replacement) are copied keeping the largest-gap modality.

    A copy still passes through every encoder (so, in train mode, through their BatchNorm
    statistics, as released); only its features are zeroed. A last batch of one sample joins
    the one before. Prediction: the fused head, nothing zeroed.

    Args:
        level: ``sample`` (``sample_level.py``) or ``modality`` (``modality_level.py``).
        warmup: epochs of plain training (release 5); the first valuation ends epoch
            warmup - 1.
        part_ratio: modality level: share of the training split valued (release 0.2).
        alpha: modality level: scale of D (release 1).
        d_form: modality level: ``linear`` (release), ``tanh`` or ``power`` (exponent 1.5,
            the release's unused ``square``).
        seed: seed of the generator that draws Z, the copied indices and the shuffles.
    """

    wants_sample_index = True  # originals carry i, copies i + N (kept modality + 1)

    def __init__(self, level: str = "sample", warmup: int = 5, part_ratio: float = 0.2,
                 alpha: float = 1.0, d_form: str = "linear", seed: int = 0) -> None:
        check_choice("method.level", level, ("sample", "modality"))
        check_number("method.warmup", warmup, low=1, integer=True)
        check_number("method.part_ratio", part_ratio, low=0, high=1, low_open=True)
        check_number("method.alpha", alpha, low=0)
        check_choice("method.d_form", d_form, ("linear", "tanh", "power"))
        check_number("method.seed", seed, low=0, high=2**64 - 1, integer=True)  # torch's range
        self.level, self.warmup, self.part_ratio = level, warmup, part_ratio
        self.alpha, self.d_form = alpha, d_form
        self.gen = torch.Generator().manual_seed(seed)  # CPU: the same draws on any device
        self.copies: Optional[torch.Tensor] = None  # (n_copies,) codes for the next epoch
        self._n = 0  # size N of the training split

    def on_fit_start(self, ctx: FitContext) -> None:
        model, mods = ctx.model, list(ctx.model.encoders)
        if len(mods) < 2:
            raise ValueError(f"valuation needs at least 2 modalities, the model has {mods}")
        if not (isinstance(getattr(model, "fusion", None), ConcatFusion)
                and isinstance(getattr(model, "head", None), nn.Linear)):
            raise ValueError(
                f"valuation predicts with subsets of modalities by zeroing features after the "
                f"encoders, before a concatenation and the fused linear head; "
                f"{type(model).__name__} with fusion "
                f"{type(getattr(model, 'fusion', None)).__name__} has none: use model.fusion "
                f"'concat'")
        self._n = len(ctx.diag_train_loader.dataset)

    def train_loader(self, ctx: FitContext) -> Optional[DataLoader]:
        if self.copies is None:  # warm-up: the usual loader (indices < N, nothing zeroed)
            return None
        base, data = ctx.train_loader, _WithCopies(ctx.diag_train_loader.dataset, self.copies)
        return DataLoader(data, batch_sampler=_ShuffledBatches(len(data), base.batch_size,
                                                               self.gen),
                          generator=self.gen, num_workers=base.num_workers,
                          worker_init_fn=base.worker_init_fn)

    def forward(self, ctx: FitContext, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        feats = ctx.model.encode(inputs)  # m -> (B, d_m)
        if ctx.batch_index is None:
            raise ValueError("valuation needs each sample's code in the training batches "
                             "(the runner gives it: wants_sample_index)")
        kept = ctx.batch_index.to(next(iter(feats.values())).device) // self._n - 1  # (B,)
        cols = torch.arange(len(feats), device=kept.device)
        keep = (kept[:, None] < 0) | (kept[:, None] == cols)  # (B, K): copies keep one
        feats = {m: z * keep[:, j, None].to(z.dtype) for j, (m, z) in enumerate(feats.items())}
        return ModelOutput(logits=ctx.model.head(ctx.model.fusion(feats)), features=feats)

    @torch.no_grad()
    def _value(self, ctx: FitContext, loader) -> torch.Tensor:
        """(N', K) int64: K! phi of every sample the loader yields, in its order."""
        model, was_training = ctx.model, ctx.model.training
        model.eval()
        out = []
        for inputs, y in loader:
            y = y.to(ctx.device)
            feats = model.encode({m: x.to(ctx.device) for m, x in inputs.items()})
            out.append(shapley_numerators(coalition_correct(model, feats, y), len(feats)).cpu())
        model.train(was_training)
        return torch.cat(out)

    def on_train_epoch_end(self, ctx: FitContext) -> Optional[dict[str, Any]]:
        if ctx.epoch < self.warmup - 1:
            return {"valuation": {"valued": False}}
        mods, n = list(ctx.model.encoders), self._n
        k, f = len(mods), math.factorial(len(mods))
        report: dict[str, Any] = {"valued": True, "level": self.level}
        if self.level == "sample":
            phi = self._value(ctx, ctx.diag_train_loader)  # (N, K), fixed order: row i = i
            counts = sample_copies(phi, k)  # (N, K)
            # copy of i keeping the j-th modality: code i + N (j + 1), counts[i, j] times
            codes = torch.arange(n)[:, None] + n * (torch.arange(k)[None] + 1)
            self.copies = codes.flatten().repeat_interleave(counts.flatten())
            per_mod = counts.sum(0).tolist()
        else:
            z = torch.randint(0, n, (max(1, int(self.part_ratio * n)),), generator=self.gen)
            ds = ctx.diag_train_loader
            phi = self._value(ctx, DataLoader(
                Subset(ds.dataset, z.tolist()), batch_size=ds.batch_size,
                num_workers=ds.num_workers, generator=torch.Generator()))  # (|Z|, K)
            phibar = {m: float(phi[:, j].double().sum()) / (len(z) * f)
                      for j, m in enumerate(mods)}
            d, keep, gaps = modality_copies(phibar, self.alpha, self.d_form)
            idx = torch.randint(0, n, (int(d * n),), generator=self.gen)
            self.copies = idx + n * (mods.index(keep) + 1)
            per_mod = [len(idx) if m == keep else 0 for m in mods]
            report.update(valued_samples=len(z), gap=gaps, d=d, kept=keep)
        report["phi_mean"] = {m: float(phi[:, j].double().mean()) / f
                              for j, m in enumerate(mods)}
        report["copies"] = dict(zip(mods, per_mod))  # copies keeping m only
        report["next_epoch_size"] = n + len(self.copies)
        return {"valuation": report}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state(), "copies": self.copies}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(torch.as_tensor(state["generator"]).cpu())
        copies = state["copies"]
        self.copies = None if copies is None else torch.as_tensor(copies).long().cpu()
