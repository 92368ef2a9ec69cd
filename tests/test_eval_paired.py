"""Paired comparisons: Tango's score interval of a paired accuracy difference (reference values,
symmetry, duality with McNemar's score test, and its coverage by simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varjepa.eval.paired import paired_difference_ci


@pytest.mark.parametrize(
    "a, b, n, low, high",
    # computed independently (a separate implementation of Tango 1998 by a reviewer)
    [(8, 2, 912, -1.53, 0.03), (4, 1, 342, -2.71, 0.58), (21, 10, 1080, -2.13, -0.01)],
)
def test_reference_values(a, b, n, low, high):
    diff, lo, hi = paired_difference_ci(a, b, n)
    assert diff == pytest.approx((b - a) / n)
    assert 100 * lo == pytest.approx(low, abs=0.006) and 100 * hi == pytest.approx(high, abs=0.006)


@pytest.mark.parametrize("a, b, n", [(8, 2, 912), (0, 7, 50), (5, 0, 40), (3, 3, 9), (0, 0, 100), (1, 0, 1)])
def test_symmetric_in_the_two_methods_and_inside_minus_one_one(a, b, n):
    d, lo, hi = paired_difference_ci(a, b, n)
    d2, lo2, hi2 = paired_difference_ci(b, a, n)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo), abs=1e-9)
    assert -1.0 <= lo <= d <= hi <= 1.0
    if a == b == 0:
        assert hi > 0.01  # no discordant items still leaves uncertainty about the difference


def test_excludes_zero_exactly_when_mcnemars_score_test_rejects():
    z = 1.959963984540054
    for a in range(0, 16):
        for b in range(0, 16):
            if a + b == 0:
                continue
            _, lo, hi = paired_difference_ci(a, b, 200)
            stat = abs(b - a) / math.sqrt(a + b)  # Tango's statistic at δ = 0 is McNemar's
            if abs(stat - z) > 1e-6:
                assert (lo > 0 or hi < 0) == (stat > z), (a, b)


def test_coverage_near_the_nominal_level():
    """Simulated paired outcomes with 0.9 % only-first-right and 0.2 % only-second-right rows of
    912 (the breast-cancer situation): the 95 % interval covers the true −0.7 points about 95 %
    of the time (an interval conditional on the discordant count covered 84 %)."""
    rng = np.random.default_rng(0)
    p_a, p_b, n = 0.009, 0.002, 912
    counts = rng.multinomial(n, [p_a, p_b, 1 - p_a - p_b], size=2000)
    covered = [lo <= p_b - p_a <= hi for _, lo, hi in (paired_difference_ci(a, b, n) for a, b, _ in counts)]
    assert 0.93 <= np.mean(covered) <= 0.975


def test_narrower_at_lower_level_and_bad_input():
    _, lo95, hi95 = paired_difference_ci(8, 2, 912)
    _, lo80, hi80 = paired_difference_ci(8, 2, 912, level=0.8)
    assert lo95 < lo80 < hi80 < hi95
    with pytest.raises(ValueError, match="a \\+ b <= n"):
        paired_difference_ci(6, 5, 10)
    with pytest.raises(ValueError, match="level"):
        paired_difference_ci(1, 2, 10, level=95)
