"""The deployment guards on small literal windows: each refuses what it is for, and small counts refuse nothing."""

from __future__ import annotations

import numpy as np
import pytest

from muse_stream.config import TenantConfig
from muse_stream.deploy.guards import judge, ratio_interval, spearman
from muse_stream.deployspec import DeployGuards, DeploySettings
from muse_stream.errors import DataError
from muse_stream.models.calibration_size import calibration_need, check_calibration_size, tenant_map_needs
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.models.transform import fit_score_transform

G = DeployGuards(min_alerts=20, min_positives=10)


def _window(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    old = rng.random(n)
    return old, np.full(n, "a", dtype=object)


def _failed(j):
    return {r.guard for r in j.failed}


def test_equal_scores_pass_every_guard():
    old, t = _window()
    assert judge(old, old.copy(), t, {"a": [("review", 0.9)]}, G).passed


def test_an_alert_rate_outside_the_tolerance_with_enough_alerts_refuses():
    old, t = _window()
    new = np.where(old >= 0.85, np.maximum(old, 0.9), old)  # 15% alert instead of 10%
    j = judge(old, new, t, {"a": [("review", 0.9)]}, G.model_copy(update={"psi_max": 10, "min_rank_correlation": 0}))
    assert _failed(j) == {"alert rate"} and "alert rate a/review" in j.reason()


def test_small_counts_do_not_refuse():
    old, t = _window(300)
    new = np.where(old >= 0.97, np.maximum(old, 0.99), old)  # 3 alerts become 9: far off, but few
    j = judge(old, new, t, {"a": [("decline", 0.99)]}, G.model_copy(update={"psi_max": 10}))
    row = next(r for r in j.rows if r.guard == "alert rate")
    assert row.ok is None and j.passed


def test_a_ratio_is_refused_only_when_its_whole_interval_is_outside():
    r, lo, hi = ratio_interval(120, 100, 0.95)  # 1.2, but the interval reaches below 1.1
    assert r == pytest.approx(1.2) and lo < 1.1 < hi
    r, lo, hi = ratio_interval(1200, 1000, 0.95)
    assert lo > 1.1


def test_rank_and_psi_guards():
    old, t = _window()
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(old)  # same distribution, no agreement
    assert spearman(old, shuffled) == pytest.approx(0.0, abs=0.05)
    assert _failed(judge(old, shuffled, t, {}, G)) == {"rank"}
    moved = np.sqrt(old)  # same order, moved scores
    assert _failed(judge(old, moved, t, {}, G)) == {"psi"}


def test_recall_guard_needs_enough_frauds_and_refuses_a_fall():
    old, t = _window()
    labels = (old >= 0.8).astype(float)  # frauds are what the old scores ranked high
    labels[::50] = np.nan
    rng = np.random.default_rng(2)
    new = np.where(labels == 1, rng.random(old.size) * 0.5, old)  # the new scores push the frauds down
    j = judge(old, new, t, {"a": [("review", 0.9)]}, G.model_copy(update={"psi_max": 10, "ratio_tolerance": 0.99,
                                                                         "min_rank_correlation": -1}), labels)
    assert "recall" in _failed(j)


def test_per_intent_overrides():
    d = DeploySettings(ratio_tolerance=0.1, intents={"card": {"ratio_tolerance": 0.2}})
    assert d.for_intent("card").ratio_tolerance == 0.2 and d.for_intent("other").ratio_tolerance == 0.1
    with pytest.raises(ValueError, match="ratio_tolerance"):
        DeploySettings(intents={"card": {"ratio_tolerance": 5}})


def test_the_calibration_size_follows_the_top_band_and_says_how_many_more():
    ref = ReferenceDistribution.from_scores(np.linspace(0, 1, 10_001))
    tenants = [TenantConfig(tenant_id="a", intents=("card",), bands={"review": {"rate": 0.01}, "decline": 0.998}),
               TenantConfig(tenant_id="b", intents=("other",), bands={"top": {"rate": 0.0001}})]
    need = calibration_need(tenants, "card", ref)
    assert need.events == 25_000 and "a's decline" in need.why  # 0.2% of the reference: 50 above it
    with pytest.raises(DataError, match=r"10,000 calibration events; 25,000 needed .*: 15,000 more"):
        check_calibration_size(10_000, need, "cal.csv")
    assert calibration_need(tenants, "card", None).events == 5_000  # a first version: the rate bands only


def test_a_tenant_with_too_few_events_for_its_top_band_gets_no_map_of_its_own():
    ref = ReferenceDistribution.from_scores(np.linspace(0, 1, 10_001))
    tenants = [TenantConfig(tenant_id="thin", intents=("card",), bands={"top": {"rate": 0.005}}),  # 10,000
               TenantConfig(tenant_id="wide", intents=("card",), bands={"top": {"rate": 0.05}})]  # 1,000
    default, per = tenant_map_needs(tenants, "card", ref, 2000)
    assert (default, per) == (10_000, {"thin": 10_000, "wide": 2000})  # the floor still holds for "wide"
    rng = np.random.default_rng(3)
    raw = rng.random(18_000)
    ids = np.array(["thin"] * 6000 + ["wide"] * 6000 + ["stranger"] * 6000, dtype=object)
    st, _ = fit_score_transform(raw, reference=ref, tenant_ids=ids, min_tenant_events=default,
                                tenant_min_events=per)
    # 6,000 events put about 30 above thin's 0.5% band: it is served by the intent map; a tenant not
    # configured for the intent needs as much as the most demanding one.
    assert st.tenant_ids == ("wide",)
    st, _ = fit_score_transform(np.r_[raw, rng.random(4000)], reference=ref,
                                tenant_ids=np.r_[ids, ["thin"] * 4000], min_tenant_events=default,
                                tenant_min_events=per)
    assert st.tenant_ids == ("thin", "wide")
