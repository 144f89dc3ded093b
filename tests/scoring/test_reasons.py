"""Reason codes through the scorer, without Kafka: flagged decisions carry the top contributions that
XGBoost's pred_contribs gives for the same row offline; approve decisions carry none."""

from __future__ import annotations

import logging

import numpy as np
import orjson

from muse_stream.config import IntentConfig, Settings, TenantConfig
from muse_stream.models.registry import ModelRegistry
from muse_stream.scoring.reasons import reasons_json, top_features
from muse_stream.scoring.scorer import BatchScorer
from muse_stream.tenants import TenantRegistry
from tests.fixtures.helpers import FEATURES, event
from tests.fixtures.reasons import offline_contributions, offline_reasons
from tests.fixtures.scoring_fakes import Msg, registry

TENANTS = {
    "acme": TenantConfig(tenant_id="acme", intents=("card",), bands={"review": 0.05, "decline": 0.9}),
    "strict": TenantConfig(tenant_id="strict", intents=("card",), bands={"review": 0.98}),
}


def _scorer(reg: ModelRegistry, intents=()) -> BatchScorer:
    return BatchScorer(TenantRegistry(Settings(), TENANTS, log_changes=False), reg, max_abs_feature=1e30,
                       max_event_bytes=10_000, intents=intents)


def _batch(n: int = 300) -> tuple[list[dict], list[Msg]]:
    evs = [event(i, "acme" if i % 3 else "strict") for i in range(n)]
    return evs, [Msg(orjson.dumps(e), i) for i, e in enumerate(evs)]


def _decisions(out) -> list[dict]:
    return [orjson.loads(v) for _, _, v in out.decisions]


def test_flagged_decisions_carry_the_offline_top_contributions_and_approve_decisions_none():
    reg = registry()
    booster = reg.get("card", 1).booster
    evs, msgs = _batch()
    out = _scorer(reg, (IntentConfig(name="card", reason_codes=2),)).process(msgs, 0)
    decisions = _decisions(out)
    assert len(decisions) == len(evs) and not out.dead
    bands = [d["band"] for d in decisions]
    assert 0 < bands.count("approve") < len(bands)  # both kinds are in the batch
    for d in decisions:
        if d["band"] == "approve":
            assert "reasons" not in d
            continue
        want = offline_reasons(booster, evs[int(d["event_id"].split("-")[1])]["features"], 2)
        assert [r["feature"] for r in d["reasons"]] == [r["feature"] for r in want]
        assert np.allclose([r["contribution"] for r in d["reasons"]], [float(r["contribution"]) for r in want],
                           rtol=1e-6, atol=1e-7)
        assert list(d) == ["event_id", "tenant_id", "intent", "score", "raw_score", "band", "reasons",
                           "model_version", "transform_version", "event_time", "decided_at", "source"]


def test_reason_codes_0_gives_no_reasons():
    _, msgs = _batch(90)
    decisions = _decisions(_scorer(registry(), (IntentConfig(name="card", reason_codes=0),)).process(msgs, 0))
    assert any(d["band"] != "approve" for d in decisions)
    assert not any("reasons" in d for d in decisions)


def test_more_reasons_than_features_gives_every_feature_and_they_add_up_to_the_margin():
    reg = registry()
    booster = reg.get("card", 1).booster
    evs, msgs = _batch(90)
    decisions = _decisions(_scorer(reg, (IntentConfig(name="card", reason_codes=20),)).process(msgs, 0))
    flagged = [d for d in decisions if d["band"] != "approve"]
    assert flagged
    for d in flagged:
        feats = evs[int(d["event_id"].split("-")[1])]["features"]
        c = [r["contribution"] for r in d["reasons"]]
        assert sorted(r["feature"] for r in d["reasons"]) == sorted(FEATURES)
        assert c == sorted(c, reverse=True)  # largest (most towards fraud) first, negatives last
        # Units: log-odds. The features' contributions plus the bias column are the margin, logit(raw_score).
        bias = float(booster.predict(_dmatrix(feats), pred_contribs=True)[0, -1])
        p = d["raw_score"]
        assert np.isclose(sum(c) + bias, np.log(p / (1 - p)), atol=1e-4)
        assert np.allclose(c, sorted(offline_contributions(booster, feats).tolist(), reverse=True), atol=1e-6)


def _dmatrix(feats: dict):
    import xgboost as xgb

    return xgb.DMatrix(np.array([[feats[f] for f in FEATURES]], dtype=np.float32), feature_names=FEATURES)


def test_an_intent_not_in_the_settings_gets_the_default_of_three():
    _, msgs = _batch(90)
    decisions = _decisions(_scorer(registry()).process(msgs, 0))
    assert {len(d["reasons"]) for d in decisions if d["band"] != "approve"} == {3}


class _NoContribs:
    """A booster stand-in that scores but has no pred_contribs."""

    def inplace_predict(self, x, validate_features=False):
        return np.full(len(x), 0.999, dtype=np.float32)


def test_a_booster_without_contributions_leaves_decisions_standing_and_warns_once(caplog):
    reg = registry()
    reg.get("card", 1).booster = _NoContribs()
    scorer = _scorer(reg)
    _, msgs = _batch(30)
    with caplog.at_level(logging.WARNING, logger="muse_stream.scoring.reasons"):
        outs = [scorer.process(msgs, 0), scorer.process(msgs, 0)]
    for out in outs:
        decisions = _decisions(out)
        assert len(decisions) == 30 and not out.dead
        assert all(d["band"] != "approve" and "reasons" not in d for d in decisions)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["card@1"]


def test_top_features_breaks_ties_by_column_order_and_writes_float32_text():
    c = np.array([[0.5, -1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    order, values = top_features(c, 3)
    assert order.tolist() == [[3, 0, 2], [0, 1, 2]]
    out = reasons_json(["a", "b", 'q"c', "d"], order, values)
    assert out[0] == (b',"reasons":[{"feature":"d","contribution":2.0},{"feature":"a","contribution":0.5},'
                      b'{"feature":"q\\"c","contribution":0.5}]')
    assert orjson.loads(b"{" + out[1][1:] + b"}")["reasons"] == [
        {"feature": f, "contribution": 0.0} for f in ("a", "b", 'q"c')]


def test_a_loaded_version_is_warmed_before_its_first_batch_and_only_once():
    """warm_loaded (run by the worker between batches) builds the reason-code tables of each newly loaded
    version, so its first flagged batch does not pay for them; an intent without reason codes builds none."""
    from muse_stream.scoring import treeshap

    reg = registry()
    model = reg.get("card", 1)
    scorer = _scorer(reg, (IntentConfig(name="card", reason_codes=3),))
    assert model.booster not in treeshap._explainers
    scorer.warm_loaded()
    ex = treeshap._explainers.get(model.booster)
    assert ex is not None and (ex.tables is not None) == (treeshap.EXT is not None)
    scorer.warm_loaded()  # nothing new: the same explainer object stays
    assert treeshap._explainers.get(model.booster) is ex
    off = registry()
    _scorer(off, (IntentConfig(name="card", reason_codes=0),)).warm_loaded()
    assert off.get("card", 1).booster not in treeshap._explainers
