"""Paired comparisons: the exact interval of a paired accuracy difference against scipy's
Clopper–Pearson interval, and its duality with the exact McNemar test."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from varjepa.eval.paired import mcnemar_exact, paired_difference_ci


@pytest.mark.parametrize(
    "a, b, n", [(8, 2, 912), (4, 1, 342), (12, 17, 1080), (0, 7, 50), (5, 0, 40), (3, 3, 9)]
)
def test_interval_is_clopper_pearson_of_the_discordant_split(a, b, n):
    diff, lo, hi = paired_difference_ci(a, b, n)
    m = a + b
    ref = binomtest(b, m).proportion_ci(confidence_level=0.95, method="exact")
    assert diff == pytest.approx((b - a) / n)
    assert lo == pytest.approx(m / n * (2 * ref.low - 1), abs=1e-9)
    assert hi == pytest.approx(m / n * (2 * ref.high - 1), abs=1e-9)
    assert lo <= diff <= hi


def test_interval_excludes_zero_exactly_when_mcnemar_rejects():
    for a in range(0, 16):
        for b in range(0, 16):
            if a + b == 0:
                continue
            _, lo, hi = paired_difference_ci(a, b, 100)
            assert (lo > 0 or hi < 0) == (mcnemar_exact(a, b) < 0.05), (a, b)


def test_narrower_at_lower_level_and_edge_cases():
    _, lo95, hi95 = paired_difference_ci(8, 2, 912)
    _, lo80, hi80 = paired_difference_ci(8, 2, 912, level=0.8)
    assert lo95 < lo80 < hi80 < hi95
    assert paired_difference_ci(0, 0, 10) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="a \\+ b <= n"):
        paired_difference_ci(6, 5, 10)
