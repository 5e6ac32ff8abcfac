"""Paired differences over seeds against values computed by hand."""
from __future__ import annotations

import math

import pytest

from mmrelearn.stats import paired_difference, paired_table


def _t2_quantile(q):
    # 2 degrees of freedom: F(t) = 1/2 + t / (2 sqrt(t^2 + 2)); with a = 2F - 1,
    # t^2 = 2 a^2 / (1 - a^2)
    a = 2.0 * q - 1.0
    return math.sqrt(2.0 * a * a / (1.0 - a * a))


def _t2_two_sided_p(t):
    # 2 * (1 - F(|t|)) = 1 - |t| / sqrt(t^2 + 2)
    return 1.0 - abs(t) / math.sqrt(t * t + 2.0)


def test_three_seed_example_by_hand():
    r = paired_difference([71, 74, 72], [70, 71, 70])
    assert r.n == 3 and r.differences == (1.0, 3.0, 2.0)
    assert r.mean == pytest.approx(2.0)
    assert r.std == pytest.approx(1.0)  # sqrt(((1-2)^2 + (3-2)^2 + 0) / 2)
    assert r.se == pytest.approx(1.0 / math.sqrt(3.0))
    q = _t2_quantile(0.975)
    assert q == pytest.approx(4.302652729, abs=1e-8)
    half = q / math.sqrt(3.0)
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert (r.low, r.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert r.t == pytest.approx(2.0 * math.sqrt(3.0))
    assert r.p == pytest.approx(1.0 - 2.0 * math.sqrt(3.0) / math.sqrt(14.0))
    assert r.p == pytest.approx(0.07418, abs=1e-5)
    assert r.verdict() == "no evidence"
    assert r.verdict(alpha=0.1) == "better"  # p = 0.074 < 0.1


def test_worse_by_hand():
    r = paired_difference([60, 61, 62], [70, 70, 71])  # d = -10, -9, -9
    assert r.mean == pytest.approx(-28.0 / 3.0)
    assert r.std == pytest.approx(math.sqrt(1.0 / 3.0))  # ((4 + 1 + 1) / 9) / 2
    assert r.se == pytest.approx(1.0 / 3.0)
    assert r.t == pytest.approx(-28.0)
    assert r.p == pytest.approx(_t2_two_sided_p(-28.0))
    assert r.p == pytest.approx(1.0 - 28.0 / math.sqrt(786.0))
    half = _t2_quantile(0.975) / 3.0
    assert (r.low, r.high) == (pytest.approx(-28.0 / 3.0 - half), pytest.approx(-28.0 / 3.0 + half))
    assert r.verdict() == "worse"


def test_better_by_hand_and_level():
    r = paired_difference([74, 75, 76], [70, 70, 70])  # d = 4, 5, 6
    assert r.mean == pytest.approx(5.0) and r.std == pytest.approx(1.0)
    assert r.p == pytest.approx(1.0 - 5.0 * math.sqrt(3.0) / math.sqrt(77.0))  # 0.0131
    assert r.verdict() == "better"
    half = _t2_quantile(0.75) / math.sqrt(3.0)  # level 0.5 uses the 0.75 quantile
    narrow = paired_difference([74, 75, 76], [70, 70, 70], level=0.5)
    assert (narrow.low, narrow.high) == (pytest.approx(5.0 - half), pytest.approx(5.0 + half))
    assert narrow.p == pytest.approx(r.p) and narrow.level == 0.5


def test_one_seed_is_no_evidence():
    r = paired_difference([80.0], [70.0])
    assert r.n == 1 and r.mean == 10.0
    assert all(math.isnan(x) for x in (r.std, r.se, r.low, r.high, r.t, r.p))
    assert r.verdict() == "no evidence"


def test_constant_differences():
    r = paired_difference([72, 73, 74], [70, 71, 72])  # d = 2, 2, 2
    assert r.std == 0.0 and r.p == 0.0 and r.t == math.inf
    assert r.low == r.high == 2.0
    assert r.verdict() == "better"
    down = paired_difference([68, 69], [70, 71])
    assert down.p == 0.0 and down.t == -math.inf and down.verdict() == "worse"
    zero = paired_difference([70, 71, 72], [70, 71, 72])
    assert zero.p == 1.0 and zero.t == 0.0 and zero.low == zero.high == 0.0
    assert zero.verdict() == "no evidence"


def test_bad_input():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="level"):
        paired_difference([1, 2], [0, 0], level=95)


def test_to_dict():
    d = paired_difference([71, 74, 72], [70, 71, 70]).to_dict()
    assert d["differences"] == [1.0, 3.0, 2.0] and d["verdict"] == "no evidence"
    assert d["mean"] == pytest.approx(2.0) and d["n"] == 3 and d["level"] == 0.95
    assert paired_difference([71, 74, 72], [70, 71, 70]).to_dict(alpha=0.1)["verdict"] == "better"


def test_paired_table_aligns_by_seed():
    per = {"joint": {0: 70, 1: 71, 2: 70},
           "dnr": {2: 72, 0: 71, 1: 74},  # other order: aligned by seed, not position
           "pmr": {0: 70, 1: 71, 2: 70}}
    rows = paired_table(per, "joint")
    assert list(rows) == ["dnr", "pmr"]
    assert rows["dnr"].differences == (1.0, 3.0, 2.0)
    assert rows["pmr"].p == 1.0


def test_paired_table_errors():
    with pytest.raises(ValueError, match=r"'joint' is not among \['dnr'\]"):
        paired_table({"dnr": {0: 1.0}}, "joint")
    with pytest.raises(ValueError, match=r"'dnr' cannot be paired with 'joint': 'joint' lacks "
                                         r"seeds \[5\]"):
        paired_table({"joint": {0: 1, 1: 2, 2: 3}, "dnr": {0: 1, 1: 2, 5: 3}}, "joint")


def test_paired_table_over_the_methods_seeds():
    # the reference ran on 5 seeds, pmr on 3: pmr is paired over seeds 0, 2, 4 only
    ref = {0: 70.0, 1: 99.0, 2: 71.0, 3: 99.0, 4: 70.0}
    res = paired_table({"joint": ref, "pmr": {4: 72.0, 0: 71.0, 2: 74.0}}, "joint")["pmr"]
    assert res.n == 3 and res.differences == (1.0, 3.0, 2.0)
