"""The model store against the real broker: immediate activations keep the timeline from the input watermark,
and concurrent writers of one intent never share a version number."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from muse_stream.kafka.clients import producer_config, reader_config
from muse_stream.kafka.topics import ensure_all
from muse_stream.models.records import (
    ActivationRecord,
    TimelineEntry,
    active_key,
    dump,
    next_timeline,
    version_key,
)
from muse_stream.models.registry import ModelRegistry, load_version
from muse_stream.models.store import activate, intent_transactional_id, publish, read_models, rollback
from muse_stream.models.transform import fit_score_transform
from tests.fixtures.helpers import FEATURES, event, produce, publish_model, synthetic, train_booster

pytestmark = pytest.mark.kafka
T0 = 1_700_000_000_000


def _timeline(s, intent="card_fraud") -> list[tuple[int, int | None]]:
    return [(e.version, e.from_time) for e in read_models(s).activations[intent].timeline]


def _committed_keys(s) -> Counter:
    """Every committed key on the models topic, before any compaction."""
    c = Consumer(reader_config(s))
    try:
        tp = TopicPartition(s.topics.models, 0)
        hi = c.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        c.assign([TopicPartition(s.topics.models, 0, 0)])
        keys: Counter = Counter()
        while c.position([tp])[0].offset < hi:
            for m in c.consume(100, 1.0):
                if m.error() is None:
                    keys[m.key().decode()] += 1
        return keys
    finally:
        c.close()


def test_immediate_activations_keep_the_timeline_from_the_watermark(stack):
    s = stack
    produce(s, [event(i, "acme", t0=T0) for i in range(100)])
    publish_model(s, "card_fraud", seed=1)
    assert _timeline(s) == [(1, None)]  # the first activation: from the start of time
    publish_model(s, "card_fraud", seed=2)
    assert _timeline(s) == [(1, None), (2, T0 + 100)]
    produce(s, [event(i, "acme", t0=T0) for i in range(100, 200)])
    publish_model(s, "card_fraud", seed=3, activate=False)
    act = activate(s, "card_fraud", 3)
    assert act.activate_at is None and act.previous == 2
    assert _timeline(s) == [(1, None), (2, T0 + 100), (3, T0 + 200)]
    produce(s, [event(i, "acme", t0=T0) for i in range(200, 300)])
    back = rollback(s, "card_fraud")
    assert back.version == 2 and back.previous == 3
    assert _timeline(s) == [(1, None), (2, T0 + 100), (3, T0 + 200), (2, T0 + 300)]
    # A replay of any earlier event gets the version that was in force at its event time, from the last
    # activation record alone (all that compaction keeps).
    stored = read_models(s)
    reg = ModelRegistry(load=True)
    for (intent, v), rec in stored.versions.items():
        reg.apply(version_key(intent, v), dump(rec))
    reg.apply(active_key("card_fraud"), dump(stored.activations["card_fraud"]))
    act = reg.activations["card_fraud"]
    assert [act.version_for(T0 + d) for d in (0, 99, 100, 199, 200, 299, 300, 10**9)] == [1, 1, 2, 2, 3, 3, 2, 2]
    # Loaded at once: the active version and the one it took over from; older ones when an event needs them.
    assert set(reg.loaded) == {("card_fraud", 2), ("card_fraud", 3)}
    assert reg.get("card_fraud", 1).version == 1
    # Rolling back again at the same watermark: the entry that governed no event yet is replaced, and v3,
    # in force just before it, simply goes on.
    assert rollback(s, "card_fraud").version == 3
    assert _timeline(s) == [(1, None), (2, T0 + 100), (3, T0 + 200)]


def _act(timeline: tuple[TimelineEntry, ...]) -> ActivationRecord:
    return ActivationRecord(intent="i", version=timeline[-1].version, activated_at=0, timeline=timeline)


def test_next_timeline():
    e = TimelineEntry
    prev = _act((e(version=1), e(version=2, from_time=100), e(version=3, from_time=200)))
    assert next_timeline(None, 4, 500) == (e(version=4),)  # a first activation: every event
    assert next_timeline(prev, 4, 0) == (e(version=4),)  # empty input topics: every event
    assert next_timeline(prev, 4, 300) == (*prev.timeline, e(version=4, from_time=300))
    assert next_timeline(prev, 4, 150) == (e(version=1), e(version=2, from_time=100), e(version=4, from_time=150))
    assert next_timeline(prev, 2, 150) == (e(version=1), e(version=2, from_time=100))  # 2 is already in force
    with pytest.raises(ValueError, match="ends with version"):
        ActivationRecord(intent="i", version=5, activated_at=0, timeline=prev.timeline)
    assert [prev.version_for(t) for t in (0, 99, 100, 199, 200, 2**62)] == [1, 1, 2, 2, 3, 3]


def _bytes_and_transform(seed: int):
    booster = train_booster(seed, rounds=5)
    x, _ = synthetic(2000, seed + 1000)
    st, ref = fit_score_transform(booster.inplace_predict(x))
    return bytes(booster.save_raw("ubj")), st.to_dict(), ref.to_dict()


def test_concurrent_publishes_of_one_intent_get_distinct_versions(stack):
    s = stack
    n = 6
    models = [_bytes_and_transform(seed) for seed in range(n)]
    start = threading.Barrier(n)
    results, errors = {}, []

    def run(i: int) -> None:
        raw, transform, ref = models[i]
        start.wait()
        try:
            results[i] = publish(s, intent="card_fraud", booster_bytes=raw, features=FEATURES, transform=transform,
                                 reference=ref, activate=i % 2 == 0, metadata={"publisher": i})
        except Exception as e:  # noqa: BLE001 - reported below, with which publisher failed
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert sorted(r.version for r in results.values()) == list(range(1, n + 1))
    reg = read_models(s)
    for i, rec in results.items():
        stored = reg.versions[("card_fraud", rec.version)]
        assert stored.metadata == {"publisher": i} and stored.booster_sha256 == rec.booster_sha256
        assert load_version(stored).version == rec.version
    keys = _committed_keys(s)
    assert {k: c for k, c in keys.items() if k.startswith("version/")} == {
        version_key("card_fraud", v).decode(): 1 for v in range(1, n + 1)}
    assert keys["reference/card_fraud"] == 1  # only the first publisher wrote the reference


def test_a_publisher_fences_an_older_open_transaction_of_its_intent(stack):
    s = stack
    old = Producer(producer_config(s, transactional_id=intent_transactional_id(s, "card_fraud")))
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(s.topics.models, b'{"kind": "stale"}', version_key("card_fraud", 1))
    assert old.flush(10) == 0
    rec = publish_model(s, "card_fraud", seed=1)  # fences `old`: its open transaction is aborted
    assert rec.version == 1
    with pytest.raises(KafkaException) as info:
        old.commit_transaction(30)
    assert info.value.args[0].fatal()
    assert _committed_keys(s)["version/card_fraud/1"] == 1
    assert read_models(s).versions[("card_fraud", 1)].booster_sha256 == rec.booster_sha256


def test_an_activation_cannot_rewrite_which_version_scored_events_already_written(stack):
    """Backdating an activation below the input's watermark would erase timeline entries that governed real
    events (a new user's replay then differed from live on 50,000 decisions): refused, nothing written."""
    from muse_stream.errors import ModelError

    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "card_fraud", seed=2, activate=False)
    produce(s, [event(i, "acme", t0=1_700_000_000_000) for i in range(10)])
    before = read_models(s).activations["card_fraud"]
    with pytest.raises(ModelError, match="before events already on the input"):
        activate(s, "card_fraud", 2, activate_at=1_700_000_000_005)
    with pytest.raises(ModelError, match="not an event time"):
        activate(s, "card_fraud", 2, activate_at=-5)
    assert read_models(s).activations["card_fraud"] == before
    act = activate(s, "card_fraud", 2, activate_at=1_700_000_000_010)  # at the watermark: governs no written event
    assert act.timeline[-1].from_time == 1_700_000_000_010


def test_rollback_after_a_new_map_on_the_same_booster_goes_to_the_model_before(stack):
    """A deployment's refresh publishes the serving booster again with a new map and activates it: `rollback`
    then goes back to the model the deployment replaced, not to the same booster's older map (it used to
    toggle between the two)."""
    s = stack
    publish_model(s, "card_fraud", seed=1)
    publish_model(s, "card_fraud", seed=2)  # the deployed model, replacing @1
    booster = read_models(s).versions[("card_fraud", 2)]
    remap = publish(s, intent="card_fraud", booster_bytes=booster.booster_bytes(), features=list(booster.features),
                    transform=booster.transform, activate=True)  # @3: @2's booster, a new map
    act = read_models(s).activations["card_fraud"]
    assert (remap.version, act.version, act.previous) == (3, 3, 1)
    assert rollback(s, "card_fraud").version == 1
    # With no other model before it, a new map still rolls back to the older map.
    s2 = s.with_overrides(topics={"models": f"{s.topics.models}.two"})
    ensure_all(s2)
    publish_model(s2, "card_fraud", seed=1)
    only = read_models(s2).versions[("card_fraud", 1)]
    publish(s2, intent="card_fraud", booster_bytes=only.booster_bytes(), features=list(only.features),
            transform=only.transform, activate=True)
    assert read_models(s2).activations["card_fraud"].previous == 1
