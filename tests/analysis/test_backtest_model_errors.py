"""Without a broker: the backtest reads a version's model_error rows as live does, and groups a tenant's
events by the bands in force at their event times."""

from __future__ import annotations

import numpy as np
import orjson

from muse_stream.analysis.backtest import band_sets, range_events
from muse_stream.bandspec import BandPeriod
from muse_stream.config import Settings, TenantConfig
from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key, dump, version_key
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.boosters import hand_written_version, regression_booster
from tests.fixtures.helpers import event, train_booster
from tests.fixtures.scoring_fakes import Msg

TENANTS = {"acme": TenantConfig(tenant_id="acme", intents=("card", "ato"), default_intent="card",
                                bands={"review": 0.5})}


def _registry() -> ModelRegistry:
    reg = ModelRegistry()
    for intent, booster in (("card", regression_booster()), ("ato", train_booster(2))):
        reg.apply(version_key(intent, 1), dump(hand_written_version(intent, 1, booster)))
        reg.apply(active_key(intent), dump(ActivationRecord(intent=intent, version=1, activated_at=0,
                                                            timeline=(TimelineEntry(version=1),))))
    return reg


def test_the_backtest_compares_what_live_decides_and_counts_model_errors_as_live_dead_letters_them():
    reg = _registry()
    msgs = [Msg(orjson.dumps(event(i, "acme", intent=None if i % 4 else "ato")), i) for i in range(300)]
    live = BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                       max_event_bytes=10_000).process(msgs, 0)
    live_raw = {orjson.loads(v)["event_id"]: orjson.loads(v)["raw_score"] for _, _, v in live.decisions
                if orjson.loads(v)["intent"] == "card"}
    n_errors = sum(d.reason.value == "model_error" for d in live.dead)
    assert n_errors and len(live.dead) == n_errors  # the regression version's rows outside [0, 1]

    got = range_events(iter([msgs[:128], msgs[128:]]), "card", TENANTS, reg, max_event_bytes=10_000,
                       max_abs_feature=1e30)
    assert got.dead_letters == {"model_error": n_errors}
    assert got.other_intents == 75  # the ato events, scored by their own version
    assert dict(zip(got.event_ids, got.raw)) == live_raw  # the raw scores live decided with, bit for bit


def test_band_sets_group_a_tenant_s_events_by_the_bands_in_force_at_their_event_times():
    old, new = {"review": 0.5}, {"review": 0.3, "decline": 0.6}
    cfg = TenantConfig(tenant_id="acme", intents=("card",), bands=old, band_timeline=(
        BandPeriod(bands=old), BandPeriod(from_time=100, bands=new), BandPeriod(from_time=200, bands=old)))
    reg = TenantRegistry(Settings(), {"acme": cfg}, log_changes=False)
    sets = band_sets(reg, "acme", "card", np.array([10, 150, 250, 120, 50, 199, 200]))
    got = [(dict(zip(b.names[1:], b.thresholds.tolist())), rows.tolist()) for b, rows in sets]
    # A change and its undoing: one set, whichever period its events fall in.
    assert got == [(old, [0, 2, 4, 6]), (new, [1, 3, 5])]
    one = band_sets(TenantRegistry(Settings(), TENANTS, log_changes=False), "acme", "card",
                    np.array([5, 1, 3]))
    assert [(b.names, rows.tolist()) for b, rows in one] == [(["approve", "review"], [0, 1, 2])]
