"""Paired comparisons of two methods scored on the same items (test rows, seeded episodes)."""

from __future__ import annotations

import math
from math import comb


def mcnemar_exact(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value for ``a`` items only the first method gets right (or wrong)
    against ``b`` only the second does: a binomial test of the ``a + b`` discordant items at p = 1/2.
    1.0 when there are none."""
    n, k = a + b, min(a, b)
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def paired_difference_ci(a: int, b: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Difference in accuracy (second method minus first) over ``n`` paired items, where ``a``
    items only the first method gets right and ``b`` only the second, with Tango's (1998) score
    confidence interval for a paired difference of proportions: the ``δ`` whose score statistic
    ``(b − a − nδ) / sqrt(n (2 p̂₂₁(δ) + δ (1 − δ)))`` lies within ``±z`` (``p̂₂₁`` the
    restricted maximum-likelihood rate of "only the first right"). It accounts for the number of
    discordant items being random, stays inside [−1, 1], and is defined without discordant
    items. Returns ``(difference, low, high)`` as fractions of ``n``."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if n <= 0 or a < 0 or b < 0 or a + b > n:
        raise ValueError(f"paired_difference_ci: need 0 <= a, b and a + b <= n > 0; got a={a}, b={b}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"paired_difference_ci: level = {level}; must be in (0, 1), e.g. 0.95")
    z = float(norm.ppf(0.5 + level / 2))

    def score(d: float) -> float:
        num = b - a - n * d
        if num == 0:
            return 0.0
        B = -a - b + (2 * n - b + a) * d
        C = -a * d * (1 - d)
        p21 = (math.sqrt(max(B * B - 8 * n * C, 0.0)) - B) / (4 * n)  # A = 2n
        var = n * (2 * p21 + d * (1 - d))
        return num / math.sqrt(var) if var > 0 else math.copysign(math.inf, num)

    diff, edge = (b - a) / n, 1.0 - 1e-12
    low = -1.0 if score(-edge) <= z else brentq(lambda d: score(d) - z, -edge, diff, xtol=1e-12)
    high = 1.0 if score(edge) >= -z else brentq(lambda d: score(d) + z, diff, edge, xtol=1e-12)
    return diff, low, high
