"""A model that misbehaves costs model_error dead letters, never the worker: the scorer without Kafka."""

from __future__ import annotations

import numpy as np
import orjson

from muse_stream.config import Settings, TenantConfig
from muse_stream.models.records import (
    ActivationRecord,
    ShadowRecord,
    TimelineEntry,
    active_key,
    dump,
    shadow_key,
    version_key,
)
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.scoring.shadow import ShadowScorer
from muse_stream.tenants import TenantRegistry
from muse_stream.worker.runtime import WorkerStats
from tests.fixtures.boosters import hand_written_version, linear_booster, regression_booster
from tests.fixtures.helpers import FEATURES, event, train_booster
from tests.fixtures.scoring_fakes import Msg

TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",), bands={"review": 0.5, "decline": 0.9}),
    "zed": TenantConfig(tenant_id="zed", intents=("card", "other"), bands={"all": 0.0}),
}


def _registry(boosters: dict) -> ModelRegistry:
    """Each intent's version 1, written by hand (no publish check) and active."""
    reg = ModelRegistry()
    for intent, booster in boosters.items():
        reg.apply(version_key(intent, 1), dump(hand_written_version(intent, 1, booster)))
        reg.apply(active_key(intent), dump(ActivationRecord(intent=intent, version=1, activated_at=0,
                                                            timeline=(TimelineEntry(version=1),))))
    return reg


def _scorer(reg: ModelRegistry) -> BatchScorer:
    return BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                       max_event_bytes=10_000)


def _msgs(evs: list[dict]) -> list[Msg]:
    return [Msg(orjson.dumps(e), i) for i, e in enumerate(evs)]


class _Outputs:
    """A booster stand-in that gives fixed raw scores: the edge values a real booster rarely gives."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32)

    def inplace_predict(self, x, validate_features=False):
        return self.values[: len(x)]


def test_rows_a_regression_booster_scores_outside_0_1_are_model_errors_the_rest_decisions():
    reg = _registry({"card": regression_booster()})
    evs = [event(i, "acme") for i in range(200)]
    x = np.array([[e["features"][f] for f in FEATURES] for e in evs], dtype=np.float32)
    raw = np.asarray(reg.get("card", 1).predict(x), dtype=np.float64)
    outside = set(np.flatnonzero((raw < 0) | (raw > 1)).tolist())
    assert 0 < len(outside) < len(evs)  # the case: some rows leave [0, 1], not all

    out = _scorer(reg).process(_msgs(evs), 1234)

    assert {d.msg.offset() for d in out.dead} == outside
    assert {d.reason.value for d in out.dead} == {"model_error"}
    for d in out.dead:
        # The detail names the version and the raw value, so an operator can tell what the model did.
        assert d.detail == f"card@1: raw score {float(raw[d.msg.offset()])!r} is not a probability in [0, 1]"
    decided = {orjson.loads(v)["source"]["offset"] for _, _, v in out.decisions}
    assert decided == set(range(len(evs))) - outside
    assert all(0.0 <= orjson.loads(v)["raw_score"] <= 1.0 for _, _, v in out.decisions)
    # Counted as every other reason is.
    stats = WorkerStats()
    stats.add(out)
    assert stats.dead_by_reason == {"model_error": len(outside)}
    assert out.scored == {("acme", "card", "card@1"): len(evs) - len(outside)}
    # The good rows' decisions are byte for byte what a batch of only those rows gives.
    good = [m for m in _msgs(evs) if m.offset() not in outside]
    alone = _scorer(reg).process(good, 1234)
    assert not alone.dead and alone.decisions == out.decisions
    # Shadow scoring re-scores the scored rows only.
    assert out.matrices[0].x.shape == (len(good), len(FEATURES)) and out.matrices[0].event_ids == [
        evs[m.offset()]["event_id"] for m in good]


def test_nan_and_infinite_raw_scores_are_model_errors_and_0_and_1_are_probabilities():
    reg = _registry({"card": train_booster(1)})
    values = [0.0, 1.0, np.nan, np.inf, -np.inf, -1e-7, 1.0000001, 0.5]
    reg.get("card", 1).booster = _Outputs(values)
    out = _scorer(reg).process(_msgs([event(i, "acme") for i in range(len(values))]), 0)
    assert sorted(d.msg.offset() for d in out.dead) == [2, 3, 4, 5, 6]
    assert "raw score nan " in out.dead[0].detail and "raw score inf " in out.dead[1].detail
    raws = {orjson.loads(v)["source"]["offset"]: orjson.loads(v)["raw_score"] for _, _, v in out.decisions}
    assert raws == {0: 0.0, 1: 1.0, 7: 0.5}


def test_a_booster_whose_predict_raises_dead_letters_its_group_and_other_intents_are_scored():
    reg = _registry({"card": train_booster(1), "other": linear_booster()})  # gblinear: inplace_predict raises
    evs = [event(i, "zed", intent=["card", "other"][i % 2]) for i in range(40)]
    out = _scorer(reg).process(_msgs(evs), 0)
    assert sorted(d.msg.offset() for d in out.dead) == list(range(1, 40, 2))
    assert {d.reason.value for d in out.dead} == {"model_error"}
    detail = out.dead[0].detail
    assert detail.startswith("other@1: predict failed: XGBoostError: ") and "\n" not in detail
    assert "Inplace predict is not supported" in detail
    assert sorted(orjson.loads(v)["source"]["offset"] for _, _, v in out.decisions) == list(range(0, 40, 2))
    assert out.scored == {("zed", "card", "card@1"): 20}
    assert [m.intent for m in out.matrices] == ["card"]


def test_a_shadow_whose_predict_raises_leaves_live_scoring_alone():
    reg = _registry({"card": train_booster(1)})
    reg.apply(version_key("card", 2), dump(hand_written_version("card", 2, linear_booster())))
    reg.apply(shadow_key("card"), dump(ShadowRecord(intent="card", version=2, set_at=0)))
    out = _scorer(reg).process(_msgs([event(i, "acme") for i in range(10)]), 0)
    assert len(out.decisions) == 10 and not out.dead
    shadow = ShadowScorer(Settings(), reg)
    assert shadow.active() == {"card": 2}
    assert shadow.records(out) == []
