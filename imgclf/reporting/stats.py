"""The statistics of an honest comparison, as pure functions over per-image results: a 95% interval on an
accuracy (Wilson), a confidence set for the best of many entries scored on the same images (Mogstad, Romano,
Shaikh and Wilhelm's, with Romano and Wolf's step-down and a bootstrap over the images), and, as descriptions
only, McNemar's exact test of one pair and Holm's step-down adjustment, and the images that test needs to tell
two entries apart (Connor's sample size). The distributions are scipy's; the set's
bootstrap and Holm's arithmetic are here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


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


def mcnemar_sample_size(p10: float, p01: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """The images a paired comparison needs to tell two entries apart with McNemar's test at level `alpha` with
    probability `power`, when a share `p10` of images favours the first and `p01` the second (Connor 1987):
    n = [z_{alpha/2} sqrt(p_d) + z_power sqrt(p_d - d^2)]^2 / d^2, p_d = p10 + p01, d = p10 - p01, rounded up.
    None when the two are equally good on these images (d = 0): no number of images would tell them apart."""
    from scipy.stats import norm

    pd_, d = p10 + p01, p10 - p01
    if d == 0:
        return None
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return math.ceil((z_a * math.sqrt(pd_) + z_b * math.sqrt(pd_ - d * d)) ** 2 / (d * d))


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


def best_set(scores: np.ndarray, alpha: float, reps: int = 1000, seed: int = 0) -> np.ndarray:
    """Which entries (columns of `scores`: one row per image, each image's score in [0, 1]) are in a confidence
    set for the best at level 1 - `alpha`: with probability at least 1 - alpha (asymptotically in the images),
    every entry whose true accuracy is the highest is in it, however many entries there are. Picking the best on
    these same images is part of the procedure, which is what comparing everything with the picked best lacks.

    The confidence set for the best of Mogstad, Romano, Shaikh and Wilhelm ("Inference for ranks", Review of
    Economic Studies 91(1), 2024; the tau-best set with tau = 1), with Romano and Wolf's step-down (JASA 100,
    2005): entry i leaves the set when some j beats it, max_j (acc_j - acc_i) / se_ji, by more than the 1 - alpha
    quantile of the bootstrap's max over the remaining i and all j of the same studentised pair deviation; the
    quantile is recomputed over the entries still in the set until none leaves. The image is the resampled unit
    (i.i.d. bootstrap: every entry saw the same images, so the pairing is kept). se_ji is the standard error of
    the paired difference under "no difference" (the root mean square of score_j - score_i over the images, over
    sqrt(images)). The bootstrap means of every entry are one matrix product,
    (reps x images) resampling weights by (images x entries) scores, and the max over j is taken a block of i at
    a time, so nothing holds reps x entries x entries. `seed` fixes the resamples: the same scores give the same
    set. Returns a boolean array over the entries."""
    import numpy as np

    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"scores must be images x entries with at least one of each, got shape {x.shape}")
    n, m = x.shape
    acc = x.mean(axis=0)
    centred = x - acc
    var = np.einsum("ij,ij->j", centred, centred) / n
    gap = acc[:, None] - acc[None, :]  # [j, i]: acc_j - acc_i
    # The mean square of score_j - score_i over the images (its variance plus gap^2): the standard error under
    # "no difference", as McNemar's test uses. The variance alone shrinks where the sample's gap is large, the max
    # over many pairs picks exactly those pairs, and the bootstrap (which keeps se fixed) does not see it: the set
    # came out too small with many entries (tests/test_best_set.py).
    mean_square = var[:, None] + var[None, :] - 2 * (centred.T @ centred) / n + gap**2
    se = np.sqrt(np.maximum(mean_square, 0.0) / n)
    flat = se < _FLAT  # the pair scores the same on every image (the diagonal): no noise, no gap
    # A flat pair with a gap (only from float rounding) would be certain; its bootstrap deviation is 0.
    z = np.where(flat, np.where(gap > _FLAT, np.inf, 0.0), gap / np.where(flat, 1.0, se))
    beaten_by = z.max(axis=0)  # per i: how far the entry that beats it most does, in standard errors
    inverse = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, se))
    boot = _resample_weights(n, reps, seed) @ x - acc  # reps x entries: the centred bootstrap accuracies
    boot_max = _max_over_pairs(boot, inverse)
    inside = np.ones(m, dtype=bool)
    while True:
        critical = boot_max[:, inside].max(axis=1)  # reps: the max over the entries still in the set
        # >= with a float margin: the scores are discrete, so a resample can deviate by exactly the observed gap
        p = np.mean(critical[:, None] >= beaten_by[inside][None, :] - _TIE, axis=0)
        out = p < alpha
        if not out.any():
            return inside
        inside[np.flatnonzero(inside)[out]] = False


_FLAT = 1e-9  # below this an accuracy gap or a standard error is float noise, i.e. zero
_TIE = 1e-6  # studentised deviations closer than this are equal (float rounding of a discrete bootstrap)
_BLOCK_BYTES = 32 * 2**20  # the (reps x block x entries) array of pair deviations at a time


def _max_over_pairs(boot: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """reps x entries: for each resample and entry i, max_j (boot_j - boot_i) / se_ji, from the centred bootstrap
    accuracies (reps x entries) and 1 / se (entries x entries, [j, i], 0 for flat pairs), a block of i at a time."""
    import numpy as np

    reps, m = boot.shape
    out = np.empty((reps, m))
    step = max(1, _BLOCK_BYTES // (8 * reps * m))
    for lo in range(0, m, step):
        block = slice(lo, lo + step)
        deviations = boot[:, None, :] - boot[:, block, None]  # reps x block x entries: boot_j - boot_i
        deviations *= inverse[:, block].T[None]
        out[:, block] = deviations.max(axis=2)
    return out


@lru_cache(maxsize=4)
def _resample_weights(n: int, reps: int, seed: int) -> np.ndarray:
    """`reps` i.i.d. bootstrap resamples of n images as weights (each row: multinomial counts / n), read-only:
    cached, since the simulation tests score many sets of the same size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=reps) / n
    weights.setflags(write=False)
    return weights
