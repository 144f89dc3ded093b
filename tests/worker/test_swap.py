"""Model swaps in a running worker: immediate, by event time (activate_at), and a refused corrupt version."""

from __future__ import annotations

import base64
import time
from collections import defaultdict

import orjson
import pytest

from muse_stream.kafka.clients import producer_config
from muse_stream.kafka.producer import OutputProducer
from muse_stream.models.records import ActivationRecord, TimelineEntry, active_key, dump, version_key
from muse_stream.models.store import activate, read_models
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model
from tests.fixtures.workers import ThreadWorker

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000


@pytest.fixture
def stack(stack):
    return stack.with_overrides(batch={"max_events": 100})


def _decisions(recs):
    return [orjson.loads(m.value()) | {"_p": m.partition(), "_o": m.offset()} for m in recs]


def _versions_never_go_back(decisions):
    by_part = defaultdict(list)
    for d in decisions:
        by_part[(d["source"]["topic"], d["source"]["partition"])].append(d)
    for rows in by_part.values():
        rows.sort(key=lambda d: d["source"]["offset"])
        versions = [int(d["model_version"].split("@")[1]) for d in rows]
        assert versions == sorted(versions), "a partition went back to an older version"


def test_immediate_swap_mid_stream_and_activate_at(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        produce(s, [event(i, "acme", t0=T0) for i in range(3000)])
        reader.until(lambda r: len(r) >= 1000)
        v2 = publish_model(s, "card_fraud", seed=3, shift=1.0)  # immediate activation
        produce(s, [event(i, "acme", t0=T0) for i in range(3000, 6000)])
        reader.until(lambda r: len(r) >= 6000)
        # v3 from event time T0 + 9000: earlier events stay with v2, later ones go to v3.
        publish_model(s, "card_fraud", seed=4, shift=-1.0, activate=False, activate_at=T0 + 9000)
        time.sleep(1.0)
        produce(s, [event(i, "acme", t0=T0) for i in range(6000, 12000)])
        recs = reader.until(lambda r: len(r) >= 12000)
    finally:
        w.close()
        reader.close()
    ds = _decisions(recs)
    assert len({d["event_id"] for d in ds}) == 12000 == len(ds)
    assert v2.version == 2
    first = [d for d in ds if int(d["event_id"][2:]) < 1000]
    assert {d["model_version"] for d in first} == {"card_fraud@1"}
    late = [d for d in ds if int(d["event_id"][2:]) >= 6000]
    for d in late:
        want = "card_fraud@3" if d["event_time"] >= T0 + 9000 else "card_fraud@2"
        assert d["model_version"] == want, d
    _versions_never_go_back(ds)
    # Every decision names the version and transform that made it.
    assert all(d["transform_version"].startswith(d["model_version"]) for d in ds)


def test_corrupt_version_is_refused_and_the_old_one_keeps_scoring(stack):
    s = stack
    good = publish_model(s, "card_fraud", seed=1)
    bad = good.model_copy(update={"version": 2, "booster_b64": base64.b64encode(b"not a booster").decode()})
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        produce(s, [event(i, "acme") for i in range(500)])
        reader.until(lambda r: len(r) >= 500)
        p = OutputProducer(producer_config(s))
        p.produce(s.topics.models, dump(bad), version_key("card_fraud", 2))
        act = ActivationRecord(intent="card_fraud", version=2, previous=1, activated_at=int(time.time() * 1000),
                               timeline=(TimelineEntry(version=2),))
        p.produce(s.topics.models, dump(act), active_key("card_fraud"))
        p.produce(s.topics.models, b"{garbage", b"version/card_fraud/3")
        p.flush(10)
        time.sleep(1.0)
        produce(s, [event(i, "acme") for i in range(500, 1000)])
        recs = reader.until(lambda r: len(r) >= 1000)
    finally:
        w.close()
        reader.close()
    assert {orjson.loads(m.value())["model_version"] for m in recs} == {"card_fraud@1"}
    assert ("card_fraud", 2) in w.worker.models.refused
    assert "checksum" in w.worker.models.refused[("card_fraud", 2)]
    assert w.worker.models.active_version("card_fraud") == 1


def test_activate_and_rollback_through_the_store(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "card_fraud", seed=2, activate=False)
    assert read_models(s).active_version("card_fraud") == 1
    activate(s, "card_fraud", 2)
    assert read_models(s).active_version("card_fraud") == 2
    from muse_stream.models.store import rollback

    rollback(s, "card_fraud")
    reg = read_models(s)
    assert reg.active_version("card_fraud") == 1
    # The reference is the first one and is never moved by later publishes.
    assert reg.references["card_fraud"].source == "card_fraud@1"
    from muse_stream.errors import ModelError

    with pytest.raises(ModelError, match="not on the models topic"):
        activate(s, "card_fraud", 9)


def test_tenant_changes_apply_between_batches(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        produce(s, [event(i, "acme") for i in range(300)])
        reader.until(lambda r: len(r) >= 300)
        from muse_stream.config import TenantConfig
        from muse_stream.tenants import put_tenants

        put_tenants(s, [TenantConfig(tenant_id="acme", intents=("card_fraud",), bands={"all": 0.0}),
                        TenantConfig(tenant_id="newco", intents=("card_fraud",), bands={"review": 0.5}),
                        TenantConfig(tenant_id="globex", intents=("card_fraud",), suspended=True)])
        time.sleep(1.5)
        produce(s, [event(i, ["acme", "newco", "globex"][i % 3]) for i in range(300, 600)])
        reader2 = TopicReader(s, [s.topics.decisions_topic("newco")])
        newco = reader2.until(lambda r: len(r) >= 100)
        reader2.close()
        recs = reader.until(lambda r: len(r) >= 500)
    finally:
        w.close()
        reader.close()
    after = [orjson.loads(m.value()) for m in recs if m.topic() != s.topics.deadletter
             and int(orjson.loads(m.value())["event_id"][2:]) >= 300]
    assert after and all(d["band"] == "all" for d in after if d["tenant_id"] == "acme")
    dead = [m for m in recs if m.topic() == s.topics.deadletter]
    assert len(dead) == 100 and all(dict(m.headers())["muse.reason"] == b"tenant_suspended" for m in dead)
    assert len(newco) == 100
