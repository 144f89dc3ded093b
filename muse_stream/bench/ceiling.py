"""The ceiling: the runtime's consume -> produce loop with its batching and transactions, and nothing else.

Bytes in, bytes out: no parsing, routing, scoring or transform. Each input record is copied (value and key)
to one of the output topics, chosen by input partition, so the producer fans out over as many topics and
partitions as the runtime's per-tenant decision topics. What this loop sustains is what Kafka and the client
allow on this machine; the runtime's figures are read against it.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer

from muse_stream.config import Settings
from muse_stream.errors import FatalKafkaError
from muse_stream.kafka.checkpoint import AbortRequired, call_with_retry, commit_transaction
from muse_stream.kafka.clients import (
    input_consumer_config,
    next_batch,
    produce_waiting,
    worker_producer_config,
)
from muse_stream.worker.runtime import transactional_id

logger = logging.getLogger(__name__)


class CeilingWorker:
    """Same client configs, batch size, batch wait and commit interval as runtime.Worker (exactly-once)."""

    def __init__(self, settings: Settings, *, slot: int, output_topics: list[str],
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.slot = slot
        self.outputs = list(output_topics)
        self.stop_event = stop or threading.Event()
        self.assigned = False
        self.events_in = 0
        self.commits = 0
        self._in_txn = False

    def _on_assign(self, consumer, partitions) -> None:
        self.assigned = True

    def _on_revoke(self, consumer, partitions) -> None:
        self._commit()

    def _commit(self) -> None:
        if not self._in_txn:
            return
        # As the runtime: the consumer's positions, just after the last message it returned.
        offsets = [tp for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0]
        commit_transaction(self.producer, offsets, self.consumer.consumer_group_metadata())
        self._in_txn = False
        self.commits += 1

    def run(self) -> None:
        s = self.settings
        # The runtime's own client settings and batching, so the only difference is the work per event.
        self.producer = Producer(worker_producer_config(s, transactional_id=transactional_id(s, self.slot)))
        call_with_retry("init_transactions", self.producer.init_transactions, 60)
        self.consumer = Consumer(input_consumer_config(s))
        self.consumer.subscribe([s.topics.events], on_assign=self._on_assign, on_revoke=self._on_revoke)
        max_events, wait = s.batch.max_events, s.batch.max_wait_ms / 1000.0
        interval = s.runtime.commit_interval_ms / 1000.0
        outs, n_out = self.outputs, len(self.outputs)
        produce, poll = self.producer.produce, self.producer.poll
        last_commit = time.monotonic()
        try:
            while not self.stop_event.is_set():
                msgs = next_batch(self.consumer, max_events, wait)
                if msgs:
                    if not self._in_txn:
                        call_with_retry("begin_transaction", self.producer.begin_transaction)
                        self._in_txn = True
                    for m in msgs:
                        err = m.error()
                        if err is not None:
                            if err.fatal():
                                raise FatalKafkaError(f"consumer: {err.str()}", code=err.code())
                            if err.code() != KafkaError._PARTITION_EOF:
                                logger.warning("consumer error (continuing): %s", err.str())
                            continue
                        part = m.partition()
                        try:
                            produce(outs[part % n_out], m.value(), m.key())
                        except BufferError:  # as the runtime does: wait for room
                            produce_waiting(self.producer, outs[part % n_out], m.value(), m.key())
                    self.events_in += len(msgs)
                    poll(0)
                if time.monotonic() - last_commit >= interval:
                    try:
                        self._commit()
                    except AbortRequired as e:
                        # A bench run: an abort is reported as a failure, not retried (no rewind logic here).
                        raise FatalKafkaError(f"ceiling commit failed: {e}") from None
                    last_commit = time.monotonic()
            self._commit()
        finally:
            self.consumer.close()
            self.producer.flush(10)
