"""Paired comparisons of two methods scored on the same items (test rows, seeded episodes)."""

from __future__ import annotations

from math import comb


def mcnemar_exact(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value for ``a`` items only the first method gets right (or wrong)
    against ``b`` only the second does: a binomial test of the ``a + b`` discordant items at p = 1/2.
    1.0 when there are none."""
    n, k = a + b, min(a, b)
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
