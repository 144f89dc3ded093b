"""Alert-rate bands: a rate becomes the threshold at which that share of the intent's reference population
alerts, once per intent, and a tenant on two intents gets each intent's own threshold."""

from __future__ import annotations

import numpy as np
import pytest

from muse_stream.bandspec import BandRate
from muse_stream.config import Settings, TenantConfig
from muse_stream.models.bands import band_table, band_ties, reference_rates, resolve_bands
from muse_stream.models.quantile import ReferenceDistribution
from muse_stream.tenants import TenantRegistry, describe_bands

RNG = np.random.default_rng(3)
# Calibrated fraud probabilities are mostly tiny: the shape that made 0.95/0.99 bands never alert.
SCORES_A = RNG.beta(0.5, 40.0, 200_000)
SCORES_B = RNG.beta(2.0, 5.0, 200_000)
REF_A = ReferenceDistribution.from_scores(SCORES_A)
REF_B = ReferenceDistribution.from_scores(SCORES_B)


@pytest.mark.parametrize("rate", [0.2, 0.05, 0.01, 0.001, 0.0001])
def test_a_rate_resolves_to_the_threshold_its_share_of_the_reference_reaches(rate):
    thr = resolve_bands({"review": BandRate(rate=rate)}, REF_A)["review"]
    share = float(np.mean(SCORES_A >= thr))
    # Within the reference's resolution: the gap between the two knot levels around 1 - rate, and one score.
    lv = REF_A.levels
    i = int(np.searchsorted(lv, 1.0 - rate))
    assert abs(share - rate) <= (lv[i] - lv[i - 1]) + 1 / SCORES_A.size, (rate, share)
    # And back: the reference alert rate of the resolved threshold is the rate given.
    assert reference_rates({"review": thr}, REF_A)["review"] == pytest.approx(rate, rel=1e-6)


def test_thresholds_stay_as_given_and_rates_wait_for_a_reference():
    bands = {"review": BandRate(rate=0.01), "decline": 0.9}
    assert resolve_bands(bands, None) == {"decline": 0.9}  # no reference yet: the rate has no threshold
    got = resolve_bands(bands, REF_B)
    assert got["decline"] == 0.9 and got["review"] == pytest.approx(float(np.quantile(SCORES_B, 0.99)), abs=2e-3)
    rows = band_table(bands, None)
    assert [(r["name"], r["threshold"], r["text"]) for r in rows] == [("decline", 0.9, "0.9"), ("review", None, "1%")]


def test_a_higher_band_has_the_lower_rate_and_the_higher_threshold():
    bands = {"decline": BandRate(rate=0.001), "review": BandRate(rate=0.01), "watch": BandRate(rate=0.05)}
    rows = band_table(bands, REF_A)
    assert [r["name"] for r in rows] == ["watch", "review", "decline"]  # lowest threshold first
    assert [r["reference_rate"] for r in rows] == pytest.approx([0.05, 0.01, 0.001], rel=1e-6)


def test_band_sets_that_cannot_be_ordered_are_refused():
    with pytest.raises(ValueError, match="two bands share a rate"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"rate": 0.01}, "decline": {"rate": 0.01}})
    with pytest.raises(ValueError, match="two bands share a threshold"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": 0.5, "decline": 0.5})
    # A rate has a floor, 1e-6: a reference cannot resolve a smaller share (1e-11 gave threshold 0.99 and a
    # publish needing 5e12 calibration events). Config, commands and workers all validate through BandRate.
    for rate in (0, 1e-9, 9.99e-7):
        with pytest.raises(ValueError, match=r"bands.review.rate.rate\n.*at least 0.0001% \(1e-6\).*cannot resolve"):
            TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"rate": rate}})
    with pytest.raises(ValueError, match=r"at least 0.0001% \(1e-6\) and below 100%, got rate nan \["):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"rate": float("nan")}})  # not "too small"
    assert TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"rate": 1e-6}}).bands["review"].rate == 1e-6
    with pytest.raises(ValueError, match=r"bands.review.rate.rate\n.*below 100%, got rate 1\b"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"review": {"rate": 1.0}})
    assert TenantRegistry(Settings(), log_changes=False).apply(
        b"a", b'{"tenant_id": "a", "intents": ["x"], "bands": {"review": {"rate": 1e-9}}}') is None
    with pytest.raises(ValueError, match="approve"):
        TenantConfig(tenant_id="a", intents=("x",), bands={"approve": {"rate": 0.5}})
    # A rate and a threshold meet only on a reference: a tie there is found, for the command to refuse.
    thr = resolve_bands({"r": BandRate(rate=0.01)}, REF_A)["r"]
    assert band_ties({"review": BandRate(rate=0.01), "decline": thr}, REF_A) == [("review", "decline")]
    assert band_ties({"review": BandRate(rate=0.01), "decline": 0.9}, REF_A) == []


def test_a_tenant_on_two_intents_resolves_each_on_its_own_reference():
    cfg = TenantConfig(tenant_id="acme", intents=("a", "b"),
                       bands={"review": {"rate": 0.01}, "decline": {"rate": 0.001}})
    refs = {"a": REF_A, "b": REF_B}
    reg = TenantRegistry(Settings(), {"acme": cfg}, log_changes=False, references=refs.get)
    times = np.array([1, 2, 3], dtype=np.int64)
    [(a, rows)] = reg.band_groups("acme", "a", times)
    [(b, _)] = reg.band_groups("acme", "b", times)
    assert rows is None and a.names == b.names == ["approve", "review", "decline"]
    assert a.thresholds.tolist() == pytest.approx(REF_A.quantile([0.99, 0.999]).tolist())
    assert b.thresholds.tolist() == pytest.approx(REF_B.quantile([0.99, 0.999]).tolist())
    assert b.thresholds[0] > 5 * a.thresholds[0]  # one rate, two very different thresholds
    # Resolved once per reference: the same Bands object every batch.
    assert reg.band_groups("acme", "a", times)[0][0] is a and reg.band_groups("acme", "a", times + 1)[0][0] is a
    # The status/show view: as given, as threshold, as reference alert rate, per intent.
    view = describe_bands(cfg, "b", REF_B)
    assert [(r["name"], r["text"]) for r in view] == [("review", "1%"), ("decline", "0.1%")]
    assert [r["reference_rate"] for r in view] == pytest.approx([0.01, 0.001], rel=1e-6)
    assert reg.describe_bands("acme", "a")[0]["threshold"] == pytest.approx(a.thresholds[0])
