"""Reason codes through a real worker on the real broker: per intent, as the settings say, equal to what
XGBoost's pred_contribs gives offline for the same events."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from muse_stream.config import Settings
from muse_stream.models.registry import load_version
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.reasons import offline_reasons
from tests.fixtures.workers import ThreadWorker

pytestmark = pytest.mark.kafka
N = 120


def test_a_worker_writes_each_intents_reason_codes_and_none_on_approve(stack):
    s = Settings.model_validate({**stack.model_dump(), "intents": [{"name": "card_fraud", "reason_codes": 2},
                                                                   {"name": "account_takeover", "reason_codes": 0}]})
    boosters = {i: load_version(publish_model(s, i, seed=k)).booster
                for k, i in enumerate(("card_fraud", "account_takeover"), start=1)}
    evs = [event(i, ("acme", "globex", "initech")[i % 3]) for i in range(N)]
    by_id = {e["event_id"]: e for e in evs}
    produce(s, evs)
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        decisions = [orjson.loads(m.value()) for m in reader.until(lambda r: len(r) >= N)]
    finally:
        w.close()
        reader.close()
    assert len(decisions) == N
    flagged = {i: [d for d in decisions if d["intent"] == i and d["band"] != "approve"] for i in boosters}
    assert flagged["card_fraud"] and flagged["account_takeover"]  # both intents have flagged decisions
    assert any(d["band"] == "approve" for d in decisions)
    assert not any("reasons" in d for d in decisions if d["band"] == "approve")
    assert not any("reasons" in d for d in flagged["account_takeover"])  # reason_codes = 0
    for d in flagged["card_fraud"]:
        want = offline_reasons(boosters["card_fraud"], by_id[d["event_id"]]["features"], 2)
        assert [r["feature"] for r in d["reasons"]] == [r["feature"] for r in want]
        assert np.allclose([r["contribution"] for r in d["reasons"]], [float(r["contribution"]) for r in want],
                           rtol=1e-6, atol=1e-7)
