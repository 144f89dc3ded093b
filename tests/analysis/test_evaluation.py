import math

import numpy as np

from muse_stream.analysis.evaluation import auc, ks_distance, psi, wilson


def test_auc_with_ties_and_perfect_ranking():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0


def test_wilson_interval_contains_the_rate_and_ends_exactly_at_0_and_1():
    lo, hi = wilson(5, 100)
    assert lo < 0.05 < hi and 0.01 < lo and hi < 0.12
    assert wilson(0, 50)[0] == 0.0 and wilson(50, 50)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_ks_and_psi_are_zero_for_the_same_sample_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=20_000)
    assert ks_distance(a, a) == 0.0 and psi(a, a) < 1e-9
    b = a + 0.5
    assert 0.15 < ks_distance(a, b) < 0.25
    assert psi(a, b) > 0.1 > psi(a, rng.normal(size=20_000))
