"""The confidence set for the best (stats.best_set), by simulation: architectures of known true accuracy scored on
300 validation images, with independent errors or with errors on shared hard images. It must hold every truly
best architecture in at least 1 - alpha of trials at any number of architectures, drop one that is truly 10
points worse most of the time, and scale to the timm zoo. The same check run on the rule it replaced (McNemar
against the picked best, Holm-adjusted) fails, so the check can fail."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

from imgclf.reporting.compare import BOOTSTRAP_REPS, BOOTSTRAP_SEED
from imgclf.reporting.stats import best_set

ALPHA = 0.05
IMAGES = 300
TRIALS = 400


def bound(trials: int) -> float:
    """alpha plus three Monte-Carlo standard errors of a rate whose truth is alpha."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)


def draw(rng: np.random.Generator, n_archs: int, shared: bool, first_error_shift: float = 0.0) -> np.ndarray:
    """images x architectures of right (1) / wrong (0): every architecture is wrong 10% of the time, the first
    one `first_error_shift` more (negative: it is ahead). Independent errors, or (`shared`) errors that fall on
    the same hard images: a fifth of the images are wrong 40% of the time, the rest 2.5%."""
    if shared:
        p_wrong = np.where(rng.random(IMAGES) < 0.2, 0.4, 0.025)
    else:
        p_wrong = np.full(IMAGES, 0.1)
    shift = np.zeros(n_archs)
    shift[0] = first_error_shift
    return (rng.random((IMAGES, n_archs)) >= p_wrong[:, None] + shift[None, :]).astype(float)


def rate(rule, n_archs: int, shared: bool, shift: float, trials: int = TRIALS) -> float:
    """Share of trials where the rule leaves out any architecture (shift 0: all equal, all truly best) or the first
    one (shift != 0)."""
    rng = np.random.default_rng(20111)
    out = 0
    for _ in range(trials):
        inside = rule(draw(rng, n_archs, shared, shift))
        out += not inside.all() if shift == 0 else not inside[0]
    return out / trials


def the_set(scores: np.ndarray) -> np.ndarray:
    return best_set(scores, ALPHA, BOOTSTRAP_REPS, BOOTSTRAP_SEED)


def old_rule(scores: np.ndarray) -> np.ndarray:
    """The rule this replaced: the highest accuracy is the best; another is tied when McNemar's exact test
    against it, Holm-adjusted over the N - 1 comparisons, is above alpha."""
    from scipy.stats import binom

    best = int(np.argmax(scores.mean(axis=0)))
    b = ((scores[:, [best]] > scores).sum(axis=0)).astype(int)
    c = ((scores[:, [best]] < scores).sum(axis=0)).astype(int)
    n = b + c
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(b, c), np.maximum(n, 1), 0.5))
    p = np.where(n == 0, 1.0, p)
    others = np.delete(np.arange(scores.shape[1]), best)
    order = others[np.argsort(p[others], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    inside = np.ones(scores.shape[1], dtype=bool)
    inside[order] = adjusted > ALPHA
    return inside


def test_a_certain_difference_excludes_and_identical_predictions_tie():
    right = np.ones(300)
    some_wrong = np.r_[np.zeros(40), np.ones(260)]
    # b and c are wrong on the same 40 images where a is right: a beats both on every resample
    assert best_set(np.c_[right, some_wrong, some_wrong], ALPHA).tolist() == [True, False, False]
    # identical predictions cannot be told apart, however many
    assert best_set(np.c_[some_wrong, some_wrong, some_wrong], ALPHA).tolist() == [True, True, True]
    assert best_set(some_wrong[:, None], ALPHA).tolist() == [True]


def test_the_highest_accuracy_is_always_in_and_the_set_reproduces():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = draw(rng, 12, shared=True)
        inside = best_set(scores, ALPHA, 200, 0)
        assert inside[np.argmax(scores.mean(axis=0))]
        assert (best_set(scores, ALPHA, 200, 0) == inside).all()


def test_several_seeds_score_shares_and_discrete_ties_keep_the_boundary():
    """Two entries 3 of 300 images apart, all one way: a resample that drops those 3 images deviates by exactly
    the observed gap, and counts (>=), so the pair stays tied (the bootstrap p is about 0.13)."""
    a = np.r_[np.zeros(30), np.ones(270)]
    b = np.r_[np.zeros(33), np.ones(267)]
    assert best_set(np.c_[a, b], ALPHA).tolist() == [True, True]
    halves = np.r_[np.zeros(30), np.full(30, 0.5), np.ones(240)]  # a share of seeds right per image
    assert best_set(np.c_[np.ones(300), halves], ALPHA).tolist() == [True, False]


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match=r"images x entries with at least one of each, got shape \(0, 3\)"):
        best_set(np.zeros((0, 3)), ALPHA)


def test_the_calibration_check_fails_the_rule_it_replaced():
    """With 50 equal architectures the old rule leaves one out far more often than alpha: the bound below fails
    it, so the bound can fail."""
    assert rate(old_rule, 50, shared=False, shift=0.0) > bound(TRIALS)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["independent", "shared_hard_images"])
@pytest.mark.parametrize("n_archs", [2, 8, 50, 200])
def test_calibration_all_equal_and_one_two_points_ahead(n_archs, shared):
    """All equal: any of them outside the set in at most alpha + 3 Monte-Carlo SEs of trials. One truly 2 points
    ahead (it alone is the best): outside the set in at most alpha of trials."""
    trials = TRIALS if n_archs < 200 else TRIALS // 2
    all_equal = rate(the_set, n_archs, shared, 0.0, trials)
    ahead = rate(the_set, n_archs, shared, -0.02, trials)
    print(
        f"N={n_archs} shared={shared} trials={trials} all_equal={all_equal:.4f} bound={bound(trials):.4f} "
        f"ahead_out={ahead:.4f}"
    )
    assert all_equal <= bound(trials)
    assert ahead <= ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["independent", "shared_hard_images"])
@pytest.mark.parametrize("n_archs", [8, 50])
def test_power_one_ten_points_below_is_left_out(n_archs, shared):
    power = rate(the_set, n_archs, shared, 0.10)
    print(f"N={n_archs} shared={shared} trials={TRIALS} ten_points_below_out={power:.4f}")
    assert power >= 0.8


@pytest.mark.slow
def test_the_timm_zoo_scale_in_a_minute():
    """1,102 architectures x 1,000 images (accuracies spread like a zoo's): under 60 s, and the memory it
    allocates stays far below reps x entries x entries floats (9.7 GB)."""
    rng = np.random.default_rng(5)
    scores = (rng.random((1000, 1102)) < np.linspace(0.95, 0.3, 1102)).astype(float)
    tracemalloc.start()
    start = time.perf_counter()
    inside = best_set(scores, ALPHA, BOOTSTRAP_REPS, BOOTSTRAP_SEED)
    seconds = time.perf_counter() - start
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"1102 x 1000: {seconds:.1f} s, peak {peak_mb:.0f} MiB allocated, {inside.sum()} in the set")
    assert seconds < 60 and peak_mb < 500
    assert inside[0] and not inside[-1]
