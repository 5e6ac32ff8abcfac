"""Paired comparisons over seeds: mean difference, t interval, paired t-test, verdict.

Two methods run on the same seeds (same seed = same split, same initial draw) give paired
values; the per-seed differences remove the seed-to-seed variation both share. These are pure
functions, numbers in and numbers out; the tables and claims over finished runs build on them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Mapping, Sequence

from scipy import stats as _st

__all__ = ["PairedResult", "paired_difference", "paired_table"]


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of a method with a reference over ``n`` seeds.

    Attributes:
        n: number of paired seeds.
        differences: per-seed ``value - reference``, in the given seed order.
        mean: mean difference.
        std: sample standard deviation (n - 1) of the differences; NaN when n < 2.
        se: standard error ``std / sqrt(n)``; NaN when n < 2.
        low: lower end of the ``level`` confidence interval of the mean difference.
        high: upper end of that interval.
        t: t statistic ``mean / se`` (``±inf`` when std is 0 and mean is not; 0 when all
            differences are 0; NaN when n < 2).
        p: two-sided p-value of the paired t-test of mean difference 0.
        level: confidence level of the interval (e.g. 0.95).
    """

    n: int
    differences: tuple[float, ...]
    mean: float
    std: float
    se: float
    low: float
    high: float
    t: float
    p: float
    level: float

    def verdict(self, alpha: float = 0.05) -> str:
        """``"better"`` / ``"worse"`` if p < alpha and the mean is above / below 0, else
        ``"no evidence"`` (also when p is NaN, i.e. fewer than two seeds)."""
        if self.p < alpha and self.mean > 0:
            return "better"
        if self.p < alpha and self.mean < 0:
            return "worse"
        return "no evidence"

    def to_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        """The fields as a plain dict (differences as a list) plus ``verdict`` at ``alpha``.

        NaN stays NaN; callers writing strict JSON replace it.
        """
        out = asdict(self)
        out["differences"] = list(self.differences)
        out["verdict"] = self.verdict(alpha)
        return out


def paired_difference(values: Sequence[float], reference: Sequence[float],
                      level: float = 0.95) -> PairedResult:
    """Paired difference of ``values`` over ``reference``, both per seed in the same seed order.

    With d_i = values_i - reference_i, n pairs, mean d̄, sample std s (n - 1) and standard error
    se = s / sqrt(n): the interval is d̄ ± t_{(1+level)/2, n-1} · se and the p-value is
    2 · (1 - T_{n-1}(|d̄| / se)), T being the t distribution's CDF.

    Edge cases: with n < 2 the std, se, t, interval and p are NaN, so the verdict is
    ``"no evidence"``. If every difference is the same nonzero number (std 0) the p-value is 0
    and the interval collapses to the mean; if every difference is 0 the p-value is 1 and the
    interval is [0, 0].

    Args:
        values: the method's per-seed values.
        reference: the reference method's values on the same seeds, in the same order.
        level: confidence level of the interval, in (0, 1).

    Returns:
        A :class:`PairedResult`.

    Raises:
        ValueError: if the sequences differ in length, are empty, or ``level`` is not in (0, 1).
    """
    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds: {len(values)} values vs "
                         f"{len(reference)} reference values")
    if not values:
        raise ValueError("paired_difference needs at least one pair")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = tuple(float(v) - float(r) for v, r in zip(values, reference))
    n = len(d)
    m = math.fsum(d) / n
    nan = float("nan")
    if n < 2:
        return PairedResult(n, d, m, nan, nan, nan, nan, nan, nan, level)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # every difference identical: no spread to test against
        t = 0.0 if m == 0.0 else math.copysign(math.inf, m)
        return PairedResult(n, d, m, sd, se, m, m, t, 1.0 if m == 0.0 else 0.0, level)
    t = m / se
    half = float(_st.t.ppf(0.5 + level / 2.0, n - 1)) * se
    p = float(2.0 * _st.t.sf(abs(t), n - 1))
    return PairedResult(n, d, m, sd, se, m - half, m + half, t, p, level)


def paired_table(per_method: Mapping[str, Mapping[Hashable, float]], reference: str,
                 level: float = 0.95) -> dict[str, PairedResult]:
    """Pair every method with ``reference`` by seed, over the seeds the method was run on.

    A comparison may run the reference on more seeds than a costly method (e.g. 5 vs 3);
    each method is paired over its own seeds, all of which the reference must have.

    Args:
        per_method: method -> {seed: value}.
        reference: the method the others are compared with.
        level: confidence level of the intervals.

    Returns:
        method -> :class:`PairedResult` of ``method - reference``, in the order of
        ``per_method``, the reference excluded.

    Raises:
        ValueError: if ``reference`` is absent, or a method has seeds the reference lacks (the
            message names the method and those seeds).
    """
    if reference not in per_method:
        raise ValueError(f"reference method {reference!r} is not among {sorted(per_method)}")
    ref = per_method[reference]
    out = {}
    for method, vals in per_method.items():
        if method == reference:
            continue
        seeds = sorted(vals)
        extra = sorted(set(seeds) - set(ref))
        if extra:
            raise ValueError(f"{method!r} cannot be paired with {reference!r}: "
                             f"{reference!r} lacks seeds {extra}")
        out[method] = paired_difference([vals[s] for s in seeds], [ref[s] for s in seeds],
                                        level)
    return out
