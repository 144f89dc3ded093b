"""A decision topic that refuses every decision (here: max.message.bytes below a decision's size) stops nothing
but its own tenant: that tenant's events become output_refused dead letters, every other tenant's decisions
flow, each input has exactly one output, and the worker keeps running (it used to abort every transaction on
the shared partitions until it gave up)."""

from __future__ import annotations

import orjson
import pytest

from muse_stream.config import TenantConfig
from muse_stream.kafka.topics import TopicSpec, create_topics
from muse_stream.tenants import put_tenants
from muse_stream.worker.refusals import RefusedOutputs
from tests.fixtures.helpers import TopicReader, event, produce, publish_model, source_of
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000


def test_a_tenant_whose_topic_refuses_decisions_gets_dead_letters_and_stops_no_one_else(stack, unique):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    small = f"small.{unique}"
    create_topics(s, [TopicSpec(small, 2, {"max.message.bytes": "200"})], replication_factor=1)
    put_tenants(s, [TenantConfig(tenant_id="globex", intents=("card_fraud",), bands={"review": 0.9},
                                 output_topic=small)])
    acme = s.topics.decisions_topic("acme")
    w = ThreadWorker(s, configure=lambda wk: setattr(wk, "refused", RefusedOutputs(for_s=3.0)))
    reader = TopicReader(s, [acme, small, s.topics.deadletter])
    try:
        n = 200
        produce(s, [event(i, "acme" if i % 2 else "globex", t0=T0) for i in range(n)])
        reader.until(lambda r: len(r) >= n, timeout=90)
        # Past the refusal's window: the topic is tried again, refuses again, and is diverted again.
        reader.poll_for(4.0)
        produce(s, [event(i, "acme" if i % 2 else "globex", t0=T0) for i in range(n, 2 * n)])
        recs = reader.until(lambda r: len(r) >= 2 * n, timeout=90)
        reader.poll_for(2.0)  # anything more would be a second output
    finally:
        w.close()  # raises if the worker ended with an error
        reader.close()
    assert_exactly_once(recs, 2 * n)
    assert not [m for m in recs if m.topic() == small]
    dead = [m for m in recs if m.topic() == s.topics.deadletter]
    decided = [orjson.loads(m.value()) for m in recs if m.topic() == acme]
    assert {d["tenant_id"] for d in decided} == {"acme"} and len(decided) == n
    assert len(dead) == n
    for m in dead:
        h = dict(m.headers())
        assert h["muse.reason"] == b"output_refused" and small.encode() in h["muse.detail"], h
        assert orjson.loads(m.value())["tenant_id"] == "globex"
    assert w.worker.stats.dead_by_reason.get("output_refused") == n
    assert {source_of(m)[1] for m in dead} == {source_of(m)[1] for m in recs}  # on the shared partitions
