"""Live, backtest and replay agree record for record.

One randomly generated mix of events (every dead-letter kind included) goes through a live worker; in the
middle of the range a tenant's bands change and a new version is activated immediately. Then the backtest
must score exactly the events live scored (and count live's dead letters by reason), and a replay must give
every event the decision live gave it, on every field except decided_at.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import orjson
import pytest

from muse_stream.analysis.backtest import read_range_events, run_backtest
from muse_stream.analysis.replay import run_replay
from muse_stream.config import TenantConfig
from muse_stream.kafka.ranges import Bound
from muse_stream.models.store import read_models
from muse_stream.tenants import put_tenants, read_tenants
from tests.fixtures.helpers import FEATURES, TopicReader, decision_topics, produce, publish_model, source_of
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka
MAX_EVENT_BYTES = 4096


def _valid(rng, i: int, t: int) -> dict:
    tenant, intent = [("acme", None), ("globex", None), ("globex", "account_takeover"), ("initech", None),
                      ("acme", "card_fraud")][rng.integers(5)]
    feats = {f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)) * 2)}
    if rng.random() < 0.1:
        feats[FEATURES[int(rng.integers(len(FEATURES)))]] = None  # a missing value
    if rng.random() < 0.05:
        feats.pop(FEATURES[int(rng.integers(len(FEATURES)))])  # a missing feature
    ev = {"event_id": f"e-{i}", "tenant_id": tenant, "event_time": t, "features": feats}
    if intent:
        ev["intent"] = intent
    return ev


def _bad(rng, i: int, t: int):
    """One event of each dead-letter kind, in turn."""
    base = _valid(rng, i, t)
    kind = i % 11
    if kind == 0:
        return b'{"event_id": "broken'
    if kind == 1:
        return b"[1, 2, 3]"
    if kind == 2:
        base.pop("event_time")
    elif kind == 3:
        base["features"]["f0"] = "12.5"
    elif kind == 4:
        base["features"]["f1"] = True
    elif kind == 5:
        base["pad"] = "x" * MAX_EVENT_BYTES
    elif kind == 6:
        base["features"]["f2"] = 1e300
    elif kind == 7:
        base["tenant_id"] = "umbrella"
    elif kind == 8:
        base["tenant_id"] = "hooli"
        base.pop("intent", None)
    elif kind == 9:
        base["tenant_id"], base["intent"] = "acme", "account_takeover"
    else:
        base["tenant_id"] = "wayne"  # pinned to a version that does not exist
        base.pop("intent", None)
    return base


def _mix(seed: int, n: int, t0: int, start_id: int) -> list:
    rng = np.random.default_rng(seed)
    return [(_bad(rng, start_id + i, t0 + i) if rng.random() < 0.15 else _valid(rng, start_id + i, t0 + i))
            for i in range(n)]


def _decision(m) -> dict:
    d = orjson.loads(m.value())
    d.pop("decided_at")
    return d


def test_live_backtest_and_replay_agree_across_a_band_change_and_an_immediate_activation(stack, unique):
    s = stack.with_overrides(runtime={"max_event_bytes": MAX_EVENT_BYTES, "change_lead_ms": 5000})
    put_tenants(s, [TenantConfig(tenant_id="hooli", intents=["card_fraud"], bands={"review": 0.5}, suspended=True),
                    TenantConfig(tenant_id="wayne", intents=["account_takeover"], bands={"review": 0.5},
                                 pinned_versions={"account_takeover": 99})])
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    t0 = 1_700_000_000_000
    first, second = _mix(11, 700, t0, 0), _mix(12, 700, t0 + 10_000_000, 700)
    produce(s, first)
    outputs = decision_topics(s) + [s.topics.deadletter]
    w = ThreadWorker(s)
    reader = TopicReader(s, outputs)
    try:
        reader.until(lambda r: len(r) >= len(first), timeout=90)
        # The changes, in the middle of the range: both take effect at the input's event-time watermark.
        put_tenants(s, [TenantConfig(tenant_id="acme", intents=["card_fraud"], bands={"review": 0.3, "decline": 0.6})])
        publish_model(s, "card_fraud", seed=3, shift=0.5)
        deadline = time.monotonic() + 30
        while (w.worker.models.active_version("card_fraud") != 2 or w.worker.tenants.tenants["acme"].bands
               != {"review": 0.3, "decline": 0.6}):
            assert time.monotonic() < deadline, "the worker never read the changes"
            time.sleep(0.05)
        produce(s, second)
        live = reader.until(lambda r: len(r) >= len(first) + len(second), timeout=90)
        reader.poll_for(1.0)
    finally:
        w.close()
        reader.close()
    n = len(first) + len(second)
    assert_exactly_once(live, n)
    live_dec = {source_of(m): _decision(m) for m in live if m.topic() != s.topics.deadletter}
    live_dead = {source_of(m): dict(m.headers())["muse.reason"].decode() for m in live
                 if m.topic() == s.topics.deadletter}
    assert set(live_dead.values()) >= {"malformed_json", "not_an_object", "missing_field", "wrong_type",
                                       "event_too_large", "value_too_large", "unknown_tenant", "tenant_suspended",
                                       "intent_not_allowed", "no_active_model"}
    # both versions and both band sets were used live, or the test proves nothing about history
    assert {d["model_version"] for d in live_dec.values() if d["intent"] == "card_fraud"} == {
        "card_fraud@1", "card_fraud@2"}
    assert "decline" in {d["band"] for d in live_dec.values() if d["tenant_id"] == "acme"}

    # Backtest: the events it scores per intent are exactly live's decisions, its dead letters live's.
    reg = read_models(s, load=True)
    tenants = read_tenants(s)
    for intent in ("card_fraud", "account_takeover"):
        ev = read_range_events(s, intent, Bound("start"), Bound("end"), tenants, reg)
        assert sorted(ev.event_ids) == sorted(d["event_id"] for d in live_dec.values() if d["intent"] == intent)
        assert ev.dead_letters == dict(Counter(live_dead.values()))
        res = run_backtest(s, intent=intent, candidate=f"{intent}@1", start=Bound("start"), end=Bound("end"))
        assert res["events"] == len(ev.event_ids)
        live_scores = sorted(d["score"] for d in live_dec.values() if d["intent"] == intent)
        assert np.allclose(np.sort(res["_arrays"]["incumbent"]), live_scores, rtol=0, atol=1e-12)

    # Replay: every event gets the same output as live, every field but decided_at.
    result = run_replay(s, start=Bound("start"), end=Bound("end"), run_id=f"r{unique}")
    reader = TopicReader(s, result.topics)
    try:
        replayed = reader.until(lambda r: len(r) >= n, timeout=90)
        reader.poll_for(1.0)
    finally:
        reader.close()
    assert_exactly_once(replayed, n)
    dead_topic = result.topics[-1]
    rep_dec = {source_of(m): _decision(m) for m in replayed if m.topic() != dead_topic}
    rep_dead = {source_of(m): dict(m.headers())["muse.reason"].decode() for m in replayed if m.topic() == dead_topic}
    assert rep_dead == live_dead
    assert rep_dec.keys() == live_dec.keys()
    differ = [k for k in live_dec if rep_dec[k] != live_dec[k]]
    assert not differ, f"{len(differ)} decisions differ, e.g. live {live_dec[differ[0]]} replay {rep_dec[differ[0]]}"
