"""Ties in the target at a band's threshold keep the band's alert rate, and scores that cannot rank events are
refused with one clear error (issue 14's transform fixes)."""

from __future__ import annotations

import numpy as np
import pytest

from muse_stream.errors import TransformError
from muse_stream.models.quantile import QuantileMap, ReferenceDistribution
from muse_stream.models.transform import fit_score_transform


def _incumbent_with_tie(rng: np.random.Generator, n: int, tie_value: float, below: float, tied: float) -> np.ndarray:
    """Reference-scale scores: a share `below` spread under `tie_value`, a share `tied` exactly on it, the rest
    spread above it."""
    n_below, n_tied = int(n * below), int(n * tied)
    return rng.permutation(np.concatenate([
        rng.uniform(0.0, tie_value * 0.9, n_below),
        np.full(n_tied, tie_value),
        rng.uniform(tie_value * 1.1, 1.0, n - n_below - n_tied),
    ]))


@pytest.mark.parametrize(("below", "tied"), [(0.90, 0.05), (0.90, 0.08), (0.50, 0.30)])
def test_aligned_map_keeps_the_alert_rate_at_a_tied_threshold(below, tied):
    rng = np.random.default_rng(3)
    n = 50_000
    incumbent = _incumbent_with_tie(rng, n, 0.4, below, tied)
    ref = ReferenceDistribution.from_scores(incumbent)
    new = rng.beta(0.5, 8.0, n)  # another model on the same events: continuous, no ties
    qm = QuantileMap().fit(new, reference=ref, target_scores=incumbent)
    threshold = 0.4
    incumbent_rate = float(np.mean(incumbent >= threshold))
    mapped_rate = float(np.mean(qm.transform(new) >= threshold))
    assert incumbent_rate == pytest.approx(1.0 - below, abs=1e-3)
    # The tied group's middle would give 1 - below - tied / 2; its lowest level gives the incumbent's rate.
    assert mapped_rate == pytest.approx(incumbent_rate, rel=0.01)
    # A threshold inside a continuous stretch is unaffected by the tie.
    assert float(np.mean(qm.transform(new) >= 0.8)) == pytest.approx(float(np.mean(incumbent >= 0.8)), rel=0.02)


def test_map_onto_a_reference_with_a_mass_point_alerts_the_reference_share():
    rng = np.random.default_rng(4)
    ref_scores = _incumbent_with_tie(rng, 40_000, 0.6, 0.95, 0.02)
    ref = ReferenceDistribution.from_scores(ref_scores)
    new = rng.beta(0.7, 6.0, 40_000)
    st, _ = fit_score_transform(new, reference=ref)
    assert float(np.mean(st.apply(new) >= 0.6)) == pytest.approx(float(np.mean(ref_scores >= 0.6)), rel=0.01)


def test_untied_maps_are_unchanged_by_the_tie_rule():
    """On continuous scores every run is a single knot, so its lowest and middle levels coincide."""
    rng = np.random.default_rng(5)
    target = rng.beta(0.6, 5.0, 30_000)
    ref = ReferenceDistribution.from_scores(target)
    new = rng.beta(0.9, 4.0, 30_000)
    qm = QuantileMap().fit(new, reference=ref, target_scores=target)
    np.testing.assert_allclose(np.quantile(qm.transform(new), [0.5, 0.9, 0.99, 0.999]),
                               np.quantile(target, [0.5, 0.9, 0.99, 0.999]), rtol=0.02)


@pytest.mark.parametrize("share", [1.0, 0.995])
def test_constant_or_near_constant_scores_are_refused(share):
    rng = np.random.default_rng(6)
    n = 10_000
    scores = np.full(n, 0.37)
    k = int(n * (1 - share))
    scores[:k] = rng.uniform(0.0, 1.0, k)
    with pytest.raises(TransformError, match=r"equal 0\.37; constant or near-constant scores cannot rank events"):
        fit_score_transform(scores)  # a first model: its scores would become a constant reference
    ref = ReferenceDistribution.from_scores(rng.uniform(0.0, 1.0, n))
    with pytest.raises(TransformError, match="constant or near-constant"):
        QuantileMap().fit(scores, reference=ref)
    with pytest.raises(TransformError, match="constant or near-constant"):
        QuantileMap().fit(rng.uniform(0.0, 1.0, n), reference=ref, target_scores=scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_candidate_with_its_own_ties_keeps_every_tied_threshold_of_a_few_valued_incumbent(seed):
    """A candidate whose score ties where an incumbent's mass point begins once chained every tied run into
    one knot: the whole map collapsed to a line and a 5% band alerted 19%."""
    rng = np.random.default_rng(seed)
    n = 20_000
    x = rng.normal(size=n)
    # The incumbent: four values (a stump model), ranking events by x with noise; the candidate: the same
    # signal on a coarse grid of 400 values, so its own scores tie throughout.
    incumbent = np.select([x < 0.2, x < 0.6, x < 1.6], [0.13, 0.21, 0.24], 0.36) + 0.0
    new = np.round(1.0 / (1.0 + np.exp(-(x + rng.normal(scale=0.3, size=n)))) * 400) / 400
    ref = ReferenceDistribution.from_scores(incumbent)
    qm = QuantileMap().fit(new, reference=ref, target_scores=incumbent)
    mapped = qm.transform(new)
    # Events on one candidate score alert together: a rate can be off by that score's mass, no more.
    _, counts = np.unique(new, return_counts=True)
    step = counts.max() / n
    for threshold in (0.21, 0.24, 0.36):
        old = float(np.mean(incumbent >= threshold))
        assert abs(float(np.mean(mapped >= threshold)) - old) <= step, (threshold, step)
