"""StartWatch against the real broker: a partition whose committed offset an open transaction holds is reported
once it has waited; an idle partition and one that yields events are not. (While one partition's offset is
held, librdkafka fetches nothing from any partition of the assignment: it reads their offsets together.)"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from muse_stream.kafka.clients import consumer_config, producer_config
from muse_stream.kafka.starts import StartWatch
from muse_stream.kafka.topics import TopicSpec, create_topics
from tests.fixtures.helpers import hold_offset

pytestmark = pytest.mark.kafka


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_reports_only_a_partition_an_open_transaction_holds(settings_for, unique):
    s = settings_for(unique, runtime={"transaction_timeout_ms": 300_000})  # the held transaction outlives the test
    topic, group = f"t{unique}.in", f"g{unique}"
    create_topics(s, [TopicSpec(topic, 3)], replication_factor=1)
    p = Producer(producer_config(s))
    p.produce(topic, b"x", partition=2)
    p.flush(30)
    held = hold_offset(s, group, TopicPartition(topic, 0, 5), f"tx{unique}")
    c = Consumer(consumer_config(s, group_id=group))  # read_committed, as the workers' consumer
    clock = Clock()
    watch = StartWatch(after_s=30.0, every_s=10.0, clock=clock)
    parts = [TopicPartition(topic, i) for i in range(3)]
    try:
        c.assign(parts)
        watch.assigned(parts)
        c.poll(2.0)
        clock.t += 29.0
        assert watch.check(c) == []  # nothing has waited after_s yet
        clock.t += 2.0
        assert watch.check(c) == [(topic, 0, 31.0)]
        assert set(watch.waiting) == {(topic, 0)}  # 1 and 2 have readable offsets
        assert watch.held == {(topic, 0)}
        clock.t += 5.0
        assert watch.check(c) == []  # not again before every_s
        assert watch.held == {(topic, 0)}  # ...and still held
        held.commit_transaction(30)  # the transaction ends: the offset is readable
        clock.t += 10.0
        assert watch.check(c) == []
        assert watch.waiting == {} and watch.held == frozenset()
        watch.assigned(parts)  # assigned again: partition 2 now yields its event, 0 and 1 read back
        got = c.poll(10.0)
        assert got is not None and got.partition() == 2
        clock.t += 60.0
        assert watch.check(c) == []
        assert watch.waiting == {}
    finally:
        c.close()


class _Msg:
    def __init__(self, topic, partition):
        self._tp = (topic, partition)

    def topic(self):
        return self._tp[0]

    def partition(self):
        return self._tp[1]


def test_a_held_partition_is_released_by_its_first_event_or_its_revocation():
    """No broker: what `held` keeps between checks (the worker's readiness reads it)."""
    watch = StartWatch(after_s=1.0)
    watch.waiting = {("t", 0): 0.0, ("t", 1): 0.0, ("t", 2): 0.0}
    watch.held = frozenset(watch.waiting)
    watch.yielded([_Msg("t", 1), _Msg("t", 1)])
    assert watch.held == {("t", 0), ("t", 2)} and set(watch.waiting) == {("t", 0), ("t", 2)}
    watch.released([TopicPartition("t", 2)])
    assert watch.held == {("t", 0)}
    watch.yielded([_Msg("u", 0)])  # another topic's partition 0 is not this one
    assert watch.held == {("t", 0)}
