"""diagnose.py: purity (Eq. 3), gap (Eq. 4), strength (Eq. 5) and k-means (Eqs. 1-2).

Expected values are computed by hand in each test; k-means is cross-checked against scikit-learn.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from mmrelearn import diagnose
from mmrelearn.diagnose import (
    STRENGTH_FUNCTIONS,
    _kmeans_pp,
    _lloyd,
    _lloyd_batched,
    _mean_variance,
    _restart_generators,
    cluster_purity,
    kmeans,
    minmax_scale,
    purity,
    purity_gap,
    reinit_strength,
)


def _sklearn_kmeans(x: torch.Tensor, k: int) -> KMeans:
    # One thread: these inputs are tiny, and OpenMP threads spin badly on a busy 2-core CI box.
    with threadpool_limits(limits=1):
        return KMeans(n_clusters=k, n_init=10, random_state=0).fit(x.numpy())


def _blobs(n: int, c: int, d: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mixture: class means ~ N(0, spread^2 I), unit noise; balanced labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g) * spread  # (c, d)
    y = torch.arange(n) % c  # (n,)
    return means[y] + torch.randn(n, d, generator=g), y


# --- purity, Eq. 3 -------------------------------------------------------------------------

def test_purity_hand_example():
    # cluster 0 holds labels {1, 1, 0} -> 2; cluster 1 {2, 2} -> 2; cluster 2 {2} -> 1
    clusters = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([1, 1, 0, 2, 2, 2])
    assert purity(clusters, labels) == (2 + 2 + 1) / 6


def test_purity_cluster_ids_that_skip_numbers():
    # cluster 3 {0, 1} -> 1; cluster 7 {2, 2, 0} -> 2; cluster 10 {5} -> 1
    clusters = torch.tensor([3, 3, 7, 7, 7, 10])
    labels = torch.tensor([0, 1, 2, 2, 0, 5])
    assert purity(clusters, labels) == (1 + 2 + 1) / 6
    # renaming clusters 3, 7, 10 -> 0, 1, 2 changes nothing
    assert purity(torch.tensor([0, 0, 1, 1, 1, 2]), labels) == 4 / 6


def test_purity_extremes_and_inputs():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert purity(y, y) == 1.0
    assert purity(torch.tensor([2, 2, 0, 0, 1, 1]), y) == 1.0  # a permutation of the labels
    assert purity(torch.zeros(6, dtype=torch.long), y) == 2 / 6  # one cluster: largest class
    assert purity(torch.arange(6), y) == 1.0  # singletons are trivially pure
    assert purity([0, 0, 1], np.array([1, 1, 1])) == 1.0  # lists and arrays are accepted


def test_purity_errors():
    with pytest.raises(ValueError):
        purity(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        purity(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError):
        purity(torch.tensor([0, -1]), torch.tensor([0, 1]))


# --- gap and strength, Eqs. 4-5 ------------------------------------------------------------

def test_purity_gap():
    assert purity_gap(0.9, 0.6) == abs(0.9 - 0.6)
    assert purity_gap(0.6, 0.9) == purity_gap(0.9, 0.6)
    assert purity_gap(0.75, 0.75) == 0.0
    assert purity_gap(1.0, 0.0) == 1.0


def test_reinit_strength_tanh_default():
    assert reinit_strength(0.1, 3.0) == math.tanh(0.3)
    assert reinit_strength(0.1, 3.0, "tanh") == math.tanh(3.0 * 0.1)
    assert reinit_strength(0.0, 3.0) == 0.0


@pytest.mark.parametrize(
    "name, by_hand",
    [
        ("tanh", lambda x: math.tanh(x)),
        ("linear_clip", lambda x: min(x, 1.0)),
        ("exp", lambda x: 1.0 - math.exp(-x)),
        ("sigmoid", lambda x: 2.0 / (1.0 + math.exp(-x)) - 1.0),
    ],
)
def test_every_strength_function_by_hand(name, by_hand):
    for gap, lam in [(0.0, 3.0), (0.05, 3.0), (0.1, 7.0), (0.25, 3.0), (1.0, 8.0)]:
        assert reinit_strength(gap, lam, name) == by_hand(lam * gap)
    # a function is a name of the registry or the callable itself, same result
    assert reinit_strength(0.2, 3.0, STRENGTH_FUNCTIONS[name]) == reinit_strength(0.2, 3.0, name)


def test_strength_function_registry_is_the_documented_one():
    assert set(STRENGTH_FUNCTIONS) == {"tanh", "linear_clip", "exp", "sigmoid"}
    assert math.isclose(STRENGTH_FUNCTIONS["sigmoid"](0.8), math.tanh(0.4), rel_tol=1e-12)


@pytest.mark.parametrize("fn", sorted(STRENGTH_FUNCTIONS) + ["custom"])
def test_strength_monotone_within_unit_interval(fn):
    fn = (lambda x: x / (1.0 + x)) if fn == "custom" else fn
    for lam in (0.5, 3.0, 8.0, 100.0):
        alphas = [reinit_strength(g, lam, fn) for g in np.linspace(0.0, 1.0, 101)]
        assert alphas[0] == 0.0
        assert all(0.0 <= a <= 1.0 for a in alphas)
        assert all(b >= a for a, b in zip(alphas, alphas[1:]))


def test_strength_custom_callable():
    x = 3.0 * 0.1  # lambda * g
    assert reinit_strength(0.1, 3.0, lambda t: t / (1.0 + t)) == x / (1.0 + x)
    assert reinit_strength(0.5, 2.0, lambda x: x * x / 4) == 0.25


def test_strength_errors():
    for gap in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match="gap"):
            reinit_strength(gap, 3.0)
    with pytest.raises(ValueError, match="lambda"):
        reinit_strength(0.1, -1.0)
    with pytest.raises(ValueError, match="unknown strength function"):
        reinit_strength(0.1, 3.0, "relu")
    with pytest.raises(ValueError, match="outside"):
        reinit_strength(0.1, 3.0, lambda x: 2.0)
    with pytest.raises(ValueError, match="outside"):
        reinit_strength(0.1, 3.0, lambda x: -x)


# --- min-max scaling -----------------------------------------------------------------------

def test_minmax_scale_exact():
    x = torch.tensor([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0], [4.0, 5.0, 2.0]])
    expected = torch.tensor([[-1.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.equal(minmax_scale(x), expected)  # column 1 is constant -> 0


def test_minmax_scale_range():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 10 + 3
    s = minmax_scale(x)
    assert torch.equal(s.min(0).values, -torch.ones(7))
    assert torch.allclose(s.max(0).values, torch.ones(7))


# --- k-means, Eqs. 1-2 ---------------------------------------------------------------------

def test_kmeans_same_seed_same_result():
    x, _ = _blobs(300, 4, 8, spread=1.0, seed=0)
    r1, r2 = kmeans(x, 4, seed=5), kmeans(x, 4, seed=5)
    assert torch.equal(r1.labels, r2.labels) and torch.equal(r1.centers, r2.centers)
    assert r1.inertia == r2.inertia


def test_kmeans_recovers_separated_blobs():
    x, y = _blobs(500, 5, 16, spread=10.0, seed=1)
    for seed in range(3):
        r = kmeans(x, 5, seed=seed)
        assert purity(r.labels, y) == 1.0
        assert r.labels.shape == (500,) and r.centers.shape == (5, 16)
        # inertia is the sum of squared distances to the assigned centre (float64 by hand)
        x64, c64 = x.double(), r.centers.double()
        by_hand = ((x64 - c64[r.labels]) ** 2).sum().item()
        assert math.isclose(r.inertia, by_hand, rel_tol=1e-4)


def test_kmeans_fewer_points_than_clusters():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    for k in (3, 5):
        r = kmeans(x, k)
        assert torch.equal(r.labels, torch.arange(3))
        assert torch.equal(r.centers, x) and r.inertia == 0.0
    assert purity(kmeans(x, 5).labels, torch.tensor([0, 0, 1])) == 1.0


def test_kmeans_all_duplicate_points():
    x = torch.full((10, 4), 2.5)
    r = kmeans(x, 3, n_init=3)
    assert r.inertia == 0.0
    assert r.labels.min() >= 0 and r.labels.max() < 3
    assert torch.equal(r.centers, torch.full((3, 4), 2.5))


def test_kmeans_duplicates_with_exactly_k_distinct_values():
    values = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 2] * 7 + [0, 0, 1])  # 27 points, 3 distinct values, many copies
    x = values[y]
    for seed in range(5):
        r = kmeans(x, 3, seed=seed)
        assert purity(r.labels, y) == 1.0 and r.inertia == 0.0
        assert len(torch.unique(r.labels)) == 3


def test_kmeans_more_clusters_than_distinct_values():
    # 2 distinct values, k = 3: a centre necessarily duplicates another, so a cluster is empty
    y = torch.tensor([0] * 6 + [1] * 4)
    x = torch.tensor([[0.0], [3.0]])[y]
    r = kmeans(x, 3, seed=0)
    assert r.inertia == 0.0 and purity(r.labels, y) == 1.0
    assert r.centers.shape == (3, 1) and torch.isfinite(r.centers).all()


def test_lloyd_relocates_an_empty_cluster_to_the_farthest_point():
    # Centre 2 (at 100) attracts no point. Assignments: 0, 2 -> c0 (dist^2 0, 4); 10, 11 -> c1
    # (0, 1). The empty centre moves to the farthest point, x = 2; c0 = mean(0, 2) = 1,
    # c1 = 10.5. Next round: 0 -> c0, 2 -> c2, 10, 11 -> c1; c0 = 0. Then stable.
    x = torch.tensor([[0.0], [2.0], [10.0], [11.0]])
    r = _lloyd(x, torch.tensor([[0.0], [10.0], [100.0]]), max_iter=50, tol=0.0)
    assert torch.equal(r.labels, torch.tensor([0, 2, 1, 1]))
    assert torch.equal(r.centers, torch.tensor([[0.0], [10.5], [2.0]]))
    assert r.inertia == 0.25 + 0.25


def test_kmeans_more_inits_never_worse():
    x, _ = _blobs(400, 6, 8, spread=0.8, seed=2)
    for seed in range(4):
        one = kmeans(x, 6, n_init=1, seed=seed)
        many = kmeans(x, 6, n_init=8, seed=seed)
        assert many.inertia <= one.inertia


def test_kmeans_errors():
    with pytest.raises(ValueError):
        kmeans(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(5, 2), 0)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(0, 2), 2)


def test_kmeans_matches_sklearn_on_separable_blobs():
    x, y = _blobs(600, 6, 16, spread=10.0, seed=3)
    ours = kmeans(x, 6, n_init=10, seed=0)
    sk = _sklearn_kmeans(x, 6)
    assert purity(ours.labels, y) == purity(torch.as_tensor(sk.labels_), y) == 1.0
    assert math.isclose(ours.inertia, sk.inertia_, rel_tol=1e-4)


def test_kmeans_close_to_sklearn_on_overlapping_blobs():
    # 10 classes, 2000 points, 32 dims; class means ~ N(0, 0.4^2 I) against unit noise, so the
    # classes overlap heavily (purity ~ 0.7). Local optima differ, so compare within tolerances.
    x, y = _blobs(2000, 10, 32, spread=0.4, seed=0)
    ours = kmeans(x, 10, n_init=10, seed=0)
    sk = _sklearn_kmeans(x, 10)
    p_ours, p_sk = purity(ours.labels, y), purity(torch.as_tensor(sk.labels_), y)
    assert 0.4 < p_sk < 0.95  # really overlapping, not trivially separable
    assert abs(p_ours - p_sk) <= 0.03
    assert abs(ours.inertia - sk.inertia_) <= 0.02 * sk.inertia_


# --- batched restarts against a sequential reference ------------------------------------

def _ref_sq_dists(x, c, xx):
    return torch.addmm(xx + (c * c).sum(1)[None, :], x, c.T, alpha=-2.0).clamp_min_(0.0)


def _ref_seed(x, k, gen):
    """Greedy k-means++ of one restart, written out as the sequential version (before the
    restarts were batched): 2 + ln k candidates ~ D(x)^2, the lowest potential wins."""
    n, trials = x.shape[0], 2 + int(math.log(k))
    xx = (x * x).sum(1, keepdim=True)
    first = torch.randint(n, (1,), generator=gen)
    centers = [x[first[0]]]
    closest = _ref_sq_dists(x, centers[0][None, :], xx)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        probs = closest / total if total > 0 else torch.ones_like(closest)
        cand = torch.multinomial(probs, trials, replacement=True, generator=gen)
        d_cand = torch.minimum(closest[None, :], _ref_sq_dists(x, x[cand], xx).T)
        best = int(d_cand.sum(1).argmin())
        centers.append(x[cand[best]])
        closest = d_cand[best]
    return torch.stack(centers)


def _ref_lloyd(x, centers, max_iter, tol):
    """Lloyd's iterations of one restart, one full distance matrix per round."""
    k, xx, labels, n_iter = centers.shape[0], (x * x).sum(1, keepdim=True), None, 0
    for n_iter in range(1, max_iter + 1):
        d = _ref_sq_dists(x, centers, xx)
        new_labels = d.argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        new_centers = torch.zeros_like(centers).index_add_(0, labels, x) / counts.clamp_min(1)[
            :, None].to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() > 0:
            far = d.gather(1, labels[:, None])[:, 0].argsort(descending=True)
            new_centers[empty] = x[far[: empty.numel()]]
        shift = ((new_centers - centers) ** 2).sum()
        centers = new_centers
        if shift <= tol:
            break
    d = _ref_sq_dists(x, centers, xx)
    labels = d.argmin(1)
    return labels, centers, float(d.gather(1, labels[:, None]).sum()), n_iter


def _ref_kmeans(x, k, n_init, seed, max_iter=300, tol=1e-4):
    """The restarts one after another from one generator; the first lowest inertia wins."""
    gen = torch.Generator().manual_seed(seed)
    abs_tol = tol * float(x.var(0, unbiased=False).mean())
    best = None
    for _ in range(n_init):
        run = _ref_lloyd(x, _ref_seed(x, k, gen), max_iter, abs_tol)
        if best is None or run[2] < best[2]:
            best = run
    return best


def _assert_same(result, ref):
    labels, centers, inertia, n_iter = ref
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.centers, centers)
    assert result.inertia == inertia and result.n_iter == n_iter


def _random_case(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    n = int(torch.randint(10, 1500, (1,), generator=g))
    d = int(torch.randint(1, 40, (1,), generator=g))
    k = int(torch.randint(1, 20, (1,), generator=g))
    n_init = int(torch.randint(1, 7, (1,), generator=g))
    x, _ = _blobs(n, max(k, 2), d, spread=float(torch.rand(1, generator=g)) * 2, seed=seed)
    if seed % 3 == 0:
        x = torch.round(x)  # many duplicate points and tied distances
    return x, k, n_init


@pytest.mark.parametrize("seed", range(12))
def test_kmeans_batched_equals_sequential_reference(seed):
    x, k, n_init = _random_case(seed)
    _assert_same(kmeans(x, k, n_init=n_init, seed=seed), _ref_kmeans(x, k, n_init, seed))


def test_kmeans_batched_equals_reference_over_row_blocks_and_chunks():
    # 5000 x 24, 10 restarts of k = 12: one block (automatic), 9 blocks of 556 rows (chunk
    # 600) or one (chunk 5000); 3000 x 600: automatic blocks (6 of 500 rows on one thread).
    # Every variant is bitwise the sequential one.
    x, _ = _blobs(5000, 12, 24, spread=0.6, seed=7)
    ref = _ref_kmeans(x, 12, 10, 3)
    for chunk in (None, 600, 5000):
        _assert_same(kmeans(x, 12, n_init=10, seed=3, chunk=chunk), ref)
    _assert_same(kmeans(x.double(), 12, n_init=4, seed=1), _ref_kmeans(x.double(), 12, 4, 1))
    wide, _ = _blobs(3000, 5, 600, spread=0.2, seed=8)
    per_thread = 2**18 // 600  # rows of 1 MiB of points per thread, at least 512 in a block
    blocks = -(-3000 // max(512, torch.get_num_threads() * per_thread))
    assert len(diagnose._row_blocks(3000, 600, 3 * 5, wide.device, None)) == blocks > 1
    _assert_same(kmeans(wide, 5, n_init=3, seed=0), _ref_kmeans(wide, 5, 3, 0))


def test_kmeans_batched_equals_reference_on_duplicates_and_k1():
    values = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = values[torch.tensor([0, 1, 2] * 7 + [0, 0, 1])]
    for k, n_init, seed in [(3, 5, 0), (4, 3, 1), (1, 3, 2)]:  # k = 4: an empty cluster
        _assert_same(kmeans(x, k, n_init=n_init, seed=seed), _ref_kmeans(x, k, n_init, seed))
    x2, _ = _blobs(300, 3, 5, spread=1.0, seed=9)
    _assert_same(kmeans(x2, 1, n_init=4, seed=0), _ref_kmeans(x2, 1, 4, 0))


def test_restart_generators_reproduce_the_sequential_draws():
    x, _ = _blobs(400, 6, 8, spread=0.8, seed=2)
    xx = (x * x).sum(1, keepdim=True)
    gens, starts = _restart_generators(x, 6, 4, seed=11)
    batched = _kmeans_pp(x, xx, 6, gens)  # (4, 6, 8)
    # restart r ends exactly where restart r + 1 starts: no fallback needed on this torch
    assert all(torch.equal(g.get_state(), s) for g, s in zip(gens, starts[1:]))
    gen = torch.Generator().manual_seed(11)
    for r in range(4):
        assert torch.equal(batched[r], _ref_seed(x, 6, gen))


def test_kmeans_falls_back_to_sequential_seeding(monkeypatch, caplog):
    # generators out of step (here: all four start from the same state) -> the check in
    # kmeans notices and seeds restart after restart: same result as the reference
    x, _ = _blobs(300, 5, 6, spread=0.7, seed=4)

    def same_start(x, k, n_init, seed):
        starts = _restart_generators(x, k, 1, seed)[1]
        return [_restart_generators(x, k, 1, seed)[0][0] for _ in range(n_init)], starts * n_init

    monkeypatch.setattr(diagnose, "_restart_generators", same_start)
    with caplog.at_level(logging.DEBUG, logger="mmrelearn.diagnose"):
        _assert_same(kmeans(x, 5, n_init=4, seed=2), _ref_kmeans(x, 5, 4, 2))
    assert "out of step" in caplog.text


def test_lloyd_batched_restarts_stop_on_their_own():
    # restart 0 starts at the true means of far-apart blobs (done after 2 rounds); restart 1
    # starts with two centres in one blob and needs more rounds. Each equals its run alone.
    x = torch.cat([torch.randn(60, 2, generator=torch.Generator().manual_seed(0)) * 0.1 + m
                   for m in (torch.tensor([0.0, 0.0]), torch.tensor([20.0, 0.0]),
                             torch.tensor([0.0, 20.0]))])
    good = torch.stack([x[:60].mean(0), x[60:120].mean(0), x[120:].mean(0)])
    bad = torch.stack([x[0], x[1], x[60]])
    xx = (x * x).sum(1, keepdim=True)
    runs = _lloyd_batched(x, xx, torch.stack([good, bad]), max_iter=50, tol=0.0)
    alone = [_ref_lloyd(x, c, 50, 0.0) for c in (good, bad)]
    assert runs[0].n_iter == 2 and runs[1].n_iter > runs[0].n_iter
    for run, ref in zip(runs, alone):
        run.inertia = float(run.inertia)
        _assert_same(run, ref)
    # max_iter caps each restart; a capped restart still ends with a final assignment
    capped = _lloyd_batched(x, xx, torch.stack([good, bad]), max_iter=1, tol=0.0)
    assert [r.n_iter for r in capped] == [1, 1]
    assert torch.equal(capped[1].labels, _ref_lloyd(x, bad, 1, 0.0)[0])


def test_lloyd_batched_empty_cluster_in_one_restart_only():
    # restart 0: the hand example of test_lloyd_relocates_an_empty_cluster_to_the_farthest_point
    # (centre 2 empty, moved to x = 2); restart 1: no empty cluster. Each as if alone.
    x = torch.tensor([[0.0], [2.0], [10.0], [11.0]])
    inits = torch.tensor([[[0.0], [10.0], [100.0]], [[0.0], [2.0], [10.5]]])
    runs = _lloyd_batched(x, (x * x).sum(1, keepdim=True), inits, max_iter=50, tol=0.0)
    assert torch.equal(runs[0].labels, torch.tensor([0, 2, 1, 1]))
    assert torch.equal(runs[0].centers, torch.tensor([[0.0], [10.5], [2.0]]))
    assert float(runs[0].inertia) == 0.5
    assert torch.equal(runs[1].labels, torch.tensor([0, 1, 2, 2]))
    assert torch.equal(runs[1].centers, torch.tensor([[0.0], [2.0], [10.5]]))
    for run, init in zip(runs, inits):
        run.inertia = float(run.inertia)
        _assert_same(run, _ref_lloyd(x, init, 50, 0.0))


def test_kmeans_n_le_k_with_restarts_and_determinism():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    for k, n_init in [(3, 4), (7, 10)]:
        r = kmeans(x, k, n_init=n_init, seed=5)
        assert torch.equal(r.labels, torch.arange(3)) and torch.equal(r.centers, x)
        assert r.inertia == 0.0 and r.n_iter == 0
    y, _ = _blobs(500, 6, 8, spread=0.5, seed=3)
    a, b = kmeans(y, 6, n_init=5, seed=9), kmeans(y, 6, n_init=5, seed=9, chunk=512)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter
    other = kmeans(y, 6, n_init=5, seed=10)
    assert not torch.equal(other.centers, a.centers)
    with pytest.raises(ValueError, match="chunk"):
        kmeans(y, 6, chunk=0)


def test_mean_variance_equals_torch_var():
    for seed in range(6):
        x, _ = _blobs(1000 + 997 * seed, 4, 16, spread=3.0, seed=seed)
        x = x * (seed + 1) + 10.0 * seed  # offsets and scales
        expected = float(x.var(0, unbiased=False).mean())
        assert _mean_variance(x, block=333) == expected == _mean_variance(x)


# --- cluster_purity: P_D / P_V of Sec. 3.2 -------------------------------------------------

def _scale_sensitive_features(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """dim 0 carries the label (0 or 1); dim 1 is label-free noise uniform on [0, 1000].

    Unscaled, splitting dim 1 has the lower inertia (purity ~ 0.5); min-max scaled to [-1, 1],
    splitting dim 0 wins (within-cluster variance 1/3 vs 1 + 1/12 per point), purity 1.
    """
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.stack([y.float(), torch.rand(n, generator=g) * 1000.0], dim=1)  # (n, 2)
    return x, y


def test_cluster_purity_scale_none_vs_minmax():
    x, y = _scale_sensitive_features()
    p_none = cluster_purity(x, y, 2, scale="none")
    p_minmax = cluster_purity(x, y, 2, scale="minmax")
    assert p_minmax == 1.0
    assert p_none < 0.7
    # each is exactly k-means on the (scaled) features followed by Eq. 3
    assert p_none == purity(kmeans(x, 2).labels, y)
    assert p_minmax == purity(kmeans(minmax_scale(x), 2).labels, y)
    assert cluster_purity(x, y, 2) == p_minmax  # min-max is the default, as released


def test_cluster_purity_passes_seed_and_n_init():
    x, y = _blobs(300, 5, 8, spread=0.7, seed=4)
    for seed, n_init in [(0, 1), (3, 1), (3, 4)]:
        expected = purity(kmeans(minmax_scale(x), 5, n_init=n_init, seed=seed).labels, y)
        assert cluster_purity(x, y, 5, seed=seed, n_init=n_init) == expected


def test_cluster_purity_flattens_feature_maps():
    x, y = _blobs(120, 3, 12, spread=10.0, seed=5)
    assert cluster_purity(x.view(120, 3, 4), y, 3) == cluster_purity(x, y, 3) == 1.0


def test_cluster_purity_errors():
    x, y = _scale_sensitive_features(20)
    with pytest.raises(ValueError, match="scale"):
        cluster_purity(x, y, 2, scale="zscore")
    with pytest.raises(ValueError):
        cluster_purity(x, y[:10], 2)
