"""A running worker with a model whose outputs are not probabilities: every event still gets exactly one
output (a decision, or a model_error dead letter), and the worker keeps going. Once the worker exited with
`raw scores: 10 value(s) outside [0, 1]`, and 40 of 40 events had no output."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key, dump, version_key
from muse_stream.models.registry import load_version
from tests.fixtures.boosters import hand_written_version, regression_booster
from tests.fixtures.helpers import FEATURES, TopicReader, decision_topics, event, produce
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka
N = 40


def test_a_regression_model_gets_model_error_dead_letters_and_every_event_one_output(stack):
    s = stack
    # Written by hand, as a producer of the models topic other than `publish` could: no probability check.
    rec = hand_written_version("card_fraud", 1, regression_booster())
    p = OutputProducer(producer_config(s), name="test models writer")
    p.produce(s.topics.models, dump(rec), version_key("card_fraud", 1))
    p.produce(s.topics.models, dump(ActivationRecord(intent="card_fraud", version=1, activated_at=int(time.time() * 1000),
                                                     timeline=(TimelineEntry(version=1),))), active_key("card_fraud"))
    p.flush(10)
    evs = [event(i, "acme") for i in range(N)]
    x = np.array([[e["features"][f] for f in FEATURES] for e in evs], dtype=np.float32)
    raw = np.asarray(load_version(rec).predict(x), dtype=np.float64)
    outside = {e["event_id"] for e, r in zip(evs, raw.tolist()) if not 0 <= r <= 1}
    assert 0 < len(outside) < N  # some events are scored outside [0, 1], the others inside

    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        produce(s, evs)
        reader.until(lambda r: len(r) >= N)
        records = reader.poll_for(1.0)  # a duplicate, if any, would arrive in this second
        assert w.thread.is_alive() and w.error is None  # the worker kept going
    finally:
        w.close()
        reader.close()
    assert_exactly_once(records, N)
    dead = [m for m in records if m.topic() == s.topics.deadletter]
    assert {dict(m.headers())["muse.reason"] for m in dead} == {b"model_error"}
    assert {orjson.loads(m.value())["event_id"] for m in dead} == outside
    for m in dead:
        detail = dict(m.headers())["muse.detail"].decode()
        assert detail.startswith("card_fraud@1: raw score ") and detail.endswith("is not a probability in [0, 1]")
    decisions = [orjson.loads(m.value()) for m in records if m.topic() != s.topics.deadletter]
    assert {d["event_id"] for d in decisions} == {e["event_id"] for e in evs} - outside
    assert all(0 <= d["raw_score"] <= 1 and d["model_version"] == "card_fraud@1" for d in decisions)
    assert w.worker.stats.dead_by_reason == {"model_error": len(outside)}
