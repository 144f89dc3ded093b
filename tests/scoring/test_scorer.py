"""The batch scorer without Kafka: decisions byte for byte, routing, and every dead-letter reason."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from muse_stream.config import Settings, TenantConfig
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import Bands, TenantRegistry
from tests.fixtures.helpers import FEATURES
from tests.fixtures.reasons import offline_reasons
from tests.fixtures.scoring_fakes import Msg, registry


def _registry(timeline=((1, None),)) -> ModelRegistry:
    return registry({"card": timeline})


TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",), bands={"review": 0.5, "decline": 0.9}),
    "zed": TenantConfig(tenant_id="zed", intents=("card", "other"), bands={"all": 0.0}),
    "off": TenantConfig(tenant_id="off", intents=("card",), suspended=True),
}


def _scorer(reg: ModelRegistry) -> BatchScorer:
    return BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                       max_event_bytes=10_000)


def _event(eid: str, tenant: str = "acme", t: int = 5, **extra) -> dict:
    rng = np.random.default_rng(abs(hash(eid)) % 2**32)
    return {"event_id": eid, "tenant_id": tenant, "event_time": t,
            "features": {f: float(v) for f, v in zip(FEATURES, rng.normal(size=5))}, **extra}


def test_decisions_are_exactly_the_documented_json():
    reg = _registry()
    tricky = ['plain', 'quote"d', 'back\\slash', 'uni-é-✓', '},{"event_id":"x', 'ctl\n\t']
    msgs = [Msg(orjson.dumps(_event(e, "acme") if i % 2 else _event(e, "zed", intent="card")), i)
            for i, e in enumerate(tricky)]
    out = _scorer(reg).process(msgs, 1234)
    assert not out.dead and len(out.decisions) == len(tricky)
    model = reg.get("card", 1)
    for topic, key, value in out.decisions:
        d = orjson.loads(value)
        m = msgs[d["source"]["offset"]]
        ev = orjson.loads(m.value())
        raw = float(model.predict(np.array([[ev["features"][f] for f in FEATURES]], dtype=np.float32))[0])
        score = float(model.transform.apply(np.array([raw]))[0])
        bands = TENANTS[ev["tenant_id"]].bands
        reached = [b for b, thr in bands.items() if score >= thr]
        band = max(reached, key=bands.get) if reached else "approve"
        expected = {
            "event_id": ev["event_id"], "tenant_id": ev["tenant_id"], "intent": "card", "score": score,
            "raw_score": raw, "band": band,
            "model_version": "card@1", "transform_version": "card@1", "event_time": 5, "decided_at": 1234,
            "source": {"topic": "in", "partition": 0, "offset": m.offset(), "timestamp": m.timestamp()[1]}}
        if band != "approve":  # the top 3 contributions (IntentConfig's default), right after the band
            # The same features in the same order as XGBoost's pred_contribs, each contribution within float32
            # rounding of it (the compiled TreeSHAP tables sum in another order); then the bytes as written.
            offline = offline_reasons(model.booster, ev["features"], 3)
            assert [r["feature"] for r in d["reasons"]] == [r["feature"] for r in offline]
            assert [r["contribution"] for r in d["reasons"]] == pytest.approx(
                [float(r["contribution"]) for r in offline], rel=1e-5, abs=1e-6)
            items = list(expected.items())
            expected = dict(items[:6] + [("reasons", d["reasons"])] + items[6:])
        assert value == orjson.dumps(expected, option=orjson.OPT_SERIALIZE_NUMPY)  # byte for byte
        assert key == ev["event_id"].encode() and topic == f"muse.decisions.{ev['tenant_id']}"


def test_activate_at_splits_a_batch_by_event_time():
    reg = _registry(timeline=((1, None), (2, 100)))
    msgs = [Msg(orjson.dumps(_event(f"e{t}", t=t)), i) for i, t in enumerate([10, 99, 100, 250, 50])]
    out = _scorer(reg).process(msgs, 0)
    got = {orjson.loads(v)["event_id"]: orjson.loads(v)["model_version"] for _, _, v in out.decisions}
    assert got == {"e10": "card@1", "e99": "card@1", "e100": "card@2", "e250": "card@2", "e50": "card@1"}


@pytest.mark.parametrize("raw, reason", [
    (b"", "malformed_json"),
    (b"{oops", "malformed_json"),
    (b'"a string"', "not_an_object"),
    (b"[1]", "not_an_object"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1}', "missing_field"),
    (b'{"event_id": null, "tenant_id": "acme", "event_time": 1, "features": {}}', "missing_field"),
    (b'{"event_id": 7, "tenant_id": "acme", "event_time": 1, "features": {}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1.5, "features": {}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": true, "features": {}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": -1, "features": {}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 9223372036854775807, "features": {}}',
     "value_too_large"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": "1.5"}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": true}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": [1, 2]}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "intent": 3, "event_time": 1, "features": {}}', "wrong_type"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": 1e300}}', "value_too_large"),
    (b'{"event_id": "x", "tenant_id": "who", "event_time": 1, "features": {}}', "unknown_tenant"),
    (b'{"event_id": "x", "tenant_id": "off", "event_time": 1, "features": {}}', "tenant_suspended"),
    (b'{"event_id": "x", "tenant_id": "zed", "event_time": 1, "features": {}}', "missing_field"),
    (b'{"event_id": "x", "tenant_id": "acme", "intent": "other", "event_time": 1, "features": {}}',
     "intent_not_allowed"),
    (b'{"event_id": "x", "tenant_id": "zed", "intent": "other", "event_time": 1, "features": {}}',
     "no_active_model"),
    (b"{" + b'"pad": "' + b"x" * 10_000 + b'"}', "event_too_large"),
])
def test_each_bad_input_is_dead_lettered_with_its_reason_and_neighbours_scored(raw, reason):
    msgs = [Msg(orjson.dumps(_event("before")), 0), Msg(raw, 1), Msg(orjson.dumps(_event("after")), 2)]
    out = _scorer(_registry()).process(msgs, 0)
    assert [(d.msg.offset(), d.reason.value) for d in out.dead] == [(1, reason)]
    assert sorted(orjson.loads(v)["event_id"] for _, _, v in out.decisions) == ["after", "before"]


def test_missing_and_null_features_are_missing_values():
    ev = _event("n")
    del ev["features"]["f0"]
    ev["features"]["f1"] = None
    out = _scorer(_registry()).process([Msg(orjson.dumps(ev), 0)], 0)
    assert not out.dead and len(out.decisions) == 1
    assert np.isnan(out.matrices[0].x[0, 0]) and np.isnan(out.matrices[0].x[0, 1])


class _BandChangeAt50(TenantRegistry):
    """acme's bands change at event time 50 within the batch: earlier events get bands of their own."""

    EARLY = Bands({"early": 0.0})

    def band_groups(self, tenant_id, intent, event_times):
        if tenant_id != "acme":
            return super().band_groups(tenant_id, intent, event_times)
        early = np.flatnonzero(event_times < 50)
        later = super().band_groups("acme", intent, np.array([50]))[0][0]
        return [(self.EARLY, early), (later, np.flatnonzero(event_times >= 50))]


def test_tenant_maps_and_bands_changing_within_a_batch():
    reg = registry({"card": ((1, None),)}, calibration_tenants=["acme", "zed", "zed", "zed"])
    model = reg.get("card", 1)
    assert model.transform.tenant_ids == ("zed",)  # acme has too few calibration rows for its own map
    times = [10, 60, 20, 70, 30, 80, 90, 40]
    evs = [_event(f"e{i}", ["acme", "zed"][i % 3 == 2], t=t, intent="card") for i, t in enumerate(times)]
    scorer = BatchScorer(_BandChangeAt50(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                         max_event_bytes=10_000)
    out = scorer.process([Msg(orjson.dumps(e), i) for i, e in enumerate(evs)], 0)
    assert not out.dead and len(out.decisions) == len(evs)
    for _, _, value in out.decisions:
        d = orjson.loads(value)
        ev = evs[d["source"]["offset"]]
        tid = ev["tenant_id"]
        raw = model.predict(np.array([[ev["features"][f] for f in FEATURES]], dtype=np.float32))
        score = float(model.transform.apply(np.asarray(raw, dtype=np.float64), tid)[0])
        assert d["score"] == score and d["transform_version"] == ("card@1/zed" if tid == "zed" else "card@1")
        if tid == "acme" and ev["event_time"] < 50:
            assert d["band"] == "early"
        else:
            bands = TENANTS[tid].bands
            reached = [b for b, thr in bands.items() if score >= thr]
            assert d["band"] == (max(reached, key=bands.get) if reached else "approve")
    groups = [(g.tenant_id, tuple(g.band_names), sorted(g.event_times.tolist())) for g in out.groups]
    assert sorted(groups) == [("acme", ("approve", "early"), [10, 30, 40]),
                              ("acme", ("approve", "review", "decline"), [60, 70, 90]),
                              ("zed", ("approve", "all"), [20, 80])]
    assert out.scored == {("acme", "card", "card@1"): 6, ("zed", "card", "card@1"): 2}
