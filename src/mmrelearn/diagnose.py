"""Diagnosing: k-means, clustering purity, purity gap and re-initialisation strength.

Pure functions, tensors in and numbers out (paper Sec. 3.2, Eqs. 1-5). Together with
``relearn.py`` this file holds the whole logic of Diagnosing & Re-learning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

__all__ = [
    "KMeansResult",
    "kmeans",
    "purity",
    "minmax_scale",
    "cluster_purity",
    "purity_gap",
    "reinit_strength",
    "STRENGTH_FUNCTIONS",
]


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`: ``labels`` (N,), ``centers`` (k, d), ``inertia``, ``n_iter``."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


def _sq_dists(x: torch.Tensor, c: torch.Tensor, xx: Optional[torch.Tensor] = None) -> torch.Tensor:
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, (N, d) x (k, d) -> (N, k); clamp the rounding below 0.
    if xx is None:
        xx = (x * x).sum(1, keepdim=True)  # (N, 1), passed in by callers that loop
    d = torch.addmm(xx + (c * c).sum(1)[None, :], x, c.T, alpha=-2.0)
    return d.clamp_min_(0.0)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007), as scikit-learn does it.

    Each new centre is the best (lowest resulting potential) of ``2 + ln k`` candidates drawn
    with probability proportional to D(x)^2.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    xx = (x * x).sum(1, keepdim=True)  # (N, 1)
    first = torch.randint(n, (1,), generator=gen, device=x.device)
    centers = [x[first[0]]]
    closest = _sq_dists(x, centers[0][None, :], xx)[:, 0]  # (N,)
    for _ in range(1, k):
        total = closest.sum()
        # all points on chosen centres (duplicates): draw uniformly
        probs = closest / total if total > 0 else torch.ones_like(closest)
        cand = torch.multinomial(probs, trials, replacement=True, generator=gen)  # (trials,)
        d_cand = torch.minimum(closest[None, :], _sq_dists(x, x[cand], xx).T)  # (trials, N)
        best = int(d_cand.sum(1).argmin())
        centers.append(x[cand[best]])
        closest = d_cand[best]
    return torch.stack(centers)


def _lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansResult:
    """Alternate the assignment (Eq. 1) and update (Eq. 2) steps until assignments settle."""
    k = centers.shape[0]
    xx = (x * x).sum(1, keepdim=True)  # (N, 1)
    labels = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        d = _sq_dists(x, centers, xx)
        new_labels = d.argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)  # (k,)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() > 0:
            # An empty cluster takes the point farthest from its own centre (as scikit-learn does).
            far = d.gather(1, labels[:, None])[:, 0].argsort(descending=True)
            new_centers[empty] = x[far[: empty.numel()]]
        shift = ((new_centers - centers) ** 2).sum()
        centers = new_centers
        if shift <= tol:
            break
    d = _sq_dists(x, centers, xx)
    labels = d.argmin(1)
    inertia = float(d.gather(1, labels[:, None]).sum())
    return KMeansResult(labels=labels, centers=centers, inertia=inertia, n_iter=n_iter)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    seed: int = 0,
    tol: float = 1e-4,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding, on whatever device ``x`` lives on.

    Paper Eqs. 1-2. Deterministic for a given ``seed``; the best of ``n_init`` runs (lowest
    inertia) is returned. ``tol`` is relative to the mean per-dimension variance of ``x``, as
    in scikit-learn. With fewer points than clusters every point gets its own cluster;
    duplicate points and empty clusters are handled.

    Args:
        x: features, shape (N, d).
        k: number of clusters (the number of classes in D&R).
        n_init: independent seedings; the lowest-inertia result wins.
        max_iter: cap on assignment/update rounds per run.
        seed: seed of the k-means++ draws.
        tol: convergence threshold on the centre shift, relative to the data variance.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects features of shape (N, d); got {tuple(x.shape)}")
    if k < 1 or n_init < 1 or max_iter < 1:
        raise ValueError(f"kmeans needs k, n_init, max_iter >= 1; got {k}, {n_init}, {max_iter}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans got an empty feature set (N = 0)")
    if n <= k:
        labels = torch.arange(n, device=x.device)
        return KMeansResult(labels=labels, centers=x.clone(), inertia=0.0, n_iter=0)
    abs_tol = tol * float(x.var(0, unbiased=False).mean())
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(x, _kmeans_pp(x, k, gen), max_iter, abs_tol)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def purity(cluster_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Clustering purity, paper Eq. 3: (1/N) * sum over clusters of the largest label count.

    Args:
        cluster_ids: integer cluster of each sample, shape (N,).
        labels: integer ground-truth class of each sample, shape (N,).
    """
    cluster_ids = torch.as_tensor(cluster_ids).flatten().long().cpu()
    labels = torch.as_tensor(labels).flatten().long().cpu()
    if cluster_ids.shape != labels.shape:
        raise ValueError(f"purity: {cluster_ids.numel()} cluster ids for {labels.numel()} labels")
    if labels.numel() == 0:
        raise ValueError("purity of an empty set is undefined")
    if cluster_ids.min() < 0 or labels.min() < 0:
        raise ValueError("purity expects non-negative cluster ids and labels")
    n_c, n_y = int(cluster_ids.max()) + 1, int(labels.max()) + 1
    # contingency table (clusters x classes)
    table = torch.bincount(cluster_ids * n_y + labels, minlength=n_c * n_y).view(n_c, n_y)
    return float(table.max(1).values.sum()) / labels.numel()


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Scale each feature dimension to [-1, 1]; constant dimensions become 0."""
    lo, hi = x.min(0).values, x.max(0).values
    span = hi - lo
    scaled = 2.0 * (x - lo) / torch.where(span > 0, span, torch.ones_like(span)) - 1.0
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def cluster_purity(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    scale: str = "minmax",
    max_iter: int = 300,
) -> float:
    """Purity of a k-means clustering (k = ``num_classes``) of one modality's features.

    This is P_D or P_V of paper Sec. 3.2: features are scaled per dimension (``"minmax"`` to
    [-1, 1] as in the authors' release, or ``"none"``), clustered, and scored by Eq. 3.

    Args:
        features: (N, d) features of one modality on one split.
        labels: (N,) integer classes.
        num_classes: number of classes M, used as the number of clusters.
    """
    if features.ndim != 2:
        features = features.flatten(1)
    if features.shape[0] != torch.as_tensor(labels).numel():
        raise ValueError(f"cluster_purity: {features.shape[0]} features for {len(labels)} labels")
    x = features.detach().float()
    if scale == "minmax":
        x = minmax_scale(x)
    elif scale != "none":
        raise ValueError(f"cluster_purity: scale must be 'minmax' or 'none', got {scale!r}")
    result = kmeans(x, num_classes, n_init=n_init, max_iter=max_iter, seed=seed)
    return purity(result.labels, labels)


def purity_gap(p_train: float, p_val: float) -> float:
    """Purity gap g = |P_train - P_val|, paper Eq. 4."""
    return abs(float(p_train) - float(p_val))


def _linear_clip(x: float) -> float:
    return min(x, 1.0)


def _one_minus_exp(x: float) -> float:
    return 1.0 - math.exp(-x)


def _sigmoid_centred(x: float) -> float:
    return 2.0 / (1.0 + math.exp(-x)) - 1.0


# Footnote 4 of the paper: any function mapping x = lambda * g >= 0 monotonically into [0, 1].
STRENGTH_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "tanh": math.tanh,
    "linear_clip": _linear_clip,
    "exp": _one_minus_exp,
    "sigmoid": _sigmoid_centred,
}


def reinit_strength(
    gap: float, lam: float, fn: Union[str, Callable[[float], float]] = "tanh"
) -> float:
    """Re-initialisation strength alpha = fn(lambda * g), paper Eq. 5 (``fn = tanh``).

    Args:
        gap: purity gap g in [0, 1].
        lam: lambda, the strength multiplier (> 0).
        fn: a name from :data:`STRENGTH_FUNCTIONS` or a callable, monotone from [0, inf) to [0, 1].
    """
    if not 0.0 <= gap <= 1.0:
        raise ValueError(f"reinit_strength: gap must lie in [0, 1], got {gap}")
    if lam < 0:
        raise ValueError(f"reinit_strength: lambda must be >= 0, got {lam}")
    if isinstance(fn, str):
        if fn not in STRENGTH_FUNCTIONS:
            raise ValueError(
                f"reinit_strength: unknown strength function {fn!r}; "
                f"valid: {sorted(STRENGTH_FUNCTIONS)}"
            )
        fn = STRENGTH_FUNCTIONS[fn]
    alpha = float(fn(lam * gap))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"reinit_strength: strength function returned {alpha}, outside [0, 1]")
    return alpha
