"""The statistics of an honest comparison, as pure functions over per-image results: a 95% interval on an
accuracy (Wilson), a paired test of two entries on the same images (McNemar's exact test), and Holm's step-down
adjustment when one entry is compared with many. The distributions are scipy's; only Holm's arithmetic is here.
"""

from __future__ import annotations

from collections.abc import Sequence


def wilson_interval(correct: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of `correct` right answers out of `total` images (scipy's binomtest)."""
    from scipy.stats import binomtest

    ci = binomtest(correct, total).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def discordant(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """(images where `a` does better, images where `b` does better), `a` and `b` giving each image's score in the
    same order: 1/0 for right/wrong with one seed, the share of seeds that got it right with several."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same images: {len(a)} against {len(b)}")
    return sum(x > y for x, y in zip(a, b)), sum(x < y for x, y in zip(a, b))


def mcnemar_exact(a_better: int, b_better: int) -> float:
    """Two-sided p-value of McNemar's exact test: under 'no difference' each discordant image is equally likely to
    favour either entry, so `a_better` is Binomial(a_better + b_better, 1/2). No discordant image: p = 1."""
    from scipy.stats import binomtest

    n = a_better + b_better
    return 1.0 if n == 0 else float(binomtest(a_better, n, 0.5).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest of m is multiplied by m - i + 1,
    then made non-decreasing and capped at 1. Rejecting where the adjusted p <= alpha keeps the chance of any
    false 'different' among all m comparisons at alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
