"""The images needed to tell two entries apart (stats.mcnemar_sample_size, Connor 1987), checked by simulation:
at the formula's n, McNemar's test rejects 'no difference' in about 80% of paired samples; at half of it, far
less often, so a wrong formula fails here."""

import numpy as np
import pytest

from imgclf.reporting.stats import mcnemar_sample_size

REPS = 4000  # power's standard error about 0.007


def simulated_power(n: int, p10: float, p01: float, seed: int = 0) -> float:
    """The share of REPS samples of n paired images where McNemar's test (two-sided, 0.05, the normal form the
    formula assumes) tells the two apart."""
    counts = np.random.default_rng(seed).multinomial(n, [p10, p01, 1 - p10 - p01], size=REPS)
    n10, n01 = counts[:, 0].astype(float), counts[:, 1].astype(float)
    disc = n10 + n01
    z = np.divide(n10 - n01, np.sqrt(disc), out=np.zeros_like(disc), where=disc > 0)
    return float((np.abs(z) > 1.959964).mean())


@pytest.mark.parametrize(("p10", "p01"), [(0.10, 0.05), (0.06, 0.02), (0.2, 0.15)])
def test_the_formulas_n_gives_80_percent_power(p10, p01):
    n = mcnemar_sample_size(p10, p01)
    assert 0.76 <= simulated_power(n, p10, p01) <= 0.85
    assert simulated_power(n // 2, p10, p01) < 0.62  # a wrong (too small) n fails the check above


def test_known_value_and_no_difference():
    # Connor's formula by hand for p10 = .10, p01 = .05: p_d = .15, d = .05
    z_a, z_b = 1.959964, 0.841621
    by_hand = (z_a * 0.15**0.5 + z_b * (0.15 - 0.0025) ** 0.5) ** 2 / 0.0025
    assert mcnemar_sample_size(0.10, 0.05) == int(np.ceil(by_hand))
    assert mcnemar_sample_size(0.05, 0.05) is None
    assert mcnemar_sample_size(0.05, 0.10) == mcnemar_sample_size(0.10, 0.05)
