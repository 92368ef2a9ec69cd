"""Paired comparisons of two methods scored on the same items (test rows, seeded episodes)."""

from __future__ import annotations

from math import comb


def mcnemar_exact(a: int, b: int) -> float:
    """Exact two-sided McNemar p-value for ``a`` items only the first method gets right (or wrong)
    against ``b`` only the second does: a binomial test of the ``a + b`` discordant items at p = 1/2.
    1.0 when there are none."""
    n, k = a + b, min(a, b)
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def paired_difference_ci(a: int, b: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Difference in accuracy (second method minus first) over ``n`` paired items, where ``a``
    items only the first method gets right and ``b`` only the second, with an exact confidence
    interval conditional on the ``a + b`` discordant items: the Clopper–Pearson interval of
    ``b / (a + b)`` mapped to ``(a + b) / n · (2π − 1)`` (the interval that matches the exact
    McNemar test). Returns ``(difference, low, high)`` as fractions of ``n``; ``(0, 0, 0)`` without
    discordant items."""
    from scipy.stats import beta

    if n <= 0 or a < 0 or b < 0 or a + b > n:
        raise ValueError(f"paired_difference_ci: need 0 <= a, b and a + b <= n > 0; got a={a}, b={b}, n={n}")
    m = a + b
    if m == 0:
        return 0.0, 0.0, 0.0
    alpha = 1.0 - level
    lo = 0.0 if b == 0 else float(beta.ppf(alpha / 2, b, m - b + 1))
    hi = 1.0 if b == m else float(beta.ppf(1 - alpha / 2, b + 1, m - b))
    scale = m / n
    return (b - a) / n, scale * (2 * lo - 1), scale * (2 * hi - 1)
