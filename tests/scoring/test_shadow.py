"""Shadow versions: scored beside the active one, written only to the shadow topic, then published from it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from muse_stream.models.lifecycle import parse_duration, publish_from_shadow
from muse_stream.models.store import read_models, set_shadow
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.workers import ThreadWorker

pytestmark = pytest.mark.kafka


def test_shadow_scores_beside_the_active_version_and_publishes_from_its_window(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    publish_model(s, "card_fraud", seed=5, shift=1.5, activate=False)
    set_shadow(s, "card_fraud", 2)
    n = 6000
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3]) for i in range(n)])
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        decisions = reader.until(lambda r: len(r) >= n)
        card = {orjson.loads(m.value())["event_id"]: orjson.loads(m.value()) for m in decisions
                if orjson.loads(m.value())["intent"] == "card_fraud"}
        shadow_reader = TopicReader(s, [s.topics.shadow_topic("card_fraud")])
        shadow = shadow_reader.until(lambda r: len(r) >= len(card))
        shadow_reader.poll_for(1.0)
        shadow_reader.close()
    finally:
        w.close()
        reader.close()
    # Tenants see only the active version; the shadow's records are on the shadow topic, one per event.
    assert {orjson.loads(m.value())["model_version"] for m in decisions} == {"card_fraud@1", "account_takeover@1"}
    recs = [orjson.loads(m.value()) for m in shadow]
    assert len(recs) == len(card) == len({r["event_id"] for r in recs})
    for r in recs:
        d = card[r["event_id"]]
        assert r["shadow_version"] == "card_fraud@2" and r["incumbent_version"] == "card_fraud@1"
        assert r["incumbent_score"] == d["score"] and r["tenant_id"] == d["tenant_id"]
    raw = np.array([r["shadow_raw"] for r in recs])
    inc = np.array([r["incumbent_score"] for r in recs])
    assert np.mean(raw >= 0.9) > 2 * np.mean(inc >= 0.9)  # the shadow's raw scale is not the incumbent's
    rep = publish_from_shadow(s, intent="card_fraud", version=2, window_ms=parse_duration("10m"),
                              min_tenant_events=1000, activate=True,
                              # acme's review band alerts ~0.4% of the reference: 50 events above it would take a
                              # window of ~13,000 card events (issue 14); globex's band fits this 4,000-event one.
                              tenants=[t for t in s.tenants if t.tenant_id == "globex"])
    reg = read_models(s)
    assert rep.record.version == 3 and reg.active_version("card_fraud") == 3
    assert reg.versions[("card_fraud", 3)].booster_sha256 == reg.versions[("card_fraud", 2)].booster_sha256
    for r in rep.rows:
        assert abs(r.new - r.incumbent) <= max(0.1 * r.incumbent, 0.002), r


def test_parse_duration():
    assert parse_duration("90s") == 90_000 and parse_duration("2h") == 7_200_000 and parse_duration("15") == 15
    with pytest.raises(Exception, match="duration"):
        parse_duration("soon")
