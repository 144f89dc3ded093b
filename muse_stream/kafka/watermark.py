"""The input topics' event-time watermark: where "from now on" lies in event time.

A change that must apply by event time but is made "now" (new threshold bands, an immediate model
activation) takes effect at this watermark. Events already on the input topics have event times below it
and keep the old setting; events produced afterwards (event times at or above it) get the new one. Live
workers and every later replay read the same recorded time, so they agree event by event.

The watermark is 1 + the largest event time among the last record of every partition of the topics
(0, the start of time, when they hold no records). A record's event time is its JSON value's integer
`event_time`, else (not JSON, no such field, out of range) the record's Kafka timestamp. An event time more
than an hour ahead of this machine's clock counts as now + 1 h: one producer with a bad clock must not push
every tenant's changes years into the future.

A change made "now" takes effect `runtime.change_lead_ms` past the watermark (`effective_time`): between
reading the watermark and every worker reading the change, events keep arriving, and without the lead the
ones in that gap would be scored with the old setting live and the new one in a replay.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError
from muse_stream.eventtime import MAX_EVENT_TIME
from muse_stream.kafka.clients import make_consumer, reader_config
from muse_stream.kafka.table import retry_until_known

logger = logging.getLogger(__name__)

MAX_AHEAD_MS = 3_600_000  # how far an event time may run ahead of the clock and still move the watermark


def event_time_of(value: bytes | None, timestamp: int) -> int:
    """A record's event time: the integer `event_time` of its JSON object value, else its Kafka timestamp
    (negative when the record has none)."""
    if value:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict:
            et = data.get("event_time")
            if type(et) is int and 0 <= et <= MAX_EVENT_TIME:
                return min(et, int(time.time() * 1000) + MAX_AHEAD_MS)
    return timestamp


def effective_time(settings: Settings) -> int:
    """Where a change made now starts in event time: the watermark plus runtime.change_lead_ms (0, the start
    of time, when the input holds no records yet). A watermark ahead of this machine's clock (a producer
    stamping events in the future, or in microseconds) delays every change "made now" by as much: said on
    stderr, so an operator waiting for a rollback knows why and when."""
    w = input_watermark(settings)
    ahead = ahead_of_clock(w)
    if ahead:
        logger.warning("the input topics hold an event stamped %s ahead of this machine's clock (event times "
                       "more than %d min ahead count as now + %d min): this change applies from event time %d, "
                       "not now", f"{ahead / 60_000:.0f} min", MAX_AHEAD_MS // 60_000, MAX_AHEAD_MS // 60_000,
                       w + settings.runtime.change_lead_ms)
    return w + settings.runtime.change_lead_ms if w > 0 else 0


def ahead_of_clock(watermark: int, slack_ms: int = 60_000) -> int:
    """How far (ms) a watermark runs ahead of this machine's clock, when more than `slack_ms`; else 0."""
    ahead = watermark - int(time.time() * 1000)
    return ahead if ahead > slack_ms else 0


def input_watermark(settings: Settings, topics: list[str] | None = None, *, timeout: float = 30.0) -> int:
    """1 + the largest event time among the last record of every partition of `topics` (the input topics
    by default); 0 when they hold no records. A topic that does not exist holds no records."""
    times = [event_time_of(m.value(), m.timestamp()[1]) for m in last_records(settings, topics, timeout=timeout)]
    return max((t + 1 for t in times if t >= 0), default=0)


def last_records(settings: Settings, topics: list[str] | None = None, *, timeout: float = 30.0) -> list:
    """The last committed record of every non-empty partition of `topics` (Kafka messages)."""
    consumer = make_consumer(reader_config(settings, **{"fetch.wait.max.ms": 10}), "watermark reader")
    try:
        return _LastRecords(consumer, topics or settings.topics.inputs, time.monotonic() + timeout).read()
    finally:
        consumer.close()


class _LastRecords:
    """Reads each partition's tail, widening the tail until it holds a record: the last offsets of a
    partition may be transaction markers or aborted records, which a read_committed consumer skips."""

    def __init__(self, consumer: Consumer, topics: list[str], deadline: float) -> None:
        self.c = consumer
        self.deadline = deadline
        # (topic, partition) -> (low, high); high is the last stable offset for a read_committed consumer,
        # so a transaction still open is not waited for.
        self.bounds: dict[tuple[str, int], tuple[int, int]] = {}
        for topic in topics:
            for p in self._partitions(topic):
                lo, hi = self._call(f"reading the offsets of {topic}", partial(
                    self.c.get_watermark_offsets, TopicPartition(topic, p), timeout=5, cached=False))
                if hi > lo:
                    self.bounds[(topic, p)] = (lo, hi)

    def _partitions(self, topic: str) -> list[int]:
        md = self._call(f"reading metadata of {topic}", lambda: self.c.list_topics(topic, timeout=10))
        tmd = md.topics.get(topic)
        if tmd is None or (tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return []
        if tmd.error is not None:
            raise KafkaOpError.wrap(f"reading metadata of {topic}", tmd.error)
        return sorted(tmd.partitions)

    def _call(self, what: str, fn):
        return retry_until_known(what, fn, self.deadline)

    def read(self) -> list:
        found: dict[tuple[str, int], object] = {}
        todo = dict(self.bounds)
        width = 1
        while todo:
            starts = {k: max(lo, hi - width) for k, (lo, hi) in todo.items()}
            last = self._read_tails(starts, {k: hi for k, (_, hi) in todo.items()})
            for k in list(todo):
                if k in last:
                    found[k] = last.pop(k)
                    del todo[k]
                elif starts[k] == todo[k][0]:
                    del todo[k]  # the whole partition holds no committed record
            width *= 16
        return list(found.values())

    def _read_tails(self, starts: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]) -> dict:
        """The highest-offset record below `ends` of each partition, read from `starts`."""
        self.c.assign([TopicPartition(t, p, off) for (t, p), off in starts.items()])
        last: dict[tuple[str, int], object] = {}
        remaining = set(starts)
        try:
            while remaining:
                for m in self.c.consume(1000, 0.1):
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaOpError.wrap(f"reading {m.topic()}", m.error())
                    k = (m.topic(), m.partition())
                    if m.offset() < ends.get(k, -1):
                        last[k] = m
                # Done with a partition once its position passed its end (markers included).
                for tp in self.c.position([TopicPartition(t, p) for t, p in remaining]):
                    if tp.offset >= ends[(tp.topic, tp.partition)]:
                        remaining.discard((tp.topic, tp.partition))
                if remaining and time.monotonic() > self.deadline:
                    raise KafkaOpError(f"reading the last records of {sorted({t for t, _ in remaining})}: "
                                       "no answer in time")
        finally:
            self.c.unassign()
        return last
