"""A real worker on the real broker with each unknown_features policy: reject dead-letters an event carrying a
field its version does not know (unknown_feature, naming the field) and writes no decision for it; ignore
scores it and counts the field. Missing values are counted per (tenant, feature)."""

from __future__ import annotations

import orjson
import pytest

from muse_stream.config import Settings
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka


def test_reject_dead_letters_naming_the_field_and_ignore_scores_and_counts_it(stack):
    s = Settings.model_validate({**stack.model_dump(), "intents": [
        {"name": "card_fraud", "unknown_features": "ignore"}, {"name": "account_takeover"}]})  # reject: default
    publish_model(s, "card_fraud")
    publish_model(s, "account_takeover", seed=3)
    acme = [event(i, "acme") for i in range(10)]  # card_fraud: ignore
    initech = [event(100 + i, "initech") for i in range(10)]  # account_takeover: reject
    for ev in acme[:4] + initech[:3]:
        ev["features"]["Colour"] = 3
    acme[5]["features"]["f1"] = None  # a null model feature: a missing value
    del acme[6]["features"]["f1"]  # an absent one: also a missing value
    n = len(acme) + len(initech)

    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        produce(s, acme + initech)
        records = reader.until(lambda r: len(r) >= n)
        records = reader.poll_for(0.5)
        hub = w.worker.telemetry.hub
        missing, ignored = dict(hub.feature_missing.values), dict(hub.unknown_features_ignored.values)
    finally:
        w.close()
        reader.close()
    assert_exactly_once(records, n)
    dead = [m for m in records if m.topic() == s.topics.deadletter]
    assert sorted(orjson.loads(m.value())["event_id"] for m in dead) == sorted(e["event_id"] for e in initech[:3])
    for m in dead:
        h = dict(m.headers())
        assert h["muse.reason"] == b"unknown_feature"
        assert b"'Colour'" in h["muse.detail"] and b"account_takeover" in h["muse.detail"]
    decided = {orjson.loads(m.value())["event_id"] for m in records if m.topic() != s.topics.deadletter}
    assert decided == {e["event_id"] for e in acme + initech[3:]}  # the ignored field's events were scored
    assert ignored == {("card_fraud", "Colour"): 4}
    assert missing == {("acme", "card_fraud", "f1"): 2}
