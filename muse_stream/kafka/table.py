"""A compacted topic as a table: read (all partitions from the beginning, outside any consumer group), and
written under a fence, so that concurrent writers of one key never write over each other's changes."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from muse_stream.config import Settings
from muse_stream.errors import KafkaOpError
from muse_stream.kafka.checkpoint import call_with_retry
from muse_stream.kafka.clients import make_consumer, producer_config, reader_config
from muse_stream.kafka.producer import OutputProducer

logger = logging.getLogger(__name__)
Rows = list[tuple[bytes, bytes | None]]
T = TypeVar("T")

# Errors a client gives while its metadata has not caught up with a new topic or a moved leader.
NOT_KNOWN_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._UNKNOWN_PARTITION})


def retry_until_known(what: str, fn: Callable[[], T], deadline: float) -> T:
    """fn(), again while it fails with a retriable error or one of NOT_KNOWN_YET (right after a topic is made,
    or on a loaded broker, its leader or partition may not be known to the client yet), until `deadline`
    (time.monotonic()); then, or on any other error, a KafkaOpError saying `what`."""
    while True:
        try:
            return fn()
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if not (err.retriable() or err.code() in NOT_KNOWN_YET) or time.monotonic() > deadline:
                raise KafkaOpError.wrap(what, err) from None
        time.sleep(0.2)


class TopicTable:
    """Yields (key, value) updates of a compacted topic; value None is a tombstone."""

    def __init__(self, settings: Settings, topic: str, *, read_committed: bool = True) -> None:
        self.topic = topic
        # A short fetch wait: a new activation or tenant record reaches the scoring loop within tens of ms.
        self._consumer = make_consumer(reader_config(settings, read_committed=read_committed,
                                                     **{"fetch.wait.max.ms": 20}), f"{topic} reader")
        try:
            # 10 s: a command that reads a table first (publish, models, backtest, replay) names the address
            # within 15 s of its start when no cluster answers.
            md = self._consumer.list_topics(topic, timeout=10)
            tmd = md.topics.get(topic)
            # A topic just created may not be in every broker's metadata yet (a cluster propagates it): ask
            # again for up to 3 s before saying it does not exist.
            deadline = time.monotonic() + 3.0
            while (tmd is None or tmd.error is not None or not tmd.partitions) and time.monotonic() < deadline:
                time.sleep(0.25)
                tmd = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            raise KafkaOpError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} (reading {topic}): "
                               f"{e.args[0].str()}", error=e.args[0]) from None
        if tmd is None or tmd.error is not None or not tmd.partitions:
            self._consumer.close()
            raise KafkaOpError(f"topic {topic} does not exist (run `muse-stream topics create`)")
        self._parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(tmd.partitions)]
        self._consumer.assign(self._parts)

    def _drain(self, timeout: float) -> list[tuple[bytes, bytes | None]]:
        out = []
        for msg in self._consumer.consume(num_messages=1000, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaOpError.wrap(f"reading {self.topic}", err)
            out.append((msg.key() or b"", msg.value()))
        return out

    def catch_up(self, timeout: float = 30.0) -> list[tuple[bytes, bytes | None]]:
        """Everything up to the partitions' end as of now (blocking, bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        ends = {tp.partition: self._high_watermark(tp, deadline) for tp in self._parts}
        out: list[tuple[bytes, bytes | None]] = []
        while True:
            out += self._drain(0.1)
            positions = {tp.partition: tp.offset for tp in self._consumer.position(self._parts)}
            if all(ends[p] <= 0 or positions.get(p, -1) >= ends[p] for p in ends):
                return out
            if time.monotonic() > deadline:
                raise KafkaOpError(f"timed out reading {self.topic} to its end")

    def _high_watermark(self, tp: TopicPartition, deadline: float) -> int:
        # An offset not known yet (negative) is waited out like an error of a partition not known yet.
        while True:
            hi = retry_until_known(f"reading {self.topic}", lambda: self._consumer.get_watermark_offsets(
                tp, timeout=5, cached=False)[1], deadline)
            if hi >= 0 or time.monotonic() > deadline:
                return hi
            time.sleep(0.2)

    def updates(self) -> list[tuple[bytes, bytes | None]]:
        """Whatever arrived since the last call, without blocking."""
        return self._drain(0)

    def close(self) -> None:
        self._consumer.close()


def read_table(settings: Settings, topic: str) -> Rows:
    """Every committed (key, value) of a compacted topic as it is now, in offset order."""
    table = TopicTable(settings, topic)
    try:
        return table.catch_up()
    finally:
        table.close()


# A fenced writer, or a transaction that must be aborted: nothing of the attempt became visible, so the
# whole step (read, decide, write) may start again.
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
FENCED_RETRY_S = 120.0  # a writer fenced again and again gives up after this long


def _fenced(e: KafkaOpError) -> bool:
    return e.error is not None and (e.error.code() in FENCED or e.error.txn_requires_abort())


def fenced_write(settings: Settings, topic: str, transactional_id: str, step: Callable[[Rows], tuple[Rows, T]],
                 *, what: str) -> T:
    """Read `topic` and write what `step` derives from it, as one atomic step among every writer that uses
    `transactional_id` (one id per key or group of keys that must not be changed concurrently).

    1. init_transactions with the id. This fences every other writer with the id: its open transaction is
       aborted (or, if it is committing, finishes first), and it cannot commit after.
    2. Read the topic, read_committed. Every earlier writer's records are now committed or aborted for good,
       so what `step` decides from them (the next version number, a timeline to extend) is not stale.
    3. Write `step`'s (key, value) records in one transaction: all become visible, or none.
    A writer fenced between 1 and 3 by a newer one has written nothing visible; it starts again after a
    random pause (by then the newer one has usually finished). `step` may raise to write nothing, or return
    no records. Errors other than fencing keep their KafkaError (`KafkaOpError.error`).
    """
    give_up = time.monotonic() + FENCED_RETRY_S
    attempt = 0
    while True:
        attempt += 1
        producer = OutputProducer(producer_config(settings, transactional_id=transactional_id), name=f"{what} writer")
        try:
            call_with_retry("init_transactions", producer.client.init_transactions, 30)
            records, result = step(read_table(settings, topic))
            if records:
                producer.write_transaction([(topic, key, value) for key, value in records])
            return result
        except KafkaOpError as e:
            if not _fenced(e):
                raise type(e)(f"writing {what} to {topic}: {e}", error=e.error, code=e.code,
                              description=e.description) from None
            # A fenced instance can do nothing more (not even abort): it is dropped; the newer writer's init
            # has aborted its transaction.
            logger.info("writing %s to %s: fenced by another writer (%s, attempt %d); trying again", what, topic,
                        e.error.name(), attempt)
        # A random pause, growing with each attempt, so that writers fenced together do not come back
        # together and fence each other again.
        pause = random.uniform(0.05, min(2.0, 0.1 * 2 ** attempt))
        if time.monotonic() + pause > give_up:
            raise KafkaOpError(f"writing {what} to {topic}: fenced by concurrent writers {attempt} times in "
                               f"{FENCED_RETRY_S:.0f}s; nothing was written, try again")
        time.sleep(pause)
