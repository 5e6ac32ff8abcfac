"""Diagnosing: k-means, clustering purity, purity gap and re-initialisation strength.

Pure functions, tensors in and numbers out (paper Sec. 3.2, Eqs. 1-5). Together with
``relearn.py`` this file holds the whole logic of Diagnosing & Re-learning.
"""
from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`: ``labels`` (N,), ``centers`` (k, d), ``inertia``, ``n_iter``."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


def _sq_dists(x: torch.Tensor, c: torch.Tensor, xx: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, (N, d) x (k, d) -> (N, k); clamp the rounding below 0.
    if xx is None:
        xx = (x * x).sum(1, keepdim=True)  # (N, 1), passed in by callers that loop
    d = torch.addmm(xx + (c * c).sum(1)[None, :], x, c.T, alpha=-2.0, out=out)
    return d.clamp_min_(0.0)


def _row_blocks(n: int, d: int, cols: int, device: torch.device,
                chunk: Optional[int]) -> list[slice]:
    """Balanced row blocks of an (n, d) x (d, cols) distance product: at most ``chunk`` rows.

    Automatic on CPU: per thread, a block of points of about 1 MiB (it stays in cache while
    every restart adds it to its cluster sums) and at most 2^20 distances; elsewhere 2^28
    distances. Never under 512 rows: BLAS can round a product of a few rows differently from a
    tall one.
    """
    if chunk is None:
        threads = torch.get_num_threads()
        per_row = (threads * min(2**18 // max(d, 1), 2**20 // cols) if device.type == "cpu"
                   else 2**28 // cols)
        chunk = max(512, per_row)
    step = -(-n // -(-n // chunk))  # ceil(n / number of blocks)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _group_dists(x: torch.Tensor, xx: torch.Tensor, c: torch.Tensor,
                 chunk: Optional[int]) -> torch.Tensor:
    """Squared distances to G groups of g >= 2 centres, c (G, g, d) -> (N, G * g).

    One matmul per row block over all G * g centres: columns j*g .. (j+1)*g - 1 hold bitwise
    the values of ``_sq_dists(x, c[j], xx)`` (a column's dot products do not depend on the
    other columns, as long as there are at least two of them).
    """
    (n, d), flat = x.shape, c.reshape(-1, c.shape[-1])
    out = x.new_empty(n, flat.shape[0])
    for rows in _row_blocks(n, d, flat.shape[0], x.device, chunk):
        _sq_dists(x[rows], flat, xx[rows], out=out[rows])
    return out


def _mean_variance(x: torch.Tensor, block: int = 4096) -> float:
    """Mean over dimensions of the per-dimension variance of x (N, d), the scale of ``tol``.

    Two passes in float64 over row blocks, rounded to x's dtype per dimension: the same float32
    values as ``x.var(0, unbiased=False)`` (one float64 Welford pass) in every case tested, in
    a quarter of its time on CPU (there 1 s at 100k x 512, one thread).
    """
    n = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, n, block):
        total += x[s:s + block].double().sum(0)
    mean, m2 = total / n, torch.zeros_like(total)
    for s in range(0, n, block):
        m2 += ((x[s:s + block].double() - mean) ** 2).sum(0)
    return float((m2 / n).to(x.dtype).mean())


def _restart_generators(x: torch.Tensor, k: int, n_init: int,
                        seed: int) -> tuple[list[torch.Generator], list[torch.Tensor]]:
    """One generator per restart, each in the state that one generator seeded with ``seed``
    reaches when restart r's seeding starts in a sequential loop (restart after restart).

    The draws of a seeding are one ``randint`` and k - 1 ``multinomial`` calls of fixed shapes,
    so dummy draws of the same shapes advance the generator past a restart. Returns the
    generators and their start states (the caller checks that restart r really ends where
    restart r + 1 starts).
    """
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    n, trials = x.shape[0], 2 + int(math.log(k))
    uniform = torch.ones(n, device=x.device, dtype=x.dtype)
    gens, starts = [], []
    for r in range(n_init):
        starts.append(gen.get_state())
        g = torch.Generator(device=x.device)
        g.set_state(starts[-1])
        gens.append(g)
        if r + 1 < n_init:
            torch.randint(n, (1,), generator=gen, device=x.device)
            for _ in range(1, k):
                torch.multinomial(uniform, trials, replacement=True, generator=gen)
    return gens, starts


def _kmeans_pp(x: torch.Tensor, xx: torch.Tensor, k: int, gens: list[torch.Generator],
               chunk: Optional[int] = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007), as scikit-learn does it, for
    R = len(gens) restarts at once; restart r draws from ``gens[r]``. Returns (R, k, d).

    Each new centre is the best (lowest resulting potential) of ``2 + ln k`` candidates drawn
    with probability proportional to D(x)^2. The candidates' distances, the only O(N d) work,
    are one matmul over all restarts; the draws and the O(N) choices are per restart.
    """
    n, trials = x.shape[0], 2 + int(math.log(k))
    first = [torch.randint(n, (1,), generator=g, device=x.device) for g in gens]
    chosen = [[f[0]] for f in first]
    # a single centre per restart: one product each (a one-column product rounds differently)
    closest = [_sq_dists(x, x[f], xx)[:, 0] for f in first]  # R x (N,)
    for _ in range(1, k):
        cands = []
        for r, g in enumerate(gens):
            total = closest[r].sum()
            # all points on chosen centres (duplicates): draw uniformly
            probs = closest[r] / total if total > 0 else torch.ones_like(closest[r])
            cands.append(torch.multinomial(probs, trials, replacement=True, generator=g))
        dists = _group_dists(x, xx, x[torch.stack(cands)], chunk)  # (N, R * trials)
        for r, cand in enumerate(cands):
            d_cand = torch.minimum(closest[r][None, :], dists[:, r * trials:(r + 1) * trials].T)
            best = int(d_cand.sum(1).argmin())
            chosen[r].append(cand[best])
            closest[r] = d_cand[best]
    return x[torch.stack([torch.stack(c) for c in chosen])]  # (R, k, d)


def _assign(x: torch.Tensor, xx: torch.Tensor, centers: torch.Tensor, chunk: Optional[int],
            sums: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre (Eq. 1) of every point for T restarts, centers (T, k, d): returns labels
    (N, T) and each point's squared distance to its centre (N, T).

    Block by block: one matmul for all T restarts, then restart j adds the block's points to
    ``sums[j]`` (k, d) if present, while the block is in cache. Blocks come in ascending row
    order, so the float sums are those of one ``index_add_`` over all points.
    """
    (n, d), (t, k, _) = x.shape, centers.shape
    labels = torch.empty(n, t, dtype=torch.long, device=x.device)
    dmin = x.new_empty(n, t)
    for rows in _row_blocks(n, d, t * k, x.device, chunk):
        if k == 1:  # one column per restart: one product each, as the sequential version
            dist = torch.stack([_sq_dists(x[rows], c, xx[rows]) for c in centers], 1)
        else:
            dist = _sq_dists(x[rows], centers.reshape(t * k, d), xx[rows]).view(-1, t, k)
        torch.min(dist, 2, out=(dmin[rows], labels[rows]))  # the first minimum, as argmin
        for j, s in sums.items():
            s.index_add_(0, labels[rows, j], x[rows])
    return labels, dmin


def _update(x: torch.Tensor, labels: torch.Tensor, dmin: torch.Tensor, sums: torch.Tensor,
            centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One restart's update step (Eq. 2) from its cluster sums (k, d); returns the new centres
    and the squared shift. An empty cluster takes the point farthest from its own centre (as
    scikit-learn does)."""
    counts = torch.bincount(labels, minlength=centers.shape[0])  # (k,)
    new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel() > 0:
        far = dmin.argsort(descending=True)
        new_centers[empty] = x[far[: empty.numel()]]
    return new_centers, ((new_centers - centers) ** 2).sum()


def _lloyd_batched(x: torch.Tensor, xx: torch.Tensor, centers: torch.Tensor, max_iter: int,
                   tol: float, chunk: Optional[int] = None) -> list[KMeansResult]:
    """Lloyd's iterations (Eqs. 1-2) for R restarts at once from centers (R, k, d).

    Every pass assigns the points of all unfinished restarts with one matmul per row block and
    accumulates the cluster sums in the same pass. A restart stops when its assignments repeat
    or its centres move by at most ``tol`` (then one last assignment to the moved centres), as
    a restart run alone does; finished restarts drop out of the matmul. Returns R results
    (inertia as a 0-dim tensor).
    """
    r_all = centers.shape[0]
    centers = centers.clone()
    prev: list[Optional[torch.Tensor]] = [None] * r_all  # each restart's last labels (N,)
    n_iter, final = [0] * r_all, [False] * r_all
    results: list[Optional[KMeansResult]] = [None] * r_all
    while any(res is None for res in results):
        todo = [r for r in range(r_all) if results[r] is None]
        sums = {j: torch.zeros_like(centers[r]) for j, r in enumerate(todo) if not final[r]}
        labels, dmin = _assign(x, xx, centers[todo], chunk, sums)  # (N, T) each
        for j, r in enumerate(todo):
            lab, dm = labels[:, j].contiguous(), dmin[:, j].contiguous()  # (N,) each
            if not final[r]:
                n_iter[r] += 1
                if prev[r] is None or not torch.equal(lab, prev[r]):
                    prev[r] = lab
                    centers[r], shift = _update(x, lab, dm, sums[j], centers[r])
                    final[r] = bool(shift <= tol) or n_iter[r] == max_iter
                    continue
            results[r] = KMeansResult(labels=lab, centers=centers[r].clone(), inertia=dm.sum(),
                                      n_iter=n_iter[r])
    return results


def _lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansResult:
    """Lloyd's iterations for one restart from centers (k, d)."""
    result = _lloyd_batched(x, (x * x).sum(1, keepdim=True), centers[None], max_iter, tol)[0]
    result.inertia = float(result.inertia)
    return result


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    seed: int = 0,
    tol: float = 1e-4,
    chunk: Optional[int] = None,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding, on whatever device ``x`` lives on.

    Paper Eqs. 1-2. Deterministic for a given ``seed``; the best of ``n_init`` runs (lowest
    inertia; the first on a tie) is returned. ``tol`` is relative to the mean per-dimension
    variance of ``x``, as in scikit-learn. With fewer points than clusters every point gets
    its own cluster; duplicate points and empty clusters are handled.

    The ``n_init`` restarts run together: one matmul per block of rows computes the distances
    of all restarts (seeding candidates and Lloyd assignments), and each restart stops on its
    own criterion. Restart r draws its seeding from the same generator sequence as a loop of
    restarts would (one generator seeded with ``seed``, restart after restart), and its float
    operations are the same: labels, centres and inertia equal those of a sequential loop
    bitwise on CPU (checked against such a loop in tests/test_diagnose.py). Only the BLAS
    product is shared across restarts and split into row blocks; a BLAS that rounded a column
    differently depending on the matrix's other columns or rows would change the last bits.

    Args:
        x: features, shape (N, d).
        k: number of clusters (the number of classes in D&R).
        n_init: independent seedings; the lowest-inertia result wins.
        max_iter: cap on assignment/update rounds per run.
        seed: seed of the k-means++ draws.
        tol: convergence threshold on the centre shift, relative to the data variance.
        chunk: rows per block of the distance matmul (memory: chunk x n_init x k floats);
            ``None`` picks it from the device (see ``_row_blocks``). Blocks of a few hundred
            rows or more give the same values as one product over all rows (MKL, tested).
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects features of shape (N, d); got {tuple(x.shape)}")
    if k < 1 or n_init < 1 or max_iter < 1:
        raise ValueError(f"kmeans needs k, n_init, max_iter >= 1; got {k}, {n_init}, {max_iter}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"kmeans: chunk must be None or >= 1 rows, got {chunk}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans got an empty feature set (N = 0)")
    if n <= k:
        labels = torch.arange(n, device=x.device)
        return KMeansResult(labels=labels, centers=x.clone(), inertia=0.0, n_iter=0)
    abs_tol = tol * _mean_variance(x)
    xx = (x * x).sum(1, keepdim=True)  # (N, 1)
    gens, starts = _restart_generators(x, k, n_init, seed)
    init = _kmeans_pp(x, xx, k, gens, chunk)
    if not all(torch.equal(g.get_state(), s) for g, s in zip(gens, starts[1:])):
        # this torch's draws consume the generator differently: seed restart after restart
        log.debug("kmeans: restart generators out of step; seeding the restarts one by one")
        gen = torch.Generator(device=x.device)
        gen.manual_seed(seed)
        init = torch.cat([_kmeans_pp(x, xx, k, [gen], chunk) for _ in range(n_init)])
    runs = _lloyd_batched(x, xx, init, max_iter, abs_tol, chunk)
    best = runs[int(torch.stack([r.inertia for r in runs]).argmin())]  # first on a tie
    best.inertia = float(best.inertia)
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
