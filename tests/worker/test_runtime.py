"""The scoring runtime against the real broker: routing, bands, dead letters, swaps, crashes, hand-overs."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter

import orjson
import pytest

from muse_stream.worker.exits import FENCED_EXIT
from muse_stream.worker.supervisor import _child
from tests.fixtures.helpers import TopicReader, decision_topics, event, produce, publish_model, source_of
from tests.fixtures.workers import ThreadWorker, assert_exactly_once

pytestmark = pytest.mark.kafka


def _bands_ok(d: dict, bands: dict) -> bool:
    reached = [name for name, thr in bands.items() if d["score"] >= thr]
    want = max(reached, key=lambda n: bands[n]) if reached else "approve"
    return d["band"] == want


def test_routes_three_tenants_two_intents_with_bands(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    evs = []
    for i in range(600):
        tenant, intent = [("acme", None), ("globex", "card_fraud"), ("globex", "account_takeover"),
                          ("initech", None)][i % 4]
        evs.append(event(i, tenant, intent=intent))
    produce(s, evs)
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        recs = reader.until(lambda r: len(r) >= 600)
    finally:
        w.close()
        reader.poll_for(1.0)
        reader.close()
    assert len(recs) == 600
    by_tenant = {t.tenant_id: t for t in s.tenants}
    seen = Counter()
    for m in recs:
        d = orjson.loads(m.value())
        assert m.topic() == s.output_topic(by_tenant[d["tenant_id"]])
        i = int(d["event_id"].split("-")[1])
        tenant, intent = [("acme", "card_fraud"), ("globex", "card_fraud"), ("globex", "account_takeover"),
                          ("initech", "account_takeover")][i % 4]
        assert (d["tenant_id"], d["intent"]) == (tenant, intent)
        assert d["model_version"] == f"{intent}@1"
        assert 0.0 <= d["score"] <= 1.0 and 0.0 <= d["raw_score"] <= 1.0
        assert _bands_ok(d, by_tenant[tenant].bands)
        assert d["source"]["topic"] == s.topics.events
        seen[d["event_id"]] += 1
    assert set(seen.values()) == {1}
    assert w.worker.stats.dead_letters == 0


BAD = [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (orjson.dumps({"tenant_id": "acme", "event_time": 1, "features": {}}), "missing_field"),
    (orjson.dumps({"event_id": "x", "tenant_id": "acme", "event_time": "soon", "features": {}}), "wrong_type"),
    (orjson.dumps({"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": "1.5"}}), "wrong_type"),
    (orjson.dumps({"event_id": "x", "tenant_id": "nobody", "event_time": 1, "features": {}}), "unknown_tenant"),
    (orjson.dumps({"event_id": "x", "tenant_id": "acme", "intent": "account_takeover", "event_time": 1,
                   "features": {}}), "intent_not_allowed"),
    (orjson.dumps({"event_id": "x", "tenant_id": "initech", "event_time": 1, "features": {}}), "no_active_model"),
    (b'{"event_id": "x", "tenant_id": "acme", "event_time": 1, "features": {"f0": 1e300}}', "value_too_large"),
]


def test_bad_input_goes_to_dead_letters_and_neighbours_are_scored(stack):
    s = stack
    publish_model(s, "card_fraud", seed=1)  # account_takeover has no model: initech's events cannot be scored
    values, expected_bad = [], {}
    for i, (raw, reason) in enumerate(BAD):
        values.append(event(2 * i, "acme"))
        values.append(raw)
        expected_bad[2 * i + 1] = reason
    values.append(event(999, "globex"))  # tenant's default intent
    # One partition, so input offsets are the list positions.
    # The producer's own headers ride along into each dead letter; a muse.* one it sent is not taken for ours.
    produce(s, values, keys=[b"k"] * len(values), headers=[("trace", b"t-1"), ("muse.reason", b"spoofed"),
                                                                ("MUSE.Detail", b"spoofed")])
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    try:
        recs = reader.until(lambda r: len(r) >= len(values))
    finally:
        w.close()
        reader.poll_for(1.0)
        reader.close()
    assert len(recs) == len(values)
    offsets = Counter()
    for m in recs:
        topic, _part, off = source_of(m)
        offsets[off] += 1
        if m.topic() == s.topics.deadletter:
            h = dict(m.headers())
            assert h["muse.reason"].decode() == expected_bad[off], (off, h)
            assert h["trace"] == b"t-1" and [k for k, _ in m.headers()].count("muse.reason") == 1
            assert "MUSE.Detail" not in h  # a sent muse.* header is dropped whatever its case
            assert m.value() == values[off]  # the original bytes
            assert topic == s.topics.events
        else:
            assert off not in expected_bad
    assert set(offsets.values()) == {1} and len(offsets) == len(values)
    assert w.worker.stats.dead_by_reason == Counter(expected_bad.values())


def _spawn_worker(settings, slot):
    p = mp.get_context("spawn").Process(target=_child, args=(settings, slot, False), daemon=True)
    p.start()
    return p


def test_sigkill_mid_stream_then_restart_is_exactly_once(stack):
    s = stack.with_overrides(batch={"max_events": 200})
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    n = 30000
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3]) for i in range(n)])
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    p = _spawn_worker(s, 0)
    try:
        reader.until(lambda r: len(r) >= 3000, timeout=90)
        p.kill()  # SIGKILL: an open transaction is left behind
        p.join(10)
        assert p.exitcode == -9
        p = _spawn_worker(s, 0)  # same slot: fences and aborts the dead one's transaction
        recs = reader.until(lambda r: len(r) >= n, timeout=120)
        reader.poll_for(2.0)  # anything extra would be a duplicate
    finally:
        p.terminate()
        p.join(30)
        reader.close()
    assert p.exitcode == 0
    assert_exactly_once(recs, n)


def test_two_workers_share_and_hand_over_without_loss_or_duplicates(stack):
    s = stack.with_overrides(batch={"max_events": 200})
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "account_takeover", seed=2)
    n = 20000
    produce(s, [event(i, ["acme", "globex", "initech"][i % 3]) for i in range(n)])
    reader = TopicReader(s, decision_topics(s) + [s.topics.deadletter])
    a, b = _spawn_worker(s, 0), _spawn_worker(s, 1)
    try:
        reader.until(lambda r: len(r) >= 4000, timeout=90)
        b.terminate()  # SIGTERM: b commits or aborts, leaves the group; a takes its partitions
        b.join(60)
        assert b.exitcode == 0
        recs = reader.until(lambda r: len(r) >= n, timeout=120)
        reader.poll_for(2.0)
    finally:
        for p in (a, b):
            p.terminate()
            p.join(30)
        reader.close()
    assert_exactly_once(recs, n)


def test_same_slot_twice_fences_the_older_worker(stack):
    """The transactional id and the static group member are the slot's: a second worker in the same slot
    fences the first (a zombie), which exits non-zero, and takes over its partitions with nothing lost."""
    from muse_stream.kafka.clients import producer_config
    from muse_stream.worker.runtime import transactional_id

    s = stack
    tid = transactional_id(s, 3)
    assert tid == f"{s.runtime.transactional_id_prefix}-{s.runtime.group_id}-3"
    assert producer_config(s, transactional_id=tid)["transactional.id"] == tid
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme") for i in range(2000)])
    reader = TopicReader(s, decision_topics(s))
    first = _spawn_worker(s, 3)
    try:
        reader.until(lambda r: len(r) >= 500, timeout=90)
        second = _spawn_worker(s, 3)
        # Its producer's init fences the first's transactions, and its join with the same group.instance.id
        # fences the first's membership: whichever the first meets next is fatal, and it exits non-zero.
        first.join(90)
        assert first.exitcode == FENCED_EXIT
        _wait_for_members(s, 1)
        produce(s, [event(i, "acme") for i in range(2000, 4000)])
        recs = reader.until(lambda r: len(r) >= 4000, timeout=120)
        reader.poll_for(2.0)
    finally:
        for p in (first, locals().get("second")):
            if p is not None:
                p.terminate()
                p.join(30)
        reader.close()
    assert_exactly_once(recs, 4000)


def _wait_for_members(settings, n, timeout=60.0):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    gid = settings.runtime.group_id
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        group = admin.describe_consumer_groups([gid])[gid].result()
        if len(group.members) >= n and all(m.assignment.topic_partitions for m in group.members):
            return
        time.sleep(0.3)
    raise AssertionError(f"group {gid} did not reach {n} members with partitions")


def test_workers_read_every_input_topic(settings_for, unique):
    from muse_stream.kafka.topics import ensure_all
    from muse_stream.tenants import seed_tenants

    s = settings_for(unique).with_overrides(topics={"extra_inputs": (f"t{unique}.events2",)})
    ensure_all(s)
    seed_tenants(s)
    publish_model(s, "card_fraud", seed=1)
    produce(s, [event(i, "acme") for i in range(100)])
    produce(s, [event(i, "acme") for i in range(100, 250)], topic=f"t{unique}.events2")
    w = ThreadWorker(s)
    reader = TopicReader(s, decision_topics(s))
    try:
        recs = reader.until(lambda r: len(r) >= 250)
    finally:
        w.close()
        reader.close()
    by_topic = Counter(orjson.loads(m.value())["source"]["topic"] for m in recs)
    assert by_topic == {s.topics.events: 100, f"t{unique}.events2": 150}
