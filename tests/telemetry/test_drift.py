"""Drift: a shifted window of reference-scale scores sets the metric and logs one warning; an unshifted one
raises nothing."""

from __future__ import annotations

import logging

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from muse_stream.config import DriftSettings
from muse_stream.telemetry import Telemetry
from muse_stream.telemetry.drift import DriftMonitor
from tests.fixtures import telemetry_fakes as fk

DRIFT_LOGGER = "muse_stream.telemetry.drift"


def _gauge(tel: Telemetry, name: str, **labels) -> float | None:
    for fam in text_string_to_metric_families(generate_latest(tel.registry).decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == DRIFT_LOGGER and r.levelno == logging.WARNING]


def test_unshifted_window_raises_no_drift(caplog):
    ref = fk.reference()
    w = fk.worker(fk.settings(), ref)
    tel = Telemetry(w)
    rng = np.random.default_rng(1)
    caplog.set_level(logging.INFO)
    fk.feed(tel, w, ref.quantile(rng.random(20_000)))  # drawn from the reference itself
    tel.update()
    v = tel.drift.verdicts[(fk.TENANT, fk.INTENT)]
    assert v.events == 20_000
    assert v.psi is not None and v.psi < 0.01
    assert not v.drifted
    review = next(b for b in v.bands if b.band == "review")
    assert review.judged and 0.8 < review.ratio < 1.25
    assert _warnings(caplog) == []
    assert _gauge(tel, "muse_drift_detected", tenant=fk.TENANT, intent=fk.INTENT) == 0
    assert _gauge(tel, "muse_drift_psi", tenant=fk.TENANT, intent=fk.INTENT) == v.psi


def test_shifted_window_sets_the_metric_and_warns_once(caplog):
    ref = fk.reference()
    w = fk.worker(fk.settings(), ref)
    tel = Telemetry(w)
    rng = np.random.default_rng(2)
    caplog.set_level(logging.INFO)
    # Levels u**0.4 put more mass high on the reference scale: what a stale transform does to new traffic.
    fk.feed(tel, w, ref.quantile(rng.random(20_000) ** 0.4), version="card_fraud@7")
    tel.update()
    v = tel.drift.verdicts[(fk.TENANT, fk.INTENT)]
    assert v.drifted and v.psi > 0.2
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "tenant acme" in msg and "intent card_fraud" in msg and "card_fraud@7" in msg and "PSI" in msg
    assert "alert rate at review" in msg
    fields = warnings[0].fields
    assert fields["event"] == "drift" and fields["tenant"] == "acme" and fields["version"] == "card_fraud@7"
    assert _gauge(tel, "muse_drift_detected", tenant=fk.TENANT, intent=fk.INTENT) == 1
    observed = _gauge(tel, "muse_drift_alert_rate", tenant=fk.TENANT, intent=fk.INTENT, band="review")
    expected = _gauge(tel, "muse_drift_reference_alert_rate", tenant=fk.TENANT, intent=fk.INTENT, band="review")
    assert observed > 2 * expected
    # Still drifted on the next evaluations: the metric stays, the warning is not repeated.
    fk.feed(tel, w, ref.quantile(rng.random(5_000) ** 0.4), version="card_fraud@7")
    tel.update()
    tel.update()
    assert len(_warnings(caplog)) == 1
    assert _gauge(tel, "muse_drift_detected", tenant=fk.TENANT, intent=fk.INTENT) == 1


def test_too_few_scores_give_no_verdict(caplog):
    ref = fk.reference()
    w = fk.worker(fk.settings(drift={"min_events": 5_000}), ref)
    tel = Telemetry(w)
    caplog.set_level(logging.INFO)
    fk.feed(tel, w, np.full(4_000, 0.99), batches=4)  # wildly shifted, but not enough of it
    tel.update()
    v = tel.drift.verdicts[(fk.TENANT, fk.INTENT)]
    assert v.psi is None and not v.drifted
    assert _warnings(caplog) == []
    assert _gauge(tel, "muse_drift_psi", tenant=fk.TENANT, intent=fk.INTENT) is None


def _monitor(ref, **kw) -> DriftMonitor:
    return DriftMonitor(DriftSettings(window_s=600, min_events=1000, **kw), lambda intent: ref)


def _add(mon: DriftMonitor, scores: np.ndarray, now: float) -> None:
    thresholds = np.array([0.5, 0.8])
    bands = np.searchsorted(thresholds, scores, side="right")
    mon.add("acme", "card_fraud", "card_fraud@1", scores, np.bincount(bands, minlength=3),
            ["approve", "review", "decline"], thresholds, now)


def test_a_tail_shift_alone_is_caught_by_the_band_rate(caplog):
    ref = fk.reference()
    rng = np.random.default_rng(3)
    scores = ref.quantile(rng.random(60_000))
    # Move 0.4% of the scores above the decline threshold: PSI barely moves, the decline rate triples.
    n_move = int(0.004 * scores.size)
    scores[:n_move] = 0.9
    mon = _monitor(ref)
    caplog.set_level(logging.INFO)
    _add(mon, scores, now=1000.0)
    (v,) = mon.evaluate(now=1000.0)
    assert v.psi < 0.2
    decline = next(b for b in v.bands if b.band == "decline")
    assert decline.judged and decline.ratio > 2
    assert v.drifted
    (w,) = _warnings(caplog)
    assert "alert rate at decline" in w.getMessage()


def test_drift_clears_once_the_window_recovers_and_can_warn_again(caplog):
    ref = fk.reference()
    rng = np.random.default_rng(4)
    mon = _monitor(ref)
    caplog.set_level(logging.INFO)
    _add(mon, ref.quantile(rng.random(5_000) ** 0.4), now=0.0)
    assert mon.evaluate(now=0.0)[0].drifted
    # The shifted scores leave the 600 s window; fresh traffic follows the reference again.
    _add(mon, ref.quantile(rng.random(5_000)), now=700.0)
    (v,) = mon.evaluate(now=700.0)
    assert not v.drifted and v.events == 5_000
    cleared = [r for r in caplog.records if r.name == DRIFT_LOGGER and "drift cleared" in r.getMessage()]
    assert len(cleared) == 1
    _add(mon, ref.quantile(rng.random(20_000) ** 0.4), now=1400.0)
    assert mon.evaluate(now=1400.0)[0].drifted
    assert len(_warnings(caplog)) == 2


def test_new_bands_restart_the_window():
    ref = fk.reference()
    rng = np.random.default_rng(5)
    mon = _monitor(ref)
    _add(mon, ref.quantile(rng.random(2_000)), now=0.0)
    thresholds = np.array([0.6])
    s = ref.quantile(rng.random(1_500))
    counts = np.bincount(np.searchsorted(thresholds, s, side="right"), minlength=2)
    mon.add("acme", "card_fraud", "card_fraud@1", s, counts, ["approve", "review"], thresholds, 1.0)
    (v,) = mon.evaluate(now=1.0)
    assert v.events == 1_500 and [b.band for b in v.bands] == ["review"]


def test_drift_judges_the_bands_in_force_not_a_change_written_ahead(caplog):
    """A band change written with a time still ahead is in the record's last period, but the scores were
    banded by the bands in force: drift must judge those (it once used the newest, and raised false alarms)."""
    from muse_stream.config import BandPeriod, TenantConfig
    from muse_stream.tenants import TenantRegistry

    ref = fk.reference()
    s = fk.settings()
    future = {"review": 0.9}  # far above the traffic's band rate
    acme = TenantConfig(tenant_id=fk.TENANT, intents=(fk.INTENT,), bands=future,
                        band_timeline=(BandPeriod(from_time=None, bands=fk.BANDS),
                                       BandPeriod(from_time=4_102_444_800_000, bands=future)))  # 2100
    w = fk.worker(s, ref)
    w.tenants = TenantRegistry(s, {fk.TENANT: acme}, log_changes=False)
    tel = Telemetry(w)
    rng = np.random.default_rng(9)
    scores = ref.quantile(rng.random(20_000))  # the reference itself: no drift against the bands in force
    in_force = w.tenants.band_groups(fk.TENANT, fk.INTENT, np.array([0]))[0][0]
    assert list(in_force.names) == ["approve", "review", "decline"]
    now_ms = int(__import__("time").time() * 1000)
    for part in np.array_split(scores, 10):
        g = fk.Group(fk.TENANT, fk.INTENT, f"{fk.INTENT}@1", part, in_force.assign(part), list(in_force.names),
                     np.full(part.size, now_ms - 1000, dtype=np.int64), in_force.thresholds)
        out = fk.Output(decisions=[None] * part.size, scored={(fk.TENANT, fk.INTENT, f"{fk.INTENT}@1"): part.size},
                        groups=[g])
        tel.on_batch(out, [fk.Msg(ts=now_ms - 500) for _ in range(part.size)], 0, 0)
    caplog.set_level(logging.INFO)
    tel.update()
    v = tel.drift.verdicts[(fk.TENANT, fk.INTENT)]
    assert v.events == 20_000 and not v.drifted and [b.band for b in v.bands] == ["review", "decline"]
    assert _warnings(caplog) == []
